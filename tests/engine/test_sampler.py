"""The sampler: greedy costs one argmax, filters match a brute-force rule, seeded rows ignore their batch-mates."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from moeframe import SamplingParams
from moeframe.engine.request import Request
from moeframe.engine.sampler import exponential_race, filter_top_k_top_p, sample


class RecordOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def request(rid: int, seed: int | None = None, **params) -> Request:
    req = Request(rid=rid, prompt_ids=[1], params=SamplingParams(seed=seed, **params))
    if seed is not None:
        req.generator = torch.Generator().manual_seed(seed)
    return req


def test_a_greedy_batch_runs_one_argmax_and_nothing_else():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0))
    with RecordOps() as rec:
        ids = sample(logits, [request(i) for i in range(5)]).ids
    assert rec.ops == ["argmax"]
    assert ids.tolist() == [max(range(50), key=lambda v: row[v].item()) for row in logits]


def brute_force_filter(row: list[float], top_k: int, top_p: float) -> set[int]:
    """Kept ids: the top_k largest, then the shortest head whose probability reaches top_p."""
    order = sorted(range(len(row)), key=lambda i: -row[i])[:top_k]
    probs = torch.softmax(torch.tensor(row), dim=0).tolist()
    kept, mass = set(), 0.0
    for i in order:
        if mass >= top_p:
            break
        kept.add(i)
        mass += probs[i]
    return kept


def test_top_k_and_top_p_keep_what_the_brute_force_rule_keeps():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 12, generator=g)
    top_k = torch.tensor([12, 3, 12, 5, 1, 12])
    top_p = torch.tensor([0.5, 1.0, 0.9, 0.7, 1.0, 1.0])
    out = filter_top_k_top_p(logits, top_k, top_p)
    for r in range(6):
        kept = {i for i in range(12) if out[r, i] > float("-inf")}
        assert kept == brute_force_filter(logits[r].tolist(), int(top_k[r]), float(top_p[r]))
        assert torch.equal(out[r][list(kept)], logits[r][list(kept)])


def test_filters_off_return_the_logits_bit_for_bit_even_with_a_long_tiny_tail():
    logits = torch.cat([torch.tensor([[30.0]]), torch.full((1, 5000), -30.0)], dim=1)  # the running sum hits 1.0 early
    assert torch.equal(filter_top_k_top_p(logits, torch.tensor([5001]), torch.tensor([1.0])), logits)


def test_a_seeded_request_draws_the_same_tokens_whatever_its_batch_mates():
    g = torch.Generator().manual_seed(2)
    steps = [torch.randn(4, 40, generator=g) for _ in range(6)]

    def draws(mates: list[Request]) -> list[int]:
        seeded = request(99, seed=7, temperature=0.8, top_p=0.9)
        out = []
        for logits in steps:
            batch = [*mates, seeded]
            out.append(sample(logits[-len(batch) :].clone(), batch).ids[-1].item())
        return out

    alone = draws([])
    assert draws([request(1), request(2, temperature=1.0), request(3, temperature=0.5, top_k=3)]) == alone
    assert draws([request(4, temperature=1.0)]) == alone


def test_every_row_of_a_mixed_batch_gets_a_token_its_settings_allow():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 30, generator=g)
    reqs = [request(0, temperature=1.0, top_k=2), request(1), request(2, temperature=0.7, seed=5, top_k=1), request(3, temperature=2.0, top_k=3)]
    torch.manual_seed(0)
    ids = sample(logits.clone(), reqs).ids.tolist()
    top = logits.topk(3, dim=-1).indices.tolist()
    assert ids[0] in top[0][:2] and ids[1] == top[1][0] and ids[2] == top[2][0] and ids[3] in top[3]


def test_an_argmax_computed_with_the_logits_leaves_a_greedy_batch_nothing_to_run():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(4))
    argmax = logits.argmax(dim=-1)
    with RecordOps() as rec:
        ids = sample(logits, [request(i) for i in range(3)], argmax).ids
    assert rec.ops == [] and torch.equal(ids, argmax)


def test_a_mixed_batch_draws_the_same_with_or_without_a_precomputed_argmax():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(5))
    batch = [request(0), request(1, seed=3, temperature=0.9), request(2)]
    without = sample(logits.clone(), batch).ids.tolist()
    batch[1].generator.manual_seed(3)
    assert sample(logits.clone(), batch, logits.argmax(dim=-1)).ids.tolist() == without


def test_the_exponential_race_draws_what_multinomial_draws_from_the_same_generator():
    g = torch.Generator().manual_seed(6)
    for seed in range(20):
        probs = torch.softmax(torch.randn(500, generator=g) * 2, dim=0)
        race, multinomial = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        raced = [exponential_race(probs, race).item() for _ in range(4)]
        assert raced == [torch.multinomial(probs, 1, generator=multinomial).item() for _ in range(4)]
