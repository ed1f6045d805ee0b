"""``python -m moeframe.serve [hydra overrides]``: an OpenAI-compatible HTTP server over one Engine.

    python -m moeframe.serve model=tiny-qwen2-moe cache=radix server.host=127.0.0.1 server.port=30000

The overrides are the same as ``moeframe.run``'s, so a server runs exactly
the configuration a study measured; the ``server`` section sets the address,
the API key and the limits (README's "The server"). uvicorn serves the
FastAPI app built by :func:`moeframe.server.build_app`. SIGTERM (or Ctrl-C)
shuts down gracefully: no new requests, in-flight ones get
``server.shutdown_grace_s`` to finish and are then ended with
finish_reason "abort", and the process exits.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType

import uvicorn
from omegaconf import DictConfig, OmegaConf

from moeframe.api import Engine, compose_config
from moeframe.config import ServerConfig
from moeframe.errors import MoeframeError
from moeframe.server import build_app
from moeframe.server.shutdown import GracefulShutdown

# uvicorn's own wait for open connections, past the grace period: a backstop, as the drain ends them first
SHUTDOWN_BACKSTOP_S = 3.0


def served_model_name(cfg: DictConfig) -> str:
    """The id /v1/models reports: server.model_name, else the checkpoint folder's or preset's name."""
    if cfg.server.model_name:
        return str(cfg.server.model_name)
    if cfg.model.path:
        return Path(cfg.model.path).name
    return str(cfg.model.preset)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which also starts the app's graceful shutdown when a signal asks it to exit."""

    def __init__(self, config: uvicorn.Config, shutdown: GracefulShutdown) -> None:
        super().__init__(config)
        self.graceful = shutdown

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.graceful.request()
        super().handle_exit(sig, frame)


def main(argv: list[str]) -> None:
    try:
        cfg = compose_config(argv)
        server: ServerConfig = OmegaConf.to_object(cfg.server)
        engine = Engine(cfg)
    except MoeframeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    app = build_app(engine, served_model_name(cfg), server)
    config = uvicorn.Config(
        app,
        host=server.host,
        port=int(server.port),
        log_level="info",
        timeout_graceful_shutdown=int(server.shutdown_grace_s + SHUTDOWN_BACKSTOP_S),
    )
    DrainingServer(config, app.state.shutdown).run()


if __name__ == "__main__":
    main(sys.argv[1:])
