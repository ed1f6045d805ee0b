#!/usr/bin/env bash
# Decode A/B on the GPU machine: one bench_decode run per variant, one line each (tok/s, share of the
# roofline, wall per step, the profiled step's kernels and GPU span), all on one machine; BATCH=8 for another
# batch size (default 1):
#
#     bash tools/ab_decode.sh NAME:OVERRIDES ...                  # e.g. base:  merge:runner.decode_attention_merge=separate
#     bash tools/ab_decode.sh "NAME%FILE%SED_EXPR:OVERRIDES" ...   # a copy of the tree with FILE edited by sed (a constant)
#
# OVERRIDES are Hydra overrides separated by spaces (no ':' inside); each variant's profile stays in
# /tmp/ab_NAME/. Wheels in .whl/ (hydra-core, omegaconf, ... for a machine without them) go to /tmp/site first.
set -u
cd "$(dirname "$0")/.."
root=$PWD
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > /dev/null 2>&1
fi
# a missing package fails every variant the same way: stop before the first (tools/device_wheels.sh makes them)
if ! PYTHONPATH=/tmp/site:$root python3 -c "import moeframe.engine.builder" 2> /tmp/ab_import.log; then
    echo "the engine does not import (carry the wheels of tools/device_wheels.sh in .whl/):"; tail -3 /tmp/ab_import.log; exit 1
fi
export PYTHONUNBUFFERED=1
batch=${BATCH:-1}

run() {
    local name=$1 dir=$2
    shift 2
    (cd "$dir" && PYTHONPATH=/tmp/site:$dir timeout 110 python3 tools/bench_decode.py --batches $batch --skip-hf --profile $batch \
        --out "/tmp/ab_$name" "$@" > "/tmp/ab_$name.log" 2>&1)
    local rc=$? md="/tmp/ab_$name/decode_olmoe-1b-7b.md" prof="/tmp/ab_$name/profile_olmoe-1b-7b_b$batch.txt"
    echo "== $name rc $rc |$(grep "decode, batch $batch " "$md" 2> /dev/null | cut -d'|' -f3,7)|$(head -1 "$prof" 2> /dev/null | cut -d: -f2) | $(grep 'last step' "$prof" 2> /dev/null) |$(grep 'between steps' "$prof" 2> /dev/null | cut -d: -f2 | cut -d' ' -f1-3)"
    [ $rc -ne 0 ] && tail -5 "/tmp/ab_$name.log"
}

for spec in "$@"; do
    name=${spec%%:*}
    rest=${spec#*:}
    if [[ "$name" == *%* ]]; then
        variant=${name%%%*}
        file=$(echo "$name" | cut -d% -f2)
        expr=$(echo "$name" | cut -d% -f3-)
        rm -rf "/tmp/tree_$variant" && cp -r "$root" "/tmp/tree_$variant" && sed -i "$expr" "/tmp/tree_$variant/$file"
        # shellcheck disable=SC2086
        run "$variant" "/tmp/tree_$variant" $rest
    else
        # shellcheck disable=SC2086
        run "$name" "$root" $rest
    fi
done
