"""An OpenAI request's sampling fields -> one SamplingParams per choice.

``n`` choices become n engine requests (SGLang and vLLM do the same); with a
``seed`` each gets ``seed + i`` so the choices differ yet the whole response
is reproducible. ``response_format`` maps to the engine's json_schema /
json_object constraint; ``regex``, ``choices`` and ``priority`` are SGLang's extra fields.
"""

from __future__ import annotations

from moeframe.engine.sampling_params import SamplingParams
from moeframe.server.errors import APIError
from moeframe.server.protocol import ResponseFormat, SamplingFields


def stop_strings(stop: str | list[str] | None) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


def constraint_fields(response_format: ResponseFormat | None, regex: str | None, choices: list[str] | None) -> dict:
    fields: dict = {}
    if response_format is not None and response_format.type == "json_schema":
        if response_format.json_schema is None:
            raise APIError("response_format of type json_schema needs a json_schema", param="response_format")
        fields["json_schema"] = response_format.json_schema.schema_
    elif response_format is not None and response_format.type == "json_object":
        fields["json_object"] = True
    if regex is not None:
        fields["regex"] = regex
    if choices is not None:
        fields["choices"] = choices
    if len(fields) > 1:
        raise APIError(f"give at most one of response_format, regex, choices; got {', '.join(sorted(fields))}")
    return fields


def sampling_params(
    body: SamplingFields,
    max_tokens: int | None,
    logprobs: int | None,
    extra_stop_token_ids: list[int] = (),
) -> list[SamplingParams]:
    """One SamplingParams per choice; ``max_tokens=None`` is filled from the context by the engine loop."""
    stop = stop_strings(body.stop)
    constraint = constraint_fields(body.response_format, body.regex, body.choices)
    return [
        SamplingParams(
            max_new_tokens=max_tokens if max_tokens is not None else 1,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            seed=None if body.seed is None else body.seed + i,
            stop=list(stop),
            stop_token_ids=list(body.stop_token_ids) + list(extra_stop_token_ids),
            ignore_eos=body.ignore_eos,
            return_routed_experts=body.return_routed_experts,
            logprobs=logprobs,
            priority=body.priority,
            **constraint,
        )
        for i in range(body.n)
    ]
