"""Chat messages -> prompt text through the checkpoint's Jinja chat template (ChatML when it has none).

Rendering follows transformers' ``apply_chat_template`` (a sandboxed Jinja
environment, ``add_generation_prompt``). The same object tells the DSL how a
role's turn opens and closes (render one message around a sentinel and
split), and which token ends an assistant turn, so a chat reply stops there
even when the model's eos is another token (Qwen's ``<|im_end|>`` versus
``<|endoftext|>``).
"""

from __future__ import annotations

from typing import Any

from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from moeframe.errors import RequestError

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_SENTINEL = "\x00moeframe-content\x00"


def _raise(message: str) -> None:
    raise RequestError(message)


class ChatFormat:
    def __init__(self, template: str | None, special_tokens: dict[str, str] | None = None) -> None:
        self.template_source = template or CHATML_TEMPLATE
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        self._template = env.from_string(self.template_source)
        self._special = dict(special_tokens or {})
        # a template that reads ``tools`` renders tool definitions, calls and results itself (Qwen2.5, Hermes)
        self.supports_tools = "tools" in meta.find_undeclared_variables(env.parse(self.template_source))

    def render(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """The prompt text of ``messages``; ``tools`` (OpenAI tool definitions) only if ``supports_tools``."""
        if tools is not None and not self.supports_tools:
            raise ValueError("this chat template does not render tools; format them into the messages instead")
        extra = {"tools": tools} if tools is not None else {}
        return self._template.render(
            messages=messages, add_generation_prompt=add_generation_prompt, **extra, **self._special
        )

    def role_affixes(self, role: str) -> tuple[str, str]:
        """The text before and after a message's content in a turn of ``role``."""
        text = self.render([{"role": role, "content": _SENTINEL}], add_generation_prompt=False)
        if _SENTINEL not in text:
            raise RequestError(f"the chat template does not render the content of a '{role}' message")
        before, after = text.split(_SENTINEL, 1)
        return before, after

    def generation_prompt(self) -> str:
        """What the template adds to open the assistant's reply."""
        empty = self.render([], add_generation_prompt=False)
        return self.render([], add_generation_prompt=True)[len(empty) :]


def message_text(content: str | list[dict[str, Any]] | None) -> str:
    """OpenAI content (a string, or a list of parts) -> text; only text parts are supported."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.get("type") != "text":
            raise RequestError(f"message content parts of type {part.get('type')!r} are not supported; use text")
        texts.append(str(part.get("text", "")))
    return "".join(texts)


def end_of_turn_ids(chat: ChatFormat, tokenizer: Any) -> list[int]:
    """The special token that closes an assistant turn (``<|im_end|>`` for ChatML), as a stop token id."""
    if tokenizer is None:
        return []
    _, after = chat.role_affixes("assistant")
    special = set(tokenizer.all_special_ids) | {
        i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)
    }
    ids = tokenizer.encode(after, add_special_tokens=False)
    return [i for i in ids if i in special][:1]
