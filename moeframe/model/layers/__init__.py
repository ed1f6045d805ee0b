"""Layers shared by every model family; per-family differences come in as spec fields."""
