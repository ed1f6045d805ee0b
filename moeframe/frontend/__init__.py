"""The program DSL, SGLang-style: ``@function`` programs over a state, ``gen``, ``select``, ``tool_call``, roles, ``fork``."""

from moeframe.frontend.backend import Backend
from moeframe.frontend.engine_backend import EngineBackend
from moeframe.frontend.ir import assistant, gen, select, system, tool_call, user
from moeframe.frontend.program import Program, function, set_default_backend
from moeframe.frontend.server_backend import ServerBackend
from moeframe.frontend.state import ForkGroup, ProgramState

__all__ = [
    "Backend",
    "EngineBackend",
    "ForkGroup",
    "Program",
    "ProgramState",
    "ServerBackend",
    "assistant",
    "function",
    "gen",
    "select",
    "set_default_backend",
    "system",
    "tool_call",
    "user",
]
