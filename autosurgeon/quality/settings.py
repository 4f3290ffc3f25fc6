"""QualitySettings: how every command measures quality (``--data``, ``--quality-samples``, ``--quality-method``).

One frozen value shared by plan, sweep, apply, evaluate, demo and the env, so a plan admitted by one command is
judged the same way by the next. Defaults work on every task: causal LMs outside the zoo get fidelity in their
own vocabulary, zoo LMs their held-out perplexity, encoders embedding fidelity, classifiers accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.quality.methods import METHODS

if TYPE_CHECKING:  # annotations only
    from autosurgeon.zoo import LoadedModel


@dataclass(frozen=True)
class QualitySettings:
    """Attributes:
        data: a file of text or token ids to score perplexity on (``quality.data_file``); None: the default.
        samples: sequences / windows / items / images scored (None: each method's default).
        method: ``"auto"``, ``"fidelity"`` or ``"perplexity"`` (causal LMs; other tasks have one method).
    """

    data: str | None = None
    samples: int | None = None
    method: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidArgumentError(f"`--quality-method` must be one of {METHODS}, got {self.method!r}.")
        if self.samples is not None and (isinstance(self.samples, bool) or not isinstance(self.samples, int)
                                         or self.samples < 1):
            raise InvalidArgumentError(f"`--quality-samples` must be an integer >= 1, got {self.samples!r}.")
        if self.data is not None and not Path(self.data).is_file():
            raise InvalidArgumentError(f"`--data` {self.data!r} is not a readable file; pass a text file, a .json "
                                       "list of token ids or a .ids file.")

    def evaluator(self, loaded: LoadedModel, *, default_samples: int | None = None) -> Any:
        """A :class:`QualityEvaluator` for ``loaded`` with these settings."""
        from autosurgeon.quality.measure import QualityEvaluator  # lazy: keeps --help and zoo free of torch

        samples = self.samples if self.samples is not None else default_samples
        return QualityEvaluator(loaded, data=self.data, max_samples=samples, method=self.method)

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "samples": self.samples, "method": self.method}
