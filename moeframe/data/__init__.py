"""Shipped text: sample.txt (stdlib docstrings, made by tools/make_sample_text.py) trains the tiny tokenizer and feeds the perplexity workload."""
