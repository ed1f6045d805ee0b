#!/usr/bin/env bash
# Train trained-olmoe-small on one GPU, then run the router sweep on it through the CLI, in one device call:
#
#     bash tools/gpu_train_and_sweep.sh OUT_DIR          # on the device machine, from the repo root
#
# TRAIN_S (default 270) caps the training's wall time (tools/train_moe.py --time-limit-s: it stops early and
# the model card says so); the sweep then gets what is left of BUDGET_S (default 560, under the device tool's
# 600 s). ROUTERS picks the swept routers. Writes into OUT_DIR: train.log, checkpoint/ (the model card, training
# log, loss curve, train_result.json and held-out text; the weights stay on the machine, 350 MB),
# sweep/ (the multirun folders: config, metrics, expert-load heatmaps), sweep.log, router_table.md and .csv
# (tools/compare.py), and commit.txt. The checkpoint is written where the preset looks for it:
# $MOEFRAME_CACHE/trained/trained-olmoe-small (MOEFRAME_CACHE defaults to /tmp/moeframe_cache here).
# Wheels in .whl/ (tools/device_wheels.sh) are installed into /tmp/site first, as tools/gpu_check.sh does.
# DEVICE=cpu TRAIN_SET="steps=6 model.hidden_size=32 ..." (recipe overrides) runs the same steps at toy size on a CPU.
set -u
out=${1:?usage: [TRAIN_S=270] [BUDGET_S=560] [ROUTERS=...] bash tools/gpu_train_and_sweep.sh OUT_DIR}
train_s=${TRAIN_S:-270}
budget_s=${BUDGET_S:-560}
routers=${ROUTERS:-native,top1,top2,top_p,expert_choice,balanced,balanced_sinkhorn,aux_free,hash,random}
device=${DEVICE:-cuda}
started=$(date +%s)
mkdir -p "$out"
out=$(cd "$out" && pwd)
source tools/device_env.sh
export MOEFRAME_CACHE=${MOEFRAME_CACHE:-/tmp/moeframe_cache}
git rev-parse HEAD > "$out/commit.txt" 2> /dev/null || echo "not a git checkout" > "$out/commit.txt"
git status --short >> "$out/commit.txt" 2> /dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >> "$out/commit.txt" 2> /dev/null

ckpt=$MOEFRAME_CACHE/trained/trained-olmoe-small
# shellcheck disable=SC2086
timeout $((train_s + 150)) python3 tools/train_moe.py --recipe trained-olmoe-small --device "$device" --no-resume \
    --time-limit-s "$train_s" --no-progress --set ${TRAIN_SET:-} > "$out/train.log" 2>&1
echo "train: exit $?; $(tail -n 1 "$out/train.log")"
mkdir -p "$out/checkpoint"
for f in README.md training_log.jsonl loss_curve.png train_result.json heldout.txt config.json; do
    cp "$ckpt/$f" "$out/checkpoint/" 2> /dev/null
done
[ -f "$ckpt/config.json" ] || { echo "no checkpoint at $ckpt: see $out/train.log"; exit 1; }

left=$((budget_s - ($(date +%s) - started)))
left=$((left > 60 ? left : 60))
echo "sweep: ${left}s left for routers $routers"
# One process runs every job (Hydra's basic launcher), so Triton compiles each kernel once. Small CUDA-graph set and
# no torch.compile or warm-up: their start-up cost would eat the sweep's time, and the table compares routers, not runners.
timeout "$left" python3 -m moeframe.run -m model=trained-olmoe-small "device=$device" "router=$routers" \
    workload=router_fidelity workload.num_requests=32 workload.max_new_tokens=64 workload.max_chunks=32 \
    workload.chunk_tokens=256 workload.progress=false runner.compile=false runner.warmup=false "runner.cuda_graph_batch_sizes=[1,2,4,8,16,32]" \
    hydra.sweep.dir="$out/sweep" 'hydra.sweep.subdir=${hydra.job.num}_${hydra.runtime.choices.router}' > "$out/sweep.log" 2>&1
echo "sweep: exit $?"
python3 tools/compare.py --multirun "$out/sweep" --csv "$out/router_table.csv" > "$out/router_table.md" 2> "$out/compare.log"
cat "$out/router_table.md"
echo "total: $(($(date +%s) - started)) s"
