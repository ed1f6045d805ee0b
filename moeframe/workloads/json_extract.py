"""workload=json_extract: prompts asking for JSON to a schema; validity, mask cost and jump-forward savings.

Every request carries the same JSON schema (the default has long fixed keys,
where jump-forward pays). Reported: the share of outputs that parse and
validate (jsonschema), host time to build and apply masks per constrained
token, and the forward steps jump-forward saved, measured by running the same
requests again on a second engine with ``constraint.jump_forward=false``
(its outputs must be the same; the run says whether they were).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
from omegaconf import OmegaConf

from moeframe.engine.sampling_params import SamplingParams
from moeframe.workloads import WORKLOADS
from moeframe.workloads.base import Workload
from moeframe.workloads.driver import ClientParams, ClientRun, Submission, client_metrics, drive

if TYPE_CHECKING:
    from moeframe.api import Engine

DEFAULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "customer_full_name": {"type": "string", "maxLength": 24},
        "customer_account_number": {"type": "integer", "minimum": 0, "maximum": 99999},
        "preferred_delivery_window": {"type": "string", "enum": ["morning", "afternoon", "evening"]},
        "items_requested": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 3},
        "is_priority_shipment": {"type": "boolean"},
    },
    "required": [
        "customer_full_name",
        "customer_account_number",
        "preferred_delivery_window",
        "items_requested",
        "is_priority_shipment",
    ],
    "additionalProperties": False,
}

PROMPTS = [
    "Extract the order as JSON: Ada Byron, account 1815, wants tea and scones in the afternoon, urgently.",
    "Extract the order as JSON: Alan Turing, account 1912, needs a bicycle by morning.",
    "Extract the order as JSON: Grace Hopper, account 1906, orders nanoseconds, evening delivery.",
    "Extract the order as JSON: Edsger Dijkstra, account 1930, wants three semaphores, no rush.",
]


@dataclass
class JsonExtractParams(ClientParams):
    num_requests: int = 8
    max_new_tokens: int = 160
    schema_path: str | None = None  # a JSON schema file; null = a built-in order schema with long keys
    compare_without_jump_forward: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_requests < 1:
            raise ValueError(f"num_requests must be >= 1, got {self.num_requests}")
        if self.schema_path is not None and not Path(self.schema_path).is_file():
            raise ValueError(f"schema_path {self.schema_path} is not a file")
        self.schema = json.loads(Path(self.schema_path).read_text()) if self.schema_path else DEFAULT_SCHEMA

    def sampling(self, index: int) -> SamplingParams:
        """Every request carries the schema, and stops at the end of the JSON (EOS is not ignored)."""
        sampling = super().sampling(index)
        sampling.json_schema, sampling.ignore_eos = self.schema, False
        return sampling


def is_valid(text: str, schema: dict) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False
    return True


@WORKLOADS.register("json_extract", params=JsonExtractParams)
class JsonExtract(Workload):
    def __init__(self, params: JsonExtractParams, **_: object) -> None:
        self.params = params
        self.schema = params.schema

    def constrained_run(self, engine: "Engine") -> ClientRun:
        texts = [PROMPTS[i % len(PROMPTS)] for i in range(self.params.num_requests)]
        submissions = [Submission(engine.encode(t), i) for i, t in enumerate(texts)]
        return drive(engine, submissions, self.params, desc="json_extract")

    def run(self, engine: "Engine") -> dict[str, Any]:
        steps_before = engine.core.stats.forward_steps
        mask_before = (engine.core.stats.mask_time_s, engine.core.stats.masked_rows)
        run = self.constrained_run(engine)
        metrics = client_metrics(engine, run)
        outputs = run.outputs
        stats = engine.core.stats
        masked = stats.masked_rows - mask_before[1]
        metrics.update(
            {
                "validity_rate": sum(is_valid(o.text, self.schema) for o in outputs) / len(outputs),
                "mask_us_per_token": 1e6 * (stats.mask_time_s - mask_before[0]) / max(masked, 1),
                "forward_steps": stats.forward_steps - steps_before,
                "jump_forward": bool(OmegaConf.select(engine.cfg, "constraint.jump_forward", default=False)),
            }
        )
        if self.params.compare_without_jump_forward and metrics["jump_forward"]:
            plain = engine.variant({"constraint.jump_forward": False})
            plain_run = self.constrained_run(plain)
            metrics["forward_steps_without_jump_forward"] = plain.core.stats.forward_steps
            metrics["forward_steps_saved"] = plain.core.stats.forward_steps - metrics["forward_steps"]
            metrics["same_outputs_without_jump_forward"] = [o.token_ids for o in plain_run.outputs] == [
                o.token_ids for o in outputs
            ]
            plain.close()
        return metrics
