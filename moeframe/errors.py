"""Errors a user can act on: each says what was wrong and, where it helps, what is valid."""


class MoeframeError(Exception):
    """Base of every error moeframe raises on purpose."""


class ConfigError(MoeframeError, ValueError):
    """A config key holds an unknown choice or a bad value; raised at start."""


class CheckpointError(MoeframeError):
    """A checkpoint folder is missing, corrupt, or of an unknown architecture."""


class RequestError(MoeframeError, ValueError):
    """One request is invalid (empty prompt, too long, bad constraint); the engine serves the rest."""


class OverloadedError(MoeframeError):
    """The server's waiting queue is full: the request was not admitted (HTTP 429); retrying later may succeed."""
