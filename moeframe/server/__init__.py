"""The OpenAI-compatible HTTP server: routes, wire format, streaming, the engine thread, metrics."""

from moeframe.server.app import build_app

__all__ = ["build_app"]
