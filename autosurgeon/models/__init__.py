"""Building blocks of the model zoo (``autosurgeon.zoo`` is the public face).

One idea per module: the artefact cache, the byte-level text corpus, the causal-LM training recipe,
the digits CNN, the large architecture shapes, Hugging Face directories, and example inputs.
Heavy dependencies (transformers, scikit-learn) are imported inside functions so that importing
the zoo stays cheap.
"""
from __future__ import annotations
