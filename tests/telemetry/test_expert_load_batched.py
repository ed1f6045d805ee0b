"""The batched expert-load recorder: one count per forward, the same figures as recording layer by layer."""

from __future__ import annotations

import pytest
import torch
from expert_load_reference import brute_force_counters, random_ids

from moeframe.model.spec import MoESpec
from moeframe.routers import ROUTERS, RouteContext
from moeframe.routers.plan import RoutingPlan
from moeframe.telemetry import expert_load
from moeframe.telemetry.expert_load import ExpertLoadRecorder, LayerPlan

MOE = MoESpec(num_experts=8, top_k=2, intermediate_size=8, norm_topk_prob=True)
ROUTER_CHOICES = {
    "native": {"name": "native"},
    "top1": {"name": "top_k", "k": 1},
    "top_k_capacity": {"name": "top_k", "k": 2, "capacity_factor": 1.0},
    "expert_choice": {"name": "expert_choice", "capacity_factor": 1.0},
    "balanced": {"name": "balanced"},
    "hash": {"name": "hash"},
    "random": {"name": "random"},
}
NUM_LAYERS = 3


def plan_of(ids: torch.Tensor) -> RoutingPlan:
    return RoutingPlan(topk_ids=ids, topk_weights=torch.ones(ids.shape, device=ids.device))


def recorders(device: torch.device, fused: bool, monkeypatch, **kwargs) -> tuple[ExpertLoadRecorder, ExpertLoadRecorder]:
    """(batched, per layer); ``fused`` runs the layers kernel on the CPU too (under the interpreter)."""
    if fused:
        monkeypatch.setattr(expert_load, "accumulate_layers", expert_load.accumulate_layers_fused)
    return ExpertLoadRecorder(NUM_LAYERS, 8, 2, **kwargs), ExpertLoadRecorder(NUM_LAYERS, 8, 2, batched=False, **kwargs)


def figures(recorder: ExpertLoadRecorder) -> list[torch.Tensor]:
    return [recorder.load_counts(), recorder.dropped_counts(), recorder._on_host(recorder.tokens), recorder._on_host(recorder.unrouted)]


def assert_same_figures(got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    for name, g, e in zip(("counts", "dropped", "tokens", "unrouted"), got, expected, strict=True):
        assert torch.equal(g, e), f"{name}: {g.tolist()} != {e.tolist()}"


@pytest.fixture
def launches(monkeypatch) -> list[tuple[list[int], bool]]:
    """Each call of accumulate_layers: its plans' layers and whether a capture was on."""
    calls: list[tuple[list[int], bool]] = []
    count = expert_load.accumulate_layers

    def spy(plans, *counters):
        calls.append(([p.layer_idx for p in plans], expert_load._capturing(plans[0].topk_ids)))
        count(plans, *counters)

    monkeypatch.setattr(expert_load, "accumulate_layers", spy)
    return calls


@pytest.mark.parametrize("fused", [False, True], ids=["torch", "triton"])
@pytest.mark.parametrize("router", sorted(ROUTER_CHOICES))
def test_batched_recorder_counts_what_recording_layer_by_layer_counts(router, fused, device, monkeypatch):
    batched, per_layer = recorders(device, fused, monkeypatch)
    routers = [ROUTERS.build(ROUTER_CHOICES[router], moe=MOE, layer_idx=i) for i in range(NUM_LAYERS)]
    generator = torch.Generator().manual_seed(0)
    recorded = []
    for num_tokens in (7, 1, 1):  # a prefill, then two decode steps
        token_ids = torch.randint(0, 1000, (num_tokens,), generator=generator).to(device)
        for layer, layer_router in enumerate(routers):
            logits = torch.randn(num_tokens, MOE.num_experts, generator=generator).to(device)
            plan = layer_router.route(logits, RouteContext(token_ids=token_ids, positions=torch.arange(num_tokens, device=device)))
            # the MoE block records after its experts read the ids (ExpertLoadRecorder's contract: the counting
            # launch may read them before its PDL wait); a read of the ids stands in for the experts here
            plan.topk_ids.sum()
            batched.record(layer, plan)
            per_layer.record(layer, plan)
            columns = plan.topk_ids.shape[1]
            recorded.append(LayerPlan(layer, plan.topk_ids.cpu(), min(columns, MOE.top_k)))
    assert not batched.pending
    assert_same_figures(figures(batched), figures(per_layer))
    assert_same_figures(figures(batched), brute_force_counters(recorded, NUM_LAYERS, MOE.num_experts))


def test_batched_recorder_counts_a_forward_in_one_launch_when_its_last_moe_layer_records(device, launches):
    recorder = ExpertLoadRecorder(NUM_LAYERS, 8, 2)
    plans = [LayerPlan(layer, random_ids(4, 2, 8, seed=layer).to(device), 2) for layer in range(NUM_LAYERS)]
    for plan in plans[:-1]:
        recorder.record(plan.layer_idx, plan_of(plan.topk_ids))
    assert launches == [] and int(recorder.counts.sum()) == 0
    recorder.record(plans[-1].layer_idx, plan_of(plans[-1].topk_ids))
    assert launches == [([0, 1, 2], False)]
    assert_same_figures(figures(recorder), brute_force_counters(plans, NUM_LAYERS, 8))


def test_a_dense_last_layer_leaves_the_flush_to_the_last_moe_layer(device, launches):
    recorder = ExpertLoadRecorder(4, 8, 2, last_moe_layer=2)  # layers 0 and 3 dense
    plans = [LayerPlan(layer, random_ids(3, 2, 8, seed=layer).to(device), 2) for layer in (1, 2)]
    for plan in plans:
        recorder.record(plan.layer_idx, plan_of(plan.topk_ids))
    assert launches == [([1, 2], False)]
    assert_same_figures(figures(recorder), brute_force_counters(plans, 4, 8))


def test_reads_between_record_and_flush_count_the_pending_plans_once(device, launches):
    recorder = ExpertLoadRecorder(NUM_LAYERS, 8, 2)
    plans = [LayerPlan(layer, random_ids(5, 2, 8, seed=layer).to(device), 2) for layer in range(NUM_LAYERS)]
    for plan in plans[:2]:
        recorder.record(plan.layer_idx, plan_of(plan.topk_ids))
    assert recorder.stats()["total"]["kept"] == int((torch.stack([p.topk_ids for p in plans[:2]]) >= 0).sum())
    assert_same_figures(figures(recorder), brute_force_counters(plans[:2], NUM_LAYERS, 8))
    recorder.record(2, plan_of(plans[2].topk_ids))
    assert launches == [([0, 1], False), ([2], False)]
    assert_same_figures(figures(recorder), brute_force_counters(plans, NUM_LAYERS, 8))


def test_a_forward_that_stopped_midway_is_counted_once_by_the_next(device, monkeypatch):
    batched, per_layer = recorders(device, False, monkeypatch)
    stopped = [LayerPlan(layer, random_ids(6, 2, 8, seed=layer).to(device), 2) for layer in range(2)]
    finished = [LayerPlan(layer, random_ids(1, 2, 8, seed=9 + layer).to(device), 2) for layer in range(NUM_LAYERS)]
    for plan in stopped + finished:
        batched.record(plan.layer_idx, plan_of(plan.topk_ids))
        per_layer.record(plan.layer_idx, plan_of(plan.topk_ids))
    assert not batched.pending
    assert_same_figures(figures(batched), figures(per_layer))
    assert_same_figures(figures(batched), brute_force_counters(stopped + finished, NUM_LAYERS, 8))


def capture(monkeypatch, on: bool) -> None:
    """Make the recorder see a CUDA-graph capture in progress (or none)."""
    monkeypatch.setattr(expert_load, "_capturing", lambda topk_ids: on)


def test_a_captured_forward_counts_its_plans_inside_the_capture(device, launches, monkeypatch):
    recorder = ExpertLoadRecorder(NUM_LAYERS, 8, 2)
    recorder.record(0, plan_of(random_ids(1, 2, 8, seed=0).to(device)))  # allocates the counters eagerly
    recorder.flush()
    capture(monkeypatch, True)
    for layer in range(NUM_LAYERS):
        recorder.record(layer, plan_of(random_ids(1, 2, 8, seed=layer).to(device)))
    assert launches == [([0], False), ([0, 1, 2], True)] and not recorder.pending


def test_plans_of_a_capture_that_ended_before_its_last_moe_layer_are_dropped(device, launches, monkeypatch):
    recorder = ExpertLoadRecorder(NUM_LAYERS, 8, 2)
    eager = [LayerPlan(layer, random_ids(2, 2, 8, seed=layer).to(device), 2) for layer in range(NUM_LAYERS)]
    capture(monkeypatch, True)
    recorder.record(0, plan_of(random_ids(2, 2, 8, seed=5).to(device)))  # the capture fails after layer 0
    capture(monkeypatch, False)
    for plan in eager:
        recorder.record(plan.layer_idx, plan_of(plan.topk_ids))
    assert launches == [([0, 1, 2], False)]
    capture(monkeypatch, True)
    recorder.record(0, plan_of(random_ids(2, 2, 8, seed=6).to(device)))
    capture(monkeypatch, False)
    assert_same_figures(figures(recorder), brute_force_counters(eager, NUM_LAYERS, 8))
    assert not recorder.pending


def test_a_new_capture_drops_the_plans_of_an_earlier_capture_that_failed(device, launches, monkeypatch):
    recorder = ExpertLoadRecorder(NUM_LAYERS, 8, 2)
    capture(monkeypatch, True)
    recorder.record(0, plan_of(random_ids(2, 2, 8, seed=5).to(device)))
    recorder.record(1, plan_of(random_ids(2, 2, 8, seed=6).to(device)))
    for layer in range(NUM_LAYERS):  # the next capture starts over at layer 0
        recorder.record(layer, plan_of(random_ids(2, 2, 8, seed=layer).to(device)))
    assert launches == [([0, 1, 2], True)]


def test_eager_plans_pending_when_a_capture_starts_are_kept_for_an_eager_count(device, launches, monkeypatch):
    recorder = ExpertLoadRecorder(NUM_LAYERS, 8, 2)
    pending = LayerPlan(0, random_ids(3, 2, 8, seed=1).to(device), 2)
    recorder.record(0, plan_of(pending.topk_ids))
    capture(monkeypatch, True)
    with pytest.raises(RuntimeError, match="flush\\(\\) before capturing"):
        recorder.record(0, plan_of(random_ids(3, 2, 8, seed=2).to(device)))
    capture(monkeypatch, False)
    assert launches == []
    assert_same_figures(figures(recorder), brute_force_counters([pending], NUM_LAYERS, 8))


def test_unbatched_recorder_counts_each_record_at_once(device, launches):
    recorder = ExpertLoadRecorder(NUM_LAYERS, 8, 2, batched=False)
    plan = LayerPlan(0, random_ids(4, 2, 8, seed=3).to(device), 2)
    recorder.record(0, plan_of(plan.topk_ids))
    assert not recorder.pending and launches == []
    assert torch.equal(recorder.counts.cpu(), brute_force_counters([plan], NUM_LAYERS, 8)[0])


def test_reset_drops_pending_plans(device):
    recorder = ExpertLoadRecorder(NUM_LAYERS, 8, 2)
    recorder.record(0, plan_of(random_ids(4, 2, 8, seed=3).to(device)))
    recorder.reset()
    recorder.record(2, plan_of(torch.tensor([[1, 2]], device=device)))
    assert recorder.load_counts()[:, 1:3].tolist() == [[0, 0], [0, 0], [1, 1]]


@pytest.mark.parametrize("last", [-1, NUM_LAYERS])
def test_a_last_moe_layer_outside_the_model_is_rejected(last):
    with pytest.raises(ValueError, match="last_moe_layer"):
        ExpertLoadRecorder(NUM_LAYERS, 8, 2, last_moe_layer=last)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_captured_decode_step_replays_the_one_count_of_its_layers():
    recorder, per_layer = ExpertLoadRecorder(NUM_LAYERS, 8, 2), ExpertLoadRecorder(NUM_LAYERS, 8, 2, batched=False)
    static = torch.zeros(NUM_LAYERS, 2, 2, dtype=torch.long, device="cuda")

    def forward(target: ExpertLoadRecorder) -> None:
        for layer in range(NUM_LAYERS):
            target.record(layer, plan_of(static[layer] + 0))  # a fresh tensor, as a router's output is

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        forward(recorder)
        forward(per_layer)
    torch.cuda.current_stream().wait_stream(stream)
    graphs = [torch.cuda.CUDAGraph() for _ in range(2)]
    for graph, target in zip(graphs, (recorder, per_layer), strict=True):
        with torch.cuda.graph(graph):
            forward(target)
    replayed = [LayerPlan(layer, static[layer].cpu(), 2) for layer in range(NUM_LAYERS)]
    for step in range(3):
        static.copy_(random_ids(NUM_LAYERS * 2, 2, 8, seed=step).view(NUM_LAYERS, 2, 2))
        replayed += [LayerPlan(layer, static[layer].cpu(), 2) for layer in range(NUM_LAYERS)]
        for graph in graphs:
            graph.replay()
    torch.cuda.synchronize()
    assert_same_figures(figures(recorder), figures(per_layer))
    assert_same_figures(figures(recorder), brute_force_counters(replayed, NUM_LAYERS, 8))
