#!/usr/bin/env bash
# The routing-axes study from the CLI: four sweeps (top-k, top-p, skipping, pruning) on one trained
# checkpoint, then one table (markdown + CSV) and one plot by tools/compare.py. seed is a repeat index only
# (greedy outputs do not depend on it); each setting's row is its fastest repeat (the CPU is shared).
#   bash experiments/routing_axes/run.sh [SWEEP_ROOT]      (MODEL=... picks another preset)
set -euo pipefail
root=${1:-multirun/routing_axes}
here=$(dirname "$0")
common=(model="${MODEL:-trained-tiny-olmoe}" workload=router_fidelity workload.num_requests=8 workload.max_new_tokens=16
        workload.max_chunks=8 workload.progress=false seed=0,1)
python -m moeframe.run -m "${common[@]}" router=topk router.k=1,2,3,4,6,8 hydra.sweep.dir="$root/top_k"
python -m moeframe.run -m "${common[@]}" router=top_p router.max_k=8 router.p=0.3,0.5,0.7,0.8,0.9,0.95 hydra.sweep.dir="$root/top_p"
python -m moeframe.run -m "${common[@]}" routing.skip_beta=0.1,0.2,0.3,0.5,0.7 hydra.sweep.dir="$root/skip"
python -m moeframe.run -m "${common[@]}" routing.prune_experts=4,8,12 routing.prune_by=frequency,reap hydra.sweep.dir="$root/prune"
python tools/compare.py --multirun "$root/top_k" --multirun "$root/top_p" --multirun "$root/skip" --multirun "$root/prune" \
    --repeats seed --stat best --csv "$here/routing_axes.csv" --png "$here/routing_axes.png"
