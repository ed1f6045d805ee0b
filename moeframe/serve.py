"""``python -m moeframe.serve [hydra overrides]``: an OpenAI-compatible HTTP server over one Engine.

    python -m moeframe.serve model=tiny-qwen2-moe cache=radix server.host=127.0.0.1 server.port=30000

The overrides are the same as ``moeframe.run``'s, so a server runs exactly
the configuration a study measured. uvicorn serves the FastAPI app built by
:func:`moeframe.server.build_app`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn
from omegaconf import DictConfig

from moeframe.api import Engine, compose_config
from moeframe.errors import MoeframeError
from moeframe.server import build_app


def served_model_name(cfg: DictConfig) -> str:
    """The id /v1/models reports: server.model_name, else the checkpoint folder's or preset's name."""
    if cfg.server.model_name:
        return str(cfg.server.model_name)
    if cfg.model.path:
        return Path(cfg.model.path).name
    return str(cfg.model.preset)


def main(argv: list[str]) -> None:
    try:
        cfg = compose_config(argv)
        engine = Engine(cfg)
    except MoeframeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    app = build_app(engine, served_model_name(cfg))
    uvicorn.run(app, host=cfg.server.host, port=int(cfg.server.port), log_level="info")


if __name__ == "__main__":
    main(sys.argv[1:])
