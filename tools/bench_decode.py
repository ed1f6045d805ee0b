"""Decode and prefill speed of moeframe vs transformers on one preset, against the roofline.

    python tools/bench_decode.py --preset olmoe-1b-7b --out benchmarks/

In one process: measures copy bandwidth and the bf16 matmul rate, builds a
random-weight transformers model of the preset on the GPU, hands the same
tensors to a moeframe Engine, then times decode at several batch sizes and
an 8 x 1024 prefill on both. Writes JSON and a markdown table.

``--routes`` also builds a second engine on the same weights with
``runner.routes=true`` and times its decode with every request returning
its routed experts, batch by batch right after the plain engine's figure:
the cost of returning routes, measured in the same run (column "with routes").
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
import traceback
from pathlib import Path

import torch

from moeframe.api import Engine, compose_config
from moeframe.engine.sampling_params import SamplingParams
from moeframe.model.loader import hf_state_tensors
from moeframe.telemetry import roofline


def cuda_time_s(fn, repeats: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def copy_bandwidth() -> float:
    src = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / cuda_time_s(lambda: dst.copy_(src))


def matmul_rate() -> float:
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    return 2 * 8192**3 / cuda_time_s(lambda: a @ b)


def random_prompts(batch: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (batch, length), generator=g).tolist()


def ours_decode_tok_s(engine: Engine, batch: int, prompt_len: int, new_tokens: int, repeats: int = 3) -> float:
    """The median of ``repeats`` runs: one run's host time varies by a few percent on the device machine."""
    prompts = random_prompts(batch, prompt_len, engine.spec.vocab_size, batch)
    routes = engine.core.routes is not None  # an engine that records routes returns them to every request
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True, return_routed_experts=routes)
    engine.generate(prompts, SamplingParams(max_new_tokens=4, ignore_eos=True, return_routed_experts=routes))
    rates = []
    for _ in range(repeats):
        requests, _ = engine.generate_requests(prompts, params)
        first = max(r.token_times_s[0] for r in requests)
        last = max(r.token_times_s[-1] for r in requests)
        rates.append(batch * (new_tokens - 1) / (last - first))
    return statistics.median(rates)


def ours_prefill_tok_s(engine: Engine, num_seqs: int, seq_len: int) -> float:
    prompts = random_prompts(num_seqs, seq_len, engine.spec.vocab_size, 7)
    params = SamplingParams(max_new_tokens=1, ignore_eos=True)
    engine.generate(prompts, params)
    times = []
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        engine.generate(prompts, params)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return num_seqs * seq_len / statistics.median(times)


@torch.inference_mode()
def hf_decode_tok_s(model, batch: int, prompt_len: int, new_tokens: int, vocab: int) -> float:
    ids = torch.tensor(random_prompts(batch, prompt_len, vocab, batch), device="cuda")

    def gen(n: int) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    gen(2)
    return batch * (new_tokens - 1) / (gen(new_tokens) - gen(1))


@torch.inference_mode()
def hf_prefill_tok_s(model, num_seqs: int, seq_len: int, vocab: int) -> float:
    ids = torch.tensor(random_prompts(num_seqs, seq_len, vocab, 7), device="cuda")
    return num_seqs * seq_len / cuda_time_s(lambda: model(ids, logits_to_keep=1), repeats=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="olmoe-1b-7b")
    parser.add_argument("--batches", default="1,8,32,128")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--experts", default="triton")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--routes", action="store_true", help="also time decode with runner.routes=true, routes returned")
    parser.add_argument("--profile", default="", help="batch sizes to profile decode at, e.g. 1,32")
    parser.add_argument("--profile-prefill", action="store_true", help="also profile the 8 x 1024 prefill")
    parser.add_argument("--out", default="benchmarks")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for the engine")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    batches = [int(b) for b in args.batches.split(",")]
    result: dict = {
        "preset": args.preset,
        "device": torch.cuda.get_device_name(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "errors": [],
    }
    import transformers
    import triton

    result["versions"] |= {"transformers": transformers.__version__, "triton": triton.__version__}

    def save() -> None:
        (out / f"decode_{args.preset}.json").write_text(json.dumps(result, indent=2))

    result["copy_bytes_s"] = copy_bandwidth()
    result["matmul_flop_s"] = matmul_rate()
    save()
    from transformers import AutoModelForCausalLM

    from moeframe.model.presets import preset_config

    hf_config = preset_config(args.preset)
    with torch.device("cuda"):
        hf = AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16).eval()
    overrides = [
        f"model={args.preset}", "model.random_weights=true", "device=cuda", "dtype=bfloat16",
        f"experts={args.experts}", "cache=none", "cache.max_tokens=65536", "scheduler.max_batch_tokens=16384",
        "scheduler.chunk_size=1024", f"scheduler.max_running={max(batches)}", *args.overrides,
    ]  # fmt: skip
    cfg = compose_config(overrides)
    engine = Engine(cfg, weights=hf_state_tensors(preset_spec(cfg), hf.state_dict()))
    routed = None
    if args.routes:
        routed = Engine(compose_config([*overrides, "runner.routes=true"]), weights=hf_state_tensors(preset_spec(cfg), hf.state_dict()))
    sizes = roofline.model_bytes(engine.built.model, 2)
    spec = engine.spec
    context = args.prompt_len + args.new_tokens // 2
    result["decode"] = []
    for batch in batches:
        row = {"batch": batch}
        step_bytes = roofline.decode_step_bytes(spec, sizes, batch, context)
        row["roofline_tok_s"] = batch * result["copy_bytes_s"] / step_bytes
        for name, measure in (
            ("moeframe_tok_s", lambda: ours_decode_tok_s(engine, batch, args.prompt_len, args.new_tokens)),
            ("routes_tok_s", lambda: routed and ours_decode_tok_s(routed, batch, args.prompt_len, args.new_tokens)),
            ("transformers_tok_s", lambda: None if args.skip_hf else hf_decode_tok_s(hf, batch, args.prompt_len, args.new_tokens, spec.vocab_size)),
        ):
            try:
                row[name] = measure()
            except Exception:  # a failed figure is reported, the rest still measured
                result["errors"].append(f"{name} batch {batch}: {traceback.format_exc(limit=3)}")
        result["decode"].append(row)
        save()
    flops = roofline.prefill_flops(spec, sizes, 8, 1024)
    result["prefill"] = {"tokens": 8 * 1024, "roofline_tok_s": 8 * 1024 * result["matmul_flop_s"] / flops}
    for name, measure in (
        ("moeframe_tok_s", lambda: ours_prefill_tok_s(engine, 8, 1024)),
        ("transformers_tok_s", lambda: hf_prefill_tok_s(hf, 8, 1024, spec.vocab_size)),
    ):
        try:
            result["prefill"][name] = measure()
        except Exception:
            result["errors"].append(f"prefill {name}: {traceback.format_exc(limit=3)}")
    save()
    for batch in [int(b) for b in args.profile.split(",") if b]:
        (out / f"profile_{args.preset}_b{batch}.txt").write_text(profile_decode(engine, batch, args.prompt_len))
    if args.profile_prefill:
        (out / f"profile_{args.preset}_prefill.txt").write_text(profile_prefill(engine))
    (out / f"decode_{args.preset}.md").write_text(markdown(result, args))
    print(markdown(result, args))


def profile_decode(engine: Engine, batch: int, prompt_len: int) -> str:
    """Where a decode step's time goes: the kernels by CUDA time, and host time per step."""
    from torch.profiler import ProfilerActivity, profile

    prompts = random_prompts(batch, prompt_len, engine.spec.vocab_size, 11)
    for p in prompts:
        engine.add_request(p, SamplingParams(max_new_tokens=40, ignore_eos=True))
    for _ in range(5):
        engine.step()
    torch.cuda.synchronize()
    steps = 20
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / steps
    while engine.core.has_work():
        engine.step()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
    return f"decode batch {batch}: {wall * 1e3:.3f} ms per step (wall, {steps} steps)\n\n{table}\n\n{step_kernels(prof, steps)}"


def step_kernels(prof, steps: int) -> str:
    """The kernels of the last profiled step in launch order, with their durations and the gaps between them."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        events = json.loads(Path(f.name).read_text())["traceEvents"]
    kernels = sorted((e for e in events if e.get("cat") == "kernel"), key=lambda e: e["ts"])
    per_step = len(kernels) // steps
    last = kernels[-per_step:]
    busy = sum(e["dur"] for e in last)
    span = last[-1]["ts"] + last[-1]["dur"] - last[0]["ts"]
    # the copies between the step before and this one, with its last kernel: what the GPU does between graphs
    before = kernels[-per_step - 1]
    copies = [e for e in events if e.get("cat") in ("gpu_memcpy", "gpu_memset") and before["ts"] <= e["ts"] < last[0]["ts"]]
    gap = last[0]["ts"] - before["ts"] - before["dur"]
    lines = [
        f"last step: {len(last)} kernels, {busy:.0f} us busy over a {span:.0f} us span",
        f"between steps: {gap:.1f} us from the step before's last kernel to this step's first",
        "start_us dur_us name",
    ]
    shown = [before, *sorted(copies, key=lambda e: e["ts"]), *last]
    lines += [f"{e['ts'] - last[0]['ts']:8.1f} {e['dur']:6.1f} {e['name'][:110]}" for e in shown]
    return "\n".join(lines) + "\n"


def profile_prefill(engine: Engine) -> str:
    from torch.profiler import ProfilerActivity, profile

    prompts = random_prompts(8, 1024, engine.spec.vocab_size, 13)
    params = SamplingParams(max_new_tokens=1, ignore_eos=True)
    engine.generate(prompts, params)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        engine.generate(prompts, params)
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=20)
    return f"prefill 8 x 1024: {wall * 1e3:.1f} ms (wall)\n\n{table}\n"


def preset_spec(cfg):
    from moeframe.engine.builder import model_source

    return model_source(cfg)[1]


def markdown(result: dict, args: argparse.Namespace) -> str:
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f}"

    def ratio(a: float | None, b: float | None) -> str:
        return "-" if a is None or not b else f"{a / b:.2f}"

    lines = [
        f"# {result['preset']} on {result['device']} ({result['date']})",
        "",
        f"Command: `python tools/bench_decode.py --preset {args.preset} --batches {args.batches} "
        f"--prompt-len {args.prompt_len} --new-tokens {args.new_tokens} --experts {args.experts}"
        f"{' --routes' if args.routes else ''}`",
        "",
        f"Versions: {result['versions']}. Copy bandwidth {result['copy_bytes_s'] / 1e12:.2f} TB/s, "
        f"bf16 matmul {result['matmul_flop_s'] / 1e12:.0f} TFLOP/s (measured in the same run).",
        "",
        "| figure | moeframe tok/s | transformers tok/s | vs transformers | roofline tok/s | of roofline | with routes tok/s | routes / plain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result.get("decode", []):
        ours, hf, roof = row.get("moeframe_tok_s"), row.get("transformers_tok_s"), row["roofline_tok_s"]
        routes = row.get("routes_tok_s")
        lines.append(
            f"| decode, batch {row['batch']} | {fmt(ours)} | {fmt(hf)} | {ratio(ours, hf)} | {fmt(roof)} | {ratio(ours, roof)} "
            f"| {fmt(routes)} | {ratio(routes, ours)} |"
        )
    pre = result.get("prefill")
    if pre:
        ours, hf, roof = pre.get("moeframe_tok_s"), pre.get("transformers_tok_s"), pre["roofline_tok_s"]
        lines.append(f"| prefill 8 x 1024 | {fmt(ours)} | {fmt(hf)} | {ratio(ours, hf)} | {fmt(roof)} | {ratio(ours, roof)} | - | - |")
    if result["errors"]:
        lines += ["", "Errors:", *[f"- {e.splitlines()[0]} ..." for e in result["errors"]]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
