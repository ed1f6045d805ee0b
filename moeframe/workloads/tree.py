"""workload=tree: branching continuations of one prefix.

A root prompt is answered; each answer is continued by ``branching``
different follow-up texts, each of those is answered and continued again,
down to ``depth`` levels: the shape of tree-of-thought search and of
SGLang's ``fork`` (Zheng et al. 2024, figure 3). A node's request is sent
once its parent has finished, so a prefix cache can serve the whole path
from the root.
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

MAX_NODES = 4096


@dataclass
class TreeParams(ClientParams):
    depth: int = 3  # levels below the root
    branching: int = 2  # continuations of every answer
    root_tokens: int = 128  # the shared root prompt
    branch_tokens: int = 16  # each continuation's own text

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.depth < 0:
            raise ValueError(f"depth must be >= 0, got {self.depth}")
        for key in ("branching", "root_tokens", "branch_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.num_nodes > MAX_NODES:
            raise ValueError(f"depth {self.depth} and branching {self.branching} make {self.num_nodes} requests; at most {MAX_NODES}")

    @property
    def num_nodes(self) -> int:
        return sum(self.branching**level for level in range(self.depth + 1))


@WORKLOADS.register("tree", params=TreeParams)
class TreeWorkload(ClientWorkload):
    def __init__(self, params: TreeParams, **_: object) -> None:
        self.params = params

    def client_run(self, engine: "Engine") -> ClientRun:
        p = self.params
        text = TextSource(engine.encode, p.seed)
        # Node i's children are i*b+1 .. i*b+b (breadth-first numbering); texts are fixed before the run
        # so that a node's prompt never depends on the order in which its cousins finish.
        root = Submission(text.tokens(p.root_tokens), 0)
        branch_texts = [text.tokens(p.branch_tokens, "\n{}") for _ in range(p.num_nodes - 1)]
        num_inner = p.num_nodes - p.branching**p.depth

        def branch(req: Request, sub: Submission) -> list[Submission]:
            node: int = sub.tag
            if node >= num_inner:
                return []
            history = req.prompt_ids + req.output_ids
            children = range(node * p.branching + 1, (node + 1) * p.branching + 1)
            return [Submission(history + branch_texts[child - 1], child) for child in children]

        return drive(engine, [root], p, follow_up=branch, total=p.num_nodes, desc="tree")
