"""Opening a runtime Session over a transformed model: the last step of every road to the runtime.

``apply_plan`` checks and transforms (``prepare_plan``) and then calls ``open_session``; nothing else in the
library builds a ``runtime.Session`` from a plan or from flags, so the KV cache, expert streaming, lookahead
and budgets a run gets are always the ones its plan says (``autosurgeon run`` turns its flags into a plan).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from autosurgeon.transforms.session import SessionOptions
from runtime.session import Session

if TYPE_CHECKING:  # runtime.session imports torch-heavy modules; only the annotations need them here
    from runtime.session import Session
    from runtime.spec import SessionSpec


@dataclass(frozen=True)
class PreparedPlan:
    """A model transformed as its plan says, with where its blocks run and the session's runtime options.

    Attributes:
        model: the transformed module (a copy unless ``apply_plan(inplace=True)``).
        spec: the runtime's placement (resident or streamed per block), budgets and lookahead.
        options: the plan's session decisions as runtime options (KV cache, expert streaming).
    """

    model: nn.Module
    spec: SessionSpec
    options: SessionOptions


def open_session(prepared: PreparedPlan, *, energy_watts: float | None = None,
                 adapt: bool | None = None) -> Session:
    """A ``runtime.Session`` over ``prepared`` (close it when done, or use it as a context manager).

    Args:
        prepared: what ``prepare_plan`` returned.
        energy_watts: power figure for the energy estimate where no counter (NVML/RAPL) is readable.
        adapt: retune between steps under memory pressure (``runtime.adapt``); None: the runtime's default.
    """

    return Session(prepared.model.eval(), prepared.spec, energy_watts=energy_watts, kv=prepared.options.kv,
                   experts=prepared.options.experts, adapt=adapt)


__all__ = ["PreparedPlan", "open_session"]
