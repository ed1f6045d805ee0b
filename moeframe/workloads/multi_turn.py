"""workload=multi_turn: conversations that grow turn by turn.

Each turn's prompt is the previous turn's prompt, the model's answer and a
new user message, and a turn is sent only once the previous one has
finished, as a chat client does (the multi-turn chat workload of the SGLang
paper, section 6). A prefix cache keeps each conversation's history, so only
the new user text (and the last answer token) is computed per turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from moeframe.engine.request import Request
from moeframe.workloads import WORKLOADS
from moeframe.workloads.driver import ClientParams, ClientRun, ClientWorkload, Submission, drive
from moeframe.workloads.text_source import TextSource

if TYPE_CHECKING:
    from moeframe.api import Engine


@dataclass
class MultiTurnParams(ClientParams):
    num_conversations: int = 8  # conversations in flight together
    num_turns: int = 4  # user messages per conversation
    system_tokens: int = 64  # each conversation's own opening text
    user_tokens: int = 16  # each user message

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("num_conversations", "num_turns", "system_tokens", "user_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")


@dataclass(frozen=True)
class Turn:
    conversation: int
    index: int  # 0-based turn number


@WORKLOADS.register("multi_turn", params=MultiTurnParams)
class MultiTurnWorkload(ClientWorkload):
    def __init__(self, params: MultiTurnParams, **_: object) -> None:
        self.params = params

    def client_run(self, engine: "Engine") -> ClientRun:
        p = self.params
        text = TextSource(engine.encode, p.seed)
        user = [[text.tokens(p.user_tokens, "\nUser: {}\nAssistant:") for _ in range(p.num_turns)] for _ in range(p.num_conversations)]
        first = [
            Submission(text.tokens(p.system_tokens) + user[c][0], Turn(c, 0)) for c in range(p.num_conversations)
        ]

        def next_turn(req: Request, sub: Submission) -> list[Submission]:
            turn: Turn = sub.tag
            if turn.index + 1 == p.num_turns:
                return []
            history = req.prompt_ids + req.output_ids
            return [Submission(history + user[turn.conversation][turn.index + 1], Turn(turn.conversation, turn.index + 1))]

        return drive(engine, first, p, follow_up=next_turn, total=p.num_conversations * p.num_turns, desc="multi_turn")
