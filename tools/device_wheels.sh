#!/usr/bin/env bash
# The wheels moeframe needs on the GPU machine beyond its image (PyTorch, Triton, transformers, tokenizers,
# safetensors, numpy, tqdm, yaml are there), written to .whl/ for the device tool's `carry`:
#
#     bash tools/device_wheels.sh          # here, in the repo root; then carry [".whl"] in each device call
#
# tools/ab_decode.sh and tools/gpu_check.sh install .whl/*.whl into /tmp/site there and stop at once if the
# engine then fails to import. The engine imports hydra/omegaconf (configs), jsonschema (constraint specs) and
# xgrammar (its constraint backend registers at import), so each of these with its own needs is listed;
# pytest-xdist lets tools/gpu_check.sh compile the CUDA tests' kernels in several processes at once. The
# GPU machine runs Python 3.12 on x86-64; antlr4-python3-runtime 4.9.3 (hydra-core's pin) is a source archive
# only, so its wheel is built here.
set -eu
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    hydra-core==1.3.2 omegaconf==2.3.0 \
    jsonschema jsonschema-specifications referencing rpds-py \
    xgrammar==0.2.8 apache-tvm-ffi pydantic annotated-types typing-inspection typing-extensions \
    pytest-xdist execnet
# pydantic pins its core exactly
core=$(unzip -p .whl/pydantic-[0-9]*.whl '*/METADATA' | sed -n 's/^Requires-Dist: pydantic-core==\(.*\)$/\1/p')
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "pydantic-core==$core"
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
du -sh .whl
