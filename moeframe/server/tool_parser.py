"""Tool calling, response side: the model's text -> content and ``tool_calls``, whole or as stream deltas.

One incremental parser serves both: a whole response feeds it the whole
text at once, a stream feeds it each new piece, so both read a reply
alike. It follows vLLM's streaming tool parsers (text until the call's
start string, then the function name as soon as it is complete, then the
arguments in pieces, holding back what could still be the call's end
string, as a stream holds back a possible stop string), and it can rely on
the constraint of :mod:`moeframe.server.tool_calls`: a call's begin names
one of the tools and its arguments are valid JSON of that tool's schema.

Whitespace between text and a call (the newline the format puts between
calls, say) belongs to neither, so it is dropped; a reply with no call is
its text exactly. A call cut short (``max_tokens``) is reported as far as
it got, with the finish reason that cut it; a reply that completed a call
finishes with ``"tool_calls"``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from moeframe.server.protocol import ChatChoice, ChatChoiceMessage, ChatChunkChoice, ChatDelta
from moeframe.server.response_shapes import ChatShape, LogprobEntries
from moeframe.server.tool_format import HERMES, ToolCallFormat
from moeframe.server.tool_protocol import DeltaFunctionCall, DeltaToolCall, FunctionCall, ToolCall


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def partial_suffix(text: str, target: str) -> int:
    """Length of the longest suffix of ``text`` that ``target`` starts with (a match that may still complete)."""
    for k in range(min(len(target) - 1, len(text)), 0, -1):
        if target.startswith(text[-k:]):
            return k
    return 0


@dataclass
class ParsedDelta:
    content: str = ""
    calls: list[DeltaToolCall] = field(default_factory=list)

    def open_call(self, call: ToolCall, index: int) -> None:
        """OpenAI's first delta of a call: its index, id, type and name (arguments written in the same step follow)."""
        opening = DeltaFunctionCall(name=call.function.name, arguments="")
        self.calls.append(DeltaToolCall(index=index, id=call.id, type="function", function=opening))

    def add_arguments(self, index: int, piece: str) -> None:
        if self.calls and self.calls[-1].index == index:
            self.calls[-1].function.arguments = (self.calls[-1].function.arguments or "") + piece
        else:
            self.calls.append(DeltaToolCall(index=index, function=DeltaFunctionCall(arguments=piece)))


class ToolCallParser:
    """Incremental: ``feed`` new text, get what became certain; ``finished=True`` flushes what was held back."""

    def __init__(self, format: ToolCallFormat, names: tuple[str, ...]) -> None:
        self.format = format
        self.begins = {format.begin(name): name for name in names}
        self.buffer = ""
        self.in_call = False
        self.after_call = False  # drop whitespace right after a call
        self.calls: list[ToolCall] = []
        self.num_complete = 0
        self.content = ""

    def feed(self, text: str, finished: bool = False) -> ParsedDelta:
        self.buffer += text
        out = ParsedDelta()
        progressed = True
        while progressed:
            progressed = self._call_step(out, finished) if self.in_call else self._text_step(out, finished)
        self.content += out.content
        return out

    def _text_step(self, out: ParsedDelta, finished: bool) -> bool:
        if self.after_call:
            stripped = self.buffer.lstrip()
            self.buffer, self.after_call = stripped, not stripped
        start = self.buffer.find(self.format.trigger)
        if start >= 0:
            head = next((b for b in self.begins if self.buffer.startswith(b, start)), None)
            if head is None and not finished and any(b.startswith(self.buffer[start:]) for b in self.begins):
                out.content += self.buffer[:start].rstrip()
                self.buffer = self.buffer[len(self.buffer[:start].rstrip()) :]
                return False  # the begin is still being written
            if head is not None:
                out.content += self.buffer[:start].rstrip()
                self.buffer = self.buffer[start + len(head) :]
                self.in_call = True
                call = ToolCall(id=new_call_id(), function=FunctionCall(name=self.begins[head], arguments=""))
                out.open_call(call, len(self.calls))
                self.calls.append(call)
                return True
            # a trigger that opens no call (only unconstrained text can have one): it is text
            out.content += self.buffer[: start + len(self.format.trigger)]
            self.buffer = self.buffer[start + len(self.format.trigger) :]
            return True
        if finished:
            out.content += self.buffer
            self.buffer = ""
            return False
        # hold back what may still open a call, and the whitespace before it (dropped if a call follows)
        safe = self.buffer[: len(self.buffer) - partial_suffix(self.buffer, self.format.trigger)].rstrip()
        out.content += safe
        self.buffer = self.buffer[len(safe) :]
        return False

    def _call_step(self, out: ParsedDelta, finished: bool) -> bool:
        index, end = len(self.calls) - 1, self.buffer.find(self.format.end)
        if end >= 0:
            piece, self.buffer = self.buffer[:end], self.buffer[end + len(self.format.end) :]
            self.in_call, self.after_call = False, True
            self.num_complete += 1
        else:
            keep = 0 if finished else partial_suffix(self.buffer, self.format.end)
            piece, self.buffer = self.buffer[: len(self.buffer) - keep], self.buffer[len(self.buffer) - keep :]
        if piece:
            self.calls[index].function.arguments += piece
            out.add_arguments(index, piece)
        return end >= 0

    def finish_reason(self, engine_reason: str | None) -> str | None:
        """``"tool_calls"`` when the reply ended normally after completing a call, else the engine's reason."""
        if engine_reason == "stop" and self.num_complete and not self.in_call:
            return "tool_calls"
        return engine_reason


@dataclass(frozen=True)
class ToolChatShape(ChatShape):
    """Chat choices whose text is split into content and tool calls; one parser per streamed choice."""

    format: ToolCallFormat = HERMES
    names: tuple[str, ...] = ()
    parsers: dict[int, ToolCallParser] = field(default_factory=dict)

    def parser(self) -> ToolCallParser:
        return ToolCallParser(self.format, self.names)

    def choice(self, index: int, text: str, logprobs: LogprobEntries, finish_reason: str | None) -> ChatChoice:
        parser = self.parser()
        parser.feed(text, finished=True)
        message = ChatChoiceMessage(content=parser.content or None, tool_calls=parser.calls or None)
        reason = parser.finish_reason(finish_reason)
        return ChatChoice(index=index, message=message, logprobs=self._logprobs(logprobs), finish_reason=reason)

    def chunk_choice(
        self, index: int, text: str, logprobs: LogprobEntries, text_offset: int, finish_reason: str | None
    ) -> ChatChunkChoice | None:
        parser = self.parsers.setdefault(index, self.parser())
        parsed = parser.feed(text, finished=finish_reason is not None)
        if not parsed.content and not parsed.calls and not logprobs and finish_reason is None:
            return None
        delta = ChatDelta(content=parsed.content or None, tool_calls=parsed.calls or None)
        reason = parser.finish_reason(finish_reason)
        return ChatChunkChoice(index=index, delta=delta, logprobs=self._logprobs(logprobs), finish_reason=reason)
