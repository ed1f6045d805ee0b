"""The stable Python API: Engine, SamplingParams, GenerateOutput.

    engine = Engine.from_overrides(["model=tiny-mixtral", "router=top2", "cache=radix"])
    outs = engine.generate(["Hello"], SamplingParams(max_new_tokens=16))

These names are a contract that tests, tools and outside checks call.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Iterable
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from moeframe.config import CONF_DIR, override_problem, unknown_choice
from moeframe.cache.base import CacheStats
from moeframe.engine.builder import BuiltEngine, build
from moeframe.engine.core import EngineCore
from moeframe.engine.pruning import expert_weight_bytes
from moeframe.engine.request import GenerateOutput, Request, Status
from moeframe.engine.route_store import SlotRoutes
from moeframe.telemetry.expert_distribution import ExpertDistributionRecorder
from moeframe.engine.sampling_params import SamplingParams
from moeframe.engine.warmup import warm_up
from moeframe.errors import ConfigError, RequestError
from moeframe.telemetry.memory import model_bytes, pool_bytes

__all__ = ["Engine", "GenerateOutput", "SamplingParams", "compose_config"]


def compose_config(overrides: list[str]) -> DictConfig:
    """conf/ composed with Hydra overrides; a bad group choice or key becomes one ConfigError line."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if (problem := override_problem(list(overrides))) is not None:
        raise ConfigError(problem)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            return compose("config", overrides=list(overrides))
    except HydraException as err:
        raise ConfigError(one_line_hydra_error(str(err))) from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"{getattr(err, 'full_key', '?')}: {getattr(err, 'msg', err)}") from None


def one_line_hydra_error(message: str) -> str:
    missing = re.search(r"Could not find '([^/']+)/([^']+)'", message)
    if missing:
        return unknown_choice(*missing.groups())
    return " ".join(message.split())


class Engine:
    def __init__(self, cfg: DictConfig, weights: Iterable[tuple[str, torch.Tensor]] | None = None) -> None:
        """``weights``: (name, tensor) pairs in our layout, used instead of the checkpoint's (benchmarks)."""
        self.cfg = cfg
        self.built: BuiltEngine = build(cfg, weights)
        self.spec = self.built.spec
        self.tokenizer = load_tokenizer(self.built.tokenizer_dir)
        self._constraints: Any = None
        self._constraints_lock = threading.Lock()
        jump_forward = bool(OmegaConf.select(cfg, "constraint.jump_forward", default=False))
        self.core = EngineCore(
            self.built.scheduler,
            self.built.runner,
            self.detokenize,
            self.spec.eos_token_ids,
            self.built.max_context,
            jump_forward=jump_forward,
            apply_bitmask=None,
            routes=SlotRoutes(self.built.pool.num_slots, self.built.routes.num_layers) if self.built.routes else None,
            distribution=self.distribution_recorder(),
        )
        self._ids = itertools.count()
        self.warmup_s: float | None = None
        if cfg.runner.warmup and self.built.device.type == "cuda":
            self.warm_up()

    def distribution_recorder(self) -> ExpertDistributionRecorder | None:
        """The expert-distribution recorder (start / stop / dump by mode), for an MoE model."""
        if not self.spec.is_moe:
            return None
        moe_layers = [i for i, sparse in enumerate(self.spec.sparse_layers) if sparse]
        records_routes = self.built.routes is not None
        return ExpertDistributionRecorder(self.built.recorder, moe_layers, self.spec.moe.num_experts, records_routes)

    def warm_up(self) -> float:
        """Run engine/warmup.py's request shapes through this engine, then forget them: the cache, the step
        counters and the expert load start from zero. Returns the seconds it took (also ``stats()["warmup_s"]``)."""
        built = self.built
        self.warmup_s = warm_up(
            self.core, list(built.cfg.runner.cuda_graph_batch_sizes), built.scheduler.params.max_batch_tokens,
            self.spec.vocab_size, built.max_context,
        )  # fmt: skip
        built.cache.clear()
        built.cache.stats = CacheStats()
        if built.recorder is not None:
            built.recorder.set_aside("warmup")  # zeroed in place: the captured graphs count into these counters
        if built.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(built.device)
        return self.warmup_s

    @classmethod
    def from_overrides(cls, overrides: list[str]) -> "Engine":
        return cls(compose_config(overrides))

    def variant(self, changes: dict[str, Any]) -> "Engine":
        """A second engine on this one's config with ``changes`` (dotted key -> value; a value replaces the node).

        Workloads use it to measure against a baseline that differs in one switch
        (native routing, jump-forward off).
        """
        cfg = OmegaConf.to_container(self.cfg, resolve=True)
        for key, value in changes.items():
            *parents, leaf = key.split(".")
            node = cfg
            for part in parents:
                node = node[part]
            node[leaf] = value
        return Engine(OmegaConf.create(cfg))

    # ---- tokens ----
    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise RequestError("this checkpoint has no tokenizer.json: pass prompts as token id lists")
        return list(self.tokenizer.encode(text))

    def detokenize(self, token_ids: list[int]) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    # ---- requests ----
    def make_request(self, prompt: str | list[int], params: SamplingParams) -> Request:
        """A validated request; raises RequestError for bad input (the engine keeps serving others).

        Tokenizing and compiling its constraint happen here, not in a step, and
        touch no engine state: the server calls it from its admission threads
        so that neither stalls the engine loop (``engine.core.add`` then runs
        on the loop's thread).
        """
        params.validate()
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise RequestError("the prompt is empty")
        if any(not isinstance(t, int) or t < 0 or t >= self.spec.vocab_size for t in ids):
            raise RequestError(f"prompt token ids must be integers in [0, {self.spec.vocab_size})")
        if len(ids) >= self.built.max_context:
            raise RequestError(
                f"the prompt has {len(ids)} tokens; this model's context is {self.built.max_context} "
                f"(prompt + at least one generated token must fit)"
            )
        if len(ids) + 1 > self.built.pool.num_slots:
            raise RequestError(f"the prompt has {len(ids)} tokens but the KV pool holds only {self.built.pool.num_slots}")
        req = Request(rid=next(self._ids), prompt_ids=ids, params=params)
        if params.return_routed_experts and self.core.routes is None:
            raise RequestError("return_routed_experts needs an engine started with runner.routes=true")
        replay = params.replay_routes
        if replay is None and self.built.replay_file is not None:
            replay = self.built.replay_file.lookup(ids)
        if replay is not None:
            req.replay_ids = self.replay_ids(replay)
        if params.seed is not None:
            req.generator = torch.Generator(device="cpu").manual_seed(params.seed)
        elif self.cfg.deterministic and params.temperature > 0:
            # sampling per request: an unseeded row would draw from the batch's shared generator
            req.generator = torch.Generator(device="cpu").manual_seed(int(self.cfg.seed))
        if params.constraint_kwargs:
            req.constraint = self.constraint_state(params)
        return req

    def replay_ids(self, routes: Any) -> torch.Tensor:
        """Routes to follow as [n, MoE layers, k] int64, checked against the model (router=replay only)."""
        if not self.built.runner.replays_routes:
            raise RequestError("replay_routes needs router=replay")
        try:
            ids = torch.as_tensor(routes, dtype=torch.int64).cpu()
        except (TypeError, ValueError, RuntimeError) as err:
            raise RequestError(f"replay_routes must be integers laid out [tokens, MoE layers, k]: {err}") from None
        moe = self.spec.moe
        num_layers = sum(self.spec.sparse_layers)
        if ids.dim() != 3 or ids.shape[1] != num_layers or ids.shape[2] < 1:
            raise RequestError(f"replay_routes must be laid out [tokens, {num_layers} MoE layers, k], got {list(ids.shape)}")
        if ((ids < -1) | (ids >= moe.num_experts)).any():
            raise RequestError(f"replay_routes ids must be experts in [0, {moe.num_experts}) or -1")
        return ids

    def constraint_state(self, params: SamplingParams) -> Any:
        """A fresh state of the request's compiled constraint; RequestError if it cannot start any output.

        Thread-safe (the server compiles on its admission threads): building
        the backend and its compile cache are guarded by one lock.
        """
        from moeframe.constrain import CONSTRAINTS, ConstraintSpec, apply_bitmask

        spec = ConstraintSpec(**params.constraint_kwargs)
        with self._constraints_lock:
            if self._constraints is None:
                self._constraints = CONSTRAINTS.build(
                    self.cfg.constraint,
                    tokenizer=self.tokenizer,
                    vocab_size=self.spec.vocab_size,
                    eos_token_ids=self.spec.eos_token_ids,
                )
                self.core.apply_bitmask = apply_bitmask
            compiled = self._constraints.compile(spec)
        state = self._constraints.new_state(compiled)
        bitmask = torch.zeros((1, (self.spec.vocab_size + 31) // 32), dtype=torch.int32)
        state.fill_bitmask(bitmask, 0)
        if state.dead_end(bitmask, 0) is not None:
            raise RequestError(f"the {spec.kind} constraint matches no text at all, so no output can satisfy it")
        return state

    def add_request(self, prompt: str | list[int], params: SamplingParams) -> Request:
        req = self.make_request(prompt, params)
        self.core.add(req)
        return req

    def step(self) -> list[Request]:
        return self.core.step()

    def generate_requests(
        self, prompts: list[str] | list[list[int]], params: SamplingParams | list[SamplingParams]
    ) -> tuple[list[Request], list[GenerateOutput]]:
        """Run prompts to completion; a bad prompt gets an error output, the others run."""
        if isinstance(prompts, (str, bytes)) or (prompts and isinstance(prompts[0], int)):
            raise RequestError("prompts must be a list of strings or a list of token id lists")
        plist = params if isinstance(params, list) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise RequestError(f"{len(prompts)} prompts but {len(plist)} SamplingParams")
        requests: list[Request] = []
        for prompt, p in zip(prompts, plist):
            try:
                requests.append(self.add_request(prompt, p))
            except RequestError as err:
                bad = Request(rid=next(self._ids), prompt_ids=[], params=p, status=Status.FINISHED)
                bad.finish_reason, bad.error, bad.finished_s = "error", str(err), time.perf_counter()
                requests.append(bad)
        while self.core.has_work():
            self.core.step()
        return requests, [r.to_output() for r in requests]

    def generate(
        self, prompts: list[str] | list[list[int]], params: SamplingParams | list[SamplingParams] | None = None
    ) -> list[GenerateOutput]:
        return self.generate_requests(prompts, params or SamplingParams())[1]

    @torch.inference_mode()
    def score(self, token_ids: list[int]) -> torch.Tensor:
        """Logits [len, vocab] (float32) of a teacher-forced forward over ``token_ids``."""
        if not token_ids:
            raise RequestError("score() needs at least one token")
        if len(token_ids) > self.built.max_context:
            raise RequestError(f"{len(token_ids)} tokens exceed this model's context of {self.built.max_context}")
        slots = self.built.cache.allocate([], len(token_ids))
        if slots is None:
            raise RequestError(f"{len(token_ids)} tokens do not fit in the free KV pool")
        try:
            from moeframe.attention.batch import ForwardBatch

            batch = ForwardBatch.build([list(token_ids)], [slots], self.built.device, all_logits=True)
            if self.built.recorder is None:
                return self.built.runner.forward(batch)
            with self.built.recorder.counted_apart("scoring"):  # a scoring pass serves no request
                return self.built.runner.forward(batch)
        finally:
            self.built.pool.free(slots)

    def stats(self) -> dict[str, Any]:
        built, core = self.built, self.core
        cache_stats = built.cache.stats
        stats: dict[str, Any] = {
            "num_slots": built.pool.num_slots,
            "kv_bytes_per_token": built.pool.kv_bytes_per_token,
            "warmup_s": self.warmup_s,
            "num_free_slots": built.pool.num_free_slots,
            "num_cached_tokens": built.cache.num_cached_tokens(),
            "num_running": len(built.scheduler.running),
            "num_waiting": len(built.scheduler.waiting),
            "num_preemptions": built.scheduler.num_preemptions,
            "cache": dict(vars(cache_stats)),
            "forward_steps": core.stats.forward_steps,
            "ahead_steps": core.stats.ahead_steps,
            "prefill_tokens": core.stats.prefill_tokens,
            "generated_tokens": core.stats.generated_tokens,
            "jump_forward_tokens": core.stats.jump_forward_tokens,
            "batch_dependent_routing": built.batch_dependent_routing,
            "expert_weight_bytes": expert_weight_bytes(built.model),
            "experts_kernel": built.experts_kernel,
            "kept_experts": built.kept_experts,
        }
        if built.recorder is not None:
            stats["expert_load"] = built.recorder.stats() | {"counts": built.recorder.load_counts().tolist()}
        stats["parallel"] = built.parallel.stats()
        if built.device.type == "cuda":
            stats["peak_memory_bytes"] = torch.cuda.max_memory_allocated(built.device)
        stats["memory"] = {
            "weights_bytes": model_bytes(built.model),
            "kv_pool_bytes": pool_bytes(built.pool),
            "measured": built.memory.report(),
        }
        return stats

    def close(self) -> None:
        """Abort what is running, empty the cache, and drop captured CUDA graphs (their memory pool)."""
        for req in list(self.core.requests.values()):
            self.core.abort(req.rid)
        self.built.cache.clear()
        if self.built.runner.device.type == "cuda":
            torch.cuda.synchronize(self.built.runner.device)  # an ahead step dropped by the overlap may still run
        self.built.runner.graphs = None


def load_tokenizer(path: Any) -> Any:
    if path is None or not (path / "tokenizer.json").is_file():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
