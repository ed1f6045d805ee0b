#!/usr/bin/env bash
# Every GPU figure and GPU test of issue 6 in one device call, so one machine start pays for all of them:
#
#     bash tools/gpu_check.sh OUT_DIR          # on the device machine, from the repo root
#
# Writes into OUT_DIR: gpu_tests.log (tests/gpu, tests/kernels, the router CUDA tests, compiled on the GPU),
# decode_<preset>.{md,json} and profile_<preset>_b1.txt (tools/bench_decode.py: decode at batch 1/8/32/128 and
# an 8 x 1024 prefill, against transformers and the roofline, in one process), and kernels/ (the fused MoE alone
# at 1, 8, 32 and 4,096 tokens and in a stack of layers, tools/bench_kernels.py). If .whl/ holds wheels (hydra-core, omegaconf, ... for a machine
# without them) they are installed into /tmp/site first. A failing step is logged and the next still runs.
#
# The CUDA tests alone took more than 560 s in session 15 in one process (every kernel variant compiles; the run
# stopped at ~90%), more than fits beside the benchmarks under the device tool's 600 s limit. Where pytest-xdist
# is among the wheels they run in 12 processes (not yet timed there). STEPS=tests gives them their own calls,
# STEPS=bench the benchmarks theirs. TESTS picks the test paths (default: all of them below), so that two calls
# can share them, e.g. TESTS=tests/kernels, then TESTS="tests/gpu tests/routers/test_router_cuda.py ...".
set -u
out=${1:?usage: [STEPS=all|tests|bench] bash tools/gpu_check.sh OUT_DIR}
preset=${PRESET:-olmoe-1b-7b}
steps=${STEPS:-all}
test_timeout=$([ "$steps" = tests ] && echo 560 || echo 150)
mkdir -p "$out"
source tools/device_env.sh
# a missing package fails every step the same way: stop before the first (tools/device_wheels.sh makes them)
if ! python3 -c "import moeframe.engine.builder" 2> "$out/import.log"; then
    echo "the engine does not import (carry the wheels of tools/device_wheels.sh in .whl/):"; tail -3 "$out/import.log"; exit 1
fi

if [ "$steps" != bench ]; then
    # -o addopts= drops the project's -q so that pytest prints its summary line
    tests=${TESTS:-tests/gpu tests/kernels tests/telemetry tests/routers/test_router_cuda.py tests/routers/test_router_route_hidden.py \
        tests/routers/test_router_route_residual.py tests/engine/test_overlap_cuda.py tests/engine/test_warmup.py \
        tests/model/test_deferred_topk_sum_model.py tests/model/test_topk_sum.py tests/model/test_mla_latent_cache.py}
    # the suite's time is mostly Triton compiling each kernel variant on the host: spread it over processes
    workers=$(python3 -c "import xdist" 2> /dev/null && echo "-n 12")
    # shellcheck disable=SC2086
    timeout "$test_timeout" python3 -m pytest $workers -o addopts= -q -rfE -p no:cacheprovider -p no:logging $tests \
        > "$out/gpu_tests.log" 2>&1
    echo "gpu tests: exit $?, $(tail -n 1 "$out/gpu_tests.log")"
fi
if [ "$steps" != tests ]; then
    timeout 330 python3 tools/bench_decode.py --preset "$preset" --batches 1,8,32,128 --profile 1 --out "$out" \
        > "$out/bench_decode.log" 2>&1
    echo "bench_decode: exit $?"
    timeout 150 python3 tools/bench_kernels.py --tables moe,moe_stack --tokens 1 8 32 4096 --out "$out/kernels" \
        > "$out/bench_kernels.log" 2>&1
    echo "bench_kernels: exit $?"
    cat "$out/decode_$preset.md" 2> /dev/null
fi
