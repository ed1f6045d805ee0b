"""Coverage of real-world JSON schemas per constraint backend (JSONSchemaBench's MaskBench files).

    python tools/bench_schemas.py --source GIT_DIR_OR_FOLDER [--per-split 25] [--seed 0] \
        [--backends xgrammar,fsm] [--generate 64] [--set open_objects=true] [--json out.json]

``--source`` is either a git directory of github:guidance-ai/jsonschemabench
(its ``maskbench/data/*.json``, read with ``git cat-file``) or a folder of
files in that format, such as the sample in tests/constrain/data. Each file
holds a schema and test instances marked valid or invalid. A seeded sample
of ``--per-split`` schemas with tests is taken from each split (the name
before ``---``, or before the trailing number).

Per backend and schema, through the production path (``backend.compile``):
compiled, refused with a RequestError (unsupported keyword, unsatisfiable,
over its compile budget), or crashed (any other exception: a bug). For each
compiled schema every test instance is judged: its compact JSON spelling is
tokenized and walked through a fresh state, and accepted means every token
advanced and the end is terminal. A schema is judged right when every valid
instance is accepted and every invalid one rejected (MaskBench's "passing";
refused schemas are not judged right). Compile time and the process's
resident-set growth (current and peak) are recorded per schema; a
restart of xgrammar's compiler process after a schema over budget is
charged to the next schema's time (the first start is not).

Then ``--generate`` compiled schemas per backend are decoded by the engine on
``model=tiny-olmoe`` (random weights, sampled at temperature 1, a few seeds):
every output that ends with finish_reason ``stop`` must validate with the
``jsonschema`` library; the count of those that do not is the number that
must be zero.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from moeframe import Engine, SamplingParams
from moeframe.constrain import CONSTRAINTS, BudgetError, ConstraintBackend, ConstraintSpec
from moeframe.errors import RequestError

PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Case:
    name: str
    split: str
    schema: Any
    tests: list[dict[str, Any]]


@dataclass
class Outcome:
    name: str
    status: str  # compiled | refused | over_budget | crashed
    message: str = ""
    compile_s: float = 0.0
    rss_growth_mb: float = 0.0
    peak_growth_mb: float = 0.0
    judged_right: bool = False
    wrong: list[str] = field(default_factory=list)


def split_of(name: str) -> str:
    stem = name.removesuffix(".json")
    return stem.split("---")[0] if "---" in stem else re.sub(r"_\d+$", "", stem)


def list_sources(source: Path) -> dict[str, bytes | Path]:
    """File name -> its path (a folder) or blob id (a git directory)."""
    if (source / "HEAD").is_file() and (source / "objects").is_dir():
        out = subprocess.run(["git", "--git-dir", str(source), "ls-tree", "HEAD", "maskbench/data/"],
                             check=True, capture_output=True, text=True).stdout
        return {line.split("\t")[1].rsplit("/", 1)[1]: line.split()[2].encode() for line in out.splitlines()}
    return {p.name: p for p in sorted(source.glob("*.json"))}


def read_sources(source: Path, picked: dict[str, bytes | Path]) -> dict[str, Any]:
    if all(isinstance(v, Path) for v in picked.values()):
        return {name: json.loads(Path(path).read_text()) for name, path in picked.items()}
    names = list(picked)
    batch = subprocess.run(["git", "--git-dir", str(source), "cat-file", "--batch"], check=True, capture_output=True,
                           input=b"".join(picked[n] + b"\n" for n in names)).stdout
    out, pos = {}, 0
    for name in names:
        header_end = batch.index(b"\n", pos)
        size = int(batch[pos:header_end].split()[2])
        out[name] = json.loads(batch[header_end + 1 : header_end + 1 + size])
        pos = header_end + 1 + size + 1
    return out


def sample_cases(source: Path, per_split: int, seed: int) -> list[Case]:
    files = list_sources(source)
    by_split: dict[str, list[str]] = {}
    for name in sorted(files):
        by_split.setdefault(split_of(name), []).append(name)
    rng = random.Random(seed)
    cases = []
    for split, names in sorted(by_split.items()):
        rng.shuffle(names)
        taken = 0
        for start in range(0, len(names), 4 * per_split):
            chunk = read_sources(source, {n: files[n] for n in names[start : start + 4 * per_split]})
            for name, data in chunk.items():
                if taken < per_split and data.get("tests"):
                    cases.append(Case(name, split, data["schema"], data["tests"]))
                    taken += 1
            if taken >= per_split:
                break
    return cases


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def accepts(backend: ConstraintBackend, compiled: Any, text: str, encode: Any) -> bool:
    state = backend.new_state(compiled)
    return all(state.advance(t) for t in encode(text)) and state.is_terminal()


def judge(backend: ConstraintBackend, case: Case, encode: Any) -> Outcome:
    rss0, peak0 = rss_mb(), peak_mb()
    start = time.perf_counter()
    try:
        compiled = backend.compile(ConstraintSpec(json_schema=case.schema))
    except RequestError as err:
        status = "over_budget" if isinstance(err, BudgetError) else "refused"
        return Outcome(case.name, status, str(err), time.perf_counter() - start, rss_mb() - rss0, peak_mb() - peak0)
    except Exception as err:  # a crash of the backend is what this tool looks for
        return Outcome(case.name, "crashed", f"{type(err).__name__}: {err}", time.perf_counter() - start)
    out = Outcome(case.name, "compiled", "", time.perf_counter() - start, rss_mb() - rss0, peak_mb() - peak0)
    for i, test in enumerate(case.tests):
        if accepts(backend, compiled, compact(test["data"]), encode) != bool(test["valid"]):
            out.wrong.append(f"test {i} ({'valid' if test['valid'] else 'invalid'}) judged wrong")
    out.judged_right = not out.wrong
    return out


def generate(engine: Engine, cases: list[Case], seeds: int, max_new_tokens: int) -> Counter:
    prompts, params, schemas = [], [], []
    for case in cases:
        for seed in range(seeds):
            prompts.append(f"JSON for {case.name}:")
            params.append(SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, seed=seed, json_schema=case.schema))
            schemas.append(case.schema)
    counts: Counter = Counter()
    for out, schema in zip(engine.generate(prompts, params), schemas):
        counts[out.finish_reason] += 1
        if out.finish_reason == "stop":
            try:
                jsonschema.validate(json.loads(out.text), schema)
                counts["stop_valid"] += 1
            except (json.JSONDecodeError, jsonschema.ValidationError) as err:
                counts["stop_invalid"] += 1
                print(f"INVALID stop output for {out.text!r}: {str(err).splitlines()[0]}")
    return counts


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def refusal_words(outcomes: list[Outcome]) -> Counter:
    words: Counter = Counter()
    for o in outcomes:
        if o.status in ("refused", "over_budget", "crashed"):
            found = re.findall(r"'([$\w-]+)'", o.message)
            words[found[0] if found else o.message[:60]] += 1
    return words


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--per-split", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backends", default="xgrammar,fsm")
    parser.add_argument("--generate", type=int, default=64, help="compiled schemas decoded per backend")
    parser.add_argument("--seeds", type=int, default=2, help="sampled outputs per decoded schema")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a constraint config override for every backend, e.g. open_objects=true (repeatable)")
    args = parser.parse_args()

    cases = sample_cases(args.source, args.per_split, args.seed)
    print(f"{len(cases)} schemas with tests from {len(set(c.split for c in cases))} splits")
    report: dict[str, Any] = {"cases": [c.name for c in cases], "overrides": args.set, "backends": {}}
    for name in args.backends.split(","):
        overrides = [f"constraint.{item}" for item in args.set]
        engine = Engine.from_overrides(["model=tiny-olmoe", "device=cpu", "dtype=float32", f"constraint={name}", *overrides])
        backend = CONSTRAINTS.build(engine.cfg.constraint, tokenizer=engine.tokenizer, vocab_size=engine.spec.vocab_size,
                                    eos_token_ids=engine.spec.eos_token_ids)
        backend.compile(ConstraintSpec(json_schema={"type": "null"}))  # starts xgrammar's compiler process, outside any budget
        outcomes = []
        for case in cases:
            outcomes.append(judge(backend, case, engine.encode))
            o = outcomes[-1]
            print(f"{name} {case.name}: {o.status} {o.compile_s:.2f}s {o.message[:100]} {'; '.join(o.wrong[:2])}", flush=True)
        compiled = [c for c, o in zip(cases, outcomes) if o.status == "compiled"]
        gen = generate(engine, compiled[: args.generate], args.seeds, args.max_new_tokens) if args.generate else Counter()
        status = Counter(o.status for o in outcomes)
        times = [o.compile_s for o in outcomes]
        summary = {
            "schemas": len(cases),
            **{k: status.get(k, 0) for k in ("compiled", "refused", "over_budget", "crashed")},
            "judged_right": sum(o.judged_right for o in outcomes),
            # instances judged wrong: an accepted invalid one is text the constraint could write though it violates the schema
            "invalid_accepted": sum("(invalid)" in w for o in outcomes for w in o.wrong),
            "valid_rejected": sum("(valid)" in w for o in outcomes for w in o.wrong),
            "compile_s_p50": percentile(times, 0.5),
            "compile_s_p95": percentile(times, 0.95),
            "compile_s_max": max(times, default=0.0),
            "rss_growth_mb_max": max((o.rss_growth_mb for o in outcomes), default=0.0),
            "peak_growth_mb_max": max((o.peak_growth_mb for o in outcomes), default=0.0),
            "generated": dict(gen),
            "refusals": refusal_words(outcomes).most_common(15),
        }
        report["backends"][name] = {"summary": summary, "outcomes": [vars(o) for o in outcomes]}
        print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
