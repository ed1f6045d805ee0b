"""Text shipped with moeframe.

sample.txt holds the docstrings of a fixed list of Python stdlib modules (made
once by tools/make_sample_text.py): it trains the tiny checkpoints' tokenizer
and is the default text of the perplexity workload.
"""

from importlib import resources


def sample_text() -> str:
    return resources.files(__name__).joinpath("sample.txt").read_text(encoding="utf-8")
