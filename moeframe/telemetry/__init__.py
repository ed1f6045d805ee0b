"""Telemetry: request metrics, the expert-load recorder, run loggers (jsonl, wandb), plots."""
