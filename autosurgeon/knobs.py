"""The vocabulary of surgery decisions: knob names and the values each may take.

One place for it, because the plan format, the search space, the transforms and every proposer must agree
on the spelling of a decision ("int4", "gpu<-cpu", …); a plan written today names these strings.
Which values are *valid for one layer on one device* is the search space's business (``space.py``); this
module only says which values exist at all.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from autosurgeon import precisions as precision_table
from autosurgeon.errors import InvalidArgumentError
from runtime.errors import JalapenoError
from runtime.sizes import parse_bytes

# Precision of a linear/conv's weights. "int8"/"int4" are weight-only (activations stay float);
# "int8-dynamic" quantizes activations per call too (fbgemm's w8a8 path); "fp8" needs a GPU that has it.
# The names and what each is: ``autosurgeon.precisions`` (the one precision table).
PRECISIONS: tuple[str, ...] = precision_table.NAMES
QUANTIZED_PRECISIONS: frozenset[str] = precision_table.QUANTIZED_PRECISIONS

# Group size of int4 weights (elements sharing one scale).
GROUP_SIZES: tuple[int, ...] = (32, 64, 128, 256)

# Placement of a block, written "EXECUTES<-HOME": where it runs, and the slower tier its weights stream from.
# A bare "gpu"/"cpu" is resident on the device it runs on. "dla" exists on Jetson profiles (on paper).
PLACEMENTS: tuple[str, ...] = ("gpu", "gpu<-cpu", "gpu<-disk", "cpu", "cpu<-disk", "dla")
# On a machine with several GPUs a placement may name the GPU: "gpu:N" (N = the profile's N-th GPU unit,
# "gpu" meaning "gpu:0"), resident or streamed from its own host link ("gpu:1<-cpu", "gpu:1<-disk").
# The set is open in N; which N exist is the profile's business (``autosurgeon.multi.devices``).
DEVICE_PLACEMENT_RE = re.compile(r"gpu:(0|[1-9][0-9]{0,3})(<-(cpu|disk))?")

# Fusion of one fusible group (conv+bn fold, linear+activation, QKV / gate-up concatenation).
FUSIONS: tuple[str, ...] = ("none", "fuse")

# Memory layout: channels_last for convs; "packed" keeps a streamed block's weights in one contiguous buffer.
LAYOUTS: tuple[str, ...] = ("default", "channels_last", "packed")

# Kernel choice of a quantized layer: "auto" picks by micro-benchmark; any other value is a runtime kernel
# name (the runtime's registry is open, so the set is not closed here).
KERNEL_AUTO = "auto"

KNOB_VALUES: Mapping[str, tuple[Any, ...] | None] = {
    "precision": PRECISIONS,
    "group_size": GROUP_SIZES,
    "placement": PLACEMENTS,
    "fusion": FUSIONS,
    "layout": LAYOUTS,
    "kernel": None,  # open set: "auto" or a kernel name from runtime.kernels
}
KNOBS: tuple[str, ...] = tuple(KNOB_VALUES)


def placement_parts(placement: str) -> tuple[str, str | None]:
    """Split a placement into (execution unit kind, home tier or None for resident).

    >>> placement_parts("gpu<-disk")
    ('gpu', 'disk')
    """
    validate_decision("placement", placement)
    unit, _, home = placement.partition("<-")
    return unit, (home or None)


def canonical_placement(placement: Any) -> Any:
    """The spelling a search space uses: ``"gpu:0<-cpu"`` -> ``"gpu<-cpu"`` (the first GPU is ``gpu``); else
    as given."""
    if isinstance(placement, str) and (placement == "gpu:0" or placement.startswith("gpu:0<-")):
        return "gpu" + placement[5:]
    return placement


def placement_kind(placement: str) -> str:
    """The execution-unit kind of a placement: ``"gpu:1<-cpu"`` -> ``"gpu"``, ``"cpu<-disk"`` -> ``"cpu"``."""
    return placement.partition("<-")[0].partition(":")[0]


def validate_decision(knob: str, value: Any, *, where: str = "decision") -> None:
    """Raise ``InvalidArgumentError`` unless ``knob`` exists and ``value`` is one of its values."""
    if knob not in KNOB_VALUES:
        hint = (" (a session knob: put it in the plan's `session`, not in a rule or the default)"
                if knob in SESSION_KNOB_VALUES else "")
        raise InvalidArgumentError(
            f"{where}: unknown knob {knob!r}{hint}; known knobs are {', '.join(KNOBS)}.")
    allowed = KNOB_VALUES[knob]
    if knob == "placement" and isinstance(value, str) and DEVICE_PLACEMENT_RE.fullmatch(value):
        return
    if allowed is None:
        if not isinstance(value, str) or not value:
            raise InvalidArgumentError(
                f"{where}: `{knob}` must be a non-empty string ({KERNEL_AUTO!r} or a kernel name), got {value!r}.")
        return
    if value not in allowed:
        more = " or 'gpu:N[<-cpu|<-disk]' naming one GPU of several" if knob == "placement" else ""
        raise InvalidArgumentError(
            f"{where}: `{knob}` must be one of {', '.join(map(str, allowed))}{more}, got {value!r}.")


# ---------------------------------------------------------------------------------------------- session knobs
# A second vocabulary: decisions about the runtime *session* as a whole (model-level, not per module): how
# the KV cache stores and bounds tokens and how weights are prefetched. A plan holds them in ``Plan.session``
# (``{"kv_precision": "int8", ...}``); the search space gives them variables of one model-level unit
# (``SESSION_UNIT``) only when asked; ``transforms.session_from_plan`` turns them into the runtime's
# ``KVCacheConfig`` / ``ExpertConfig`` / ``SessionSpec.lookahead``.

# KV cache storage: the model's float dtype, or int8 / fp8 (e4m3) codes with a float16 scale per head and token
# (runtime.kv_quant).
KV_PRECISIONS: tuple[str, ...] = ("float", "int8", "fp8")
# Hot tier of the KV pages (where the store charges them); a plan that omits it keeps the execution tier.
KV_TIERS: tuple[str, ...] = ("gpu", "cpu")
# Expert prefetcher of a mixture-of-experts model: "none" keeps experts resident in their blocks; "markov",
# "lru" (cache only, no prefetch), "gate" and "hybrid" (Markov prior x next-layer gate) stream experts
# through a bounded expert cache (runtime.experts.ExpertConfig). Dense models have no experts: their
# blocks prefetch sequentially.
PREFETCHES: tuple[str, ...] = ("none", "markov", "lru", "gate", "hybrid")
# Prefetch depth: streamed units fetched ahead (SessionSpec.lookahead) and expert fetches started ahead per
# MoE layer (ExpertConfig.lookahead). 2 is the runtime's default.
PREFETCH_DEPTHS: tuple[int, ...] = (0, 1, 2, 3, 4)
KV_BUDGET_NONE = "none"
SESSION_UNIT = "<session>"  # the name session variables carry in a SearchSpace (no module is called that)

SESSION_KNOB_VALUES: Mapping[str, tuple[Any, ...] | None] = {
    "kv_precision": KV_PRECISIONS,
    "kv_budget": None,  # "none", a share "50%" of the full-context KV bytes, or a size "64MiB" / int bytes
    "kv_tier": KV_TIERS,
    "kv_window": None,  # None (as the budget allows) or an int >= 1 of most recent tokens kept
    "prefetch": PREFETCHES,
    "prefetch_depth": PREFETCH_DEPTHS,
}
SESSION_KNOBS: tuple[str, ...] = tuple(SESSION_KNOB_VALUES)
KV_KNOBS: tuple[str, ...] = ("kv_precision", "kv_budget", "kv_tier", "kv_window")
ALL_KNOBS: tuple[str, ...] = (*KNOBS, *SESSION_KNOBS)


def parse_kv_budget(value: Any, *, where: str = "session") -> tuple[str, float | int | None]:
    """``("none", None)``, ``("share", fraction in (0, 1])`` or ``("bytes", n > 0)`` for a ``kv_budget`` value.

    >>> parse_kv_budget("50%")
    ('share', 0.5)
    """
    fix = 'use "none", a share like "50%" of the full-context KV bytes, or a size like "64MiB"'
    if value is None or value == KV_BUDGET_NONE:
        return "none", None
    if isinstance(value, bool):
        raise InvalidArgumentError(f"{where}: `kv_budget` must be a share or a size, got {value!r}; {fix}.")
    if isinstance(value, int):
        if value <= 0:
            raise InvalidArgumentError(f"{where}: `kv_budget` must be > 0 bytes, got {value!r}; {fix}.")
        return "bytes", value
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgumentError(f"{where}: `kv_budget` must be a string or an int, got {value!r}; {fix}.")
    text = value.strip()
    if text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError:
            raise InvalidArgumentError(f"{where}: `kv_budget` {value!r} is not a percentage; {fix}.") from None
        if not 0 < pct <= 100:
            raise InvalidArgumentError(f"{where}: `kv_budget` share must be in (0%, 100%], got {value!r}; {fix}.")
        return "share", pct / 100.0

    try:
        n = parse_bytes(text, what="kv_budget")
    except JalapenoError as exc:
        raise InvalidArgumentError(f"{where}: {exc} ({fix}).") from None
    if n <= 0:
        raise InvalidArgumentError(f"{where}: `kv_budget` must be > 0 bytes, got {value!r}; {fix}.")
    return "bytes", n


def validate_session_decision(knob: str, value: Any, *, where: str = "session") -> None:
    """Raise ``InvalidArgumentError`` unless ``knob`` is a session knob and ``value`` one of its values."""
    if knob not in SESSION_KNOB_VALUES:
        hint = " (a per-module knob: put it in a rule or the default)" if knob in KNOB_VALUES else ""
        raise InvalidArgumentError(
            f"{where}: unknown session knob {knob!r}{hint}; session knobs are {', '.join(SESSION_KNOBS)}.")
    if knob == "kv_budget":
        parse_kv_budget(value, where=where)
        return
    if knob == "kv_window":
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidArgumentError(
                f"{where}: `kv_window` must be an int >= 1 (tokens kept besides the sinks) or null, got {value!r}.")
        return
    allowed = SESSION_KNOB_VALUES[knob]
    assert allowed is not None
    if isinstance(value, bool) or value not in allowed:
        raise InvalidArgumentError(
            f"{where}: `{knob}` must be one of {', '.join(map(str, allowed))}, got {value!r}.")


def validate_session(session: Mapping[str, Any] | None, *, where: str = "session") -> dict[str, Any]:
    """A validated copy of a session mapping (``{}`` for None); a ``kv_budget`` of None is spelled "none"."""
    if session is None:
        return {}
    if not isinstance(session, Mapping):
        raise InvalidArgumentError(f"{where}: must be a mapping of session knob -> value, got {type(session).__name__}.")
    out = {}
    for knob, value in session.items():
        validate_session_decision(knob, value, where=where)
        out[knob] = KV_BUDGET_NONE if knob == "kv_budget" and value is None else value
    return out
