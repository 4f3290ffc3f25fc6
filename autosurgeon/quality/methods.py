"""The quality methods a causal LM may be scored by (plain data: the CLI reads it without importing torch)."""
from __future__ import annotations

METHODS = ("auto", "fidelity", "perplexity")  # the causal-LM choice; other tasks have one method each
