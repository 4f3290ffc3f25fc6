"""KV-cache sensitivity: the cheap evaluators' quality proxy for a plan's KV decisions.

The per-unit table (``sensitivity.py``) scores weight precisions only; a plan's session can also store the
KV cache in int8/fp8 and evict from it (a byte budget, a sliding window), which a full forward pass never
sees. Here each session choice that changes what attention reads is measured ONCE, alone, with
``quality_kv.kv_quality_loss`` (held-out windows decoded token by token through the runtime's paged cache
vs Hugging Face's float cache):

* every ``kv_precision`` of ``knobs.KV_PRECISIONS`` (float is the reference and scores 0),
* every ``kv_budget`` of ``space_session.KV_BUDGET_CHOICES`` at float precision,
* every ``kv_window`` of ``space_session.KV_WINDOW_CHOICES`` at float precision.

``kv_tier`` (where pages live), ``prefetch`` and ``prefetch_depth`` do not change the numbers attention
reads, so they score 0 and are not measured.

A plan's KV loss is an approximation from single-choice measurements, additive like the per-unit proxy
(:meth:`KVSensitivityTable.predict`): each measured choice contributes ``max(0, log(1 + loss))`` nats of
mean NLL (a choice measured below zero is noise on a few hundred tokens, not a gain a sweep should chase;
the raw value stays in the table); the storage precision's nats ADD to the eviction's, and the eviction's
are the LARGER of the budget's and the window's, not their sum: both evict the oldest non-sink tokens, so
the cache keeps ``min(window + sinks, budget tokens)`` and the tighter bound is what the plan loses (summing
them counted the same evicted tokens twice: on tiny-llama, all 36 combinations of 3 precisions x 4 budgets
x windows {none, 64, 16} at context 32, the sum was off by up to 2.7 percentage points, the max by 0.44).
The plan's KV loss is ``exp(nats) - 1``. Interactions left out: an int8 cache under a budget keeps a few
more tokens than a float one (a budget share is of the bytes at the chosen precision, but the runtime's
floor is in bytes), and a window just inside a budget evicts a little more than either alone. With
``check_combined`` the most lossy choice of every knob is also measured together, and the table keeps the
measured and the predicted figure (``combined``) so the approximation's error is on record.

Context: a ``kv_budget`` share is of the KV bytes of ``context + 1`` positions (the evaluator's
``Workload.context``, as ``footprint.kv_budget_bytes`` and ``apply_plan`` count it), and the decode runs
to ``seq_len`` positions, by default ``max(context, 64)``: 64 is what ``RuntimeEvaluator`` decodes
(``kv_quality_loss``'s default), so the proxy estimates the number the runtime evaluator measures, and a
longer workload context is decoded in full so windows shorter than it bind. A window or budget that keeps
at least ``seq_len`` tokens cannot evict anything in this decode; ``kept_tokens`` and :meth:`binds` say
which choices bind, and the settings record ``context`` and ``seq_len``.

Tables are cached as JSON under ``<cache>/sensitivity/kv-<key>.json`` with the conventions of the
per-unit table: the key hashes the architecture fingerprint, the weights' values, every setting, the
runtime's KV defaults (sinks, page size, policy) and torch's version.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from autosurgeon._logging import get_logger
from autosurgeon.cost.footprint import DEFAULT_KV_CONTEXT, kv_token_bytes
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.files.envelope import unwrap, wrap
from autosurgeon.knobs import KV_BUDGET_NONE, KV_PRECISIONS
from autosurgeon.models.cache import cache_root
from autosurgeon.quality.calibration import module_of
from autosurgeon.quality.kv import kv_quality_loss
from autosurgeon.quality.measure import lm_heldout_windows
from autosurgeon.quality.sensitivity import _cache_key, _write_atomic
from autosurgeon.space.session import KV_BUDGET_CHOICES, KV_WINDOW_CHOICES, build_session_record
from autosurgeon.transforms.session import session_options
from runtime.kvcache import KVCacheConfig
from runtime.session import Session
from runtime.spec import SessionSpec

logger = get_logger(__name__)

TABLE_TYPE = "autosurgeon.KVSensitivityTable"
TABLE_VERSION = 1
# Session knobs that change what attention reads, and the value that changes nothing (the reference).
QUALITY_KNOBS: dict[str, Any] = {"kv_precision": "float", "kv_budget": KV_BUDGET_NONE, "kv_window": None}
RUNTIME_SEQ_LEN = 64  # quality_kv.kv_quality_loss's default decode length: what RuntimeEvaluator measures


def choice_label(value: Any) -> str:
    """The table's spelling of a session value (``None`` -> ``"none"``; ints as digits)."""
    return "none" if value is None else str(value)


@dataclass(frozen=True)
class KVSensitivitySettings:
    """How a :class:`KVSensitivityTable` is measured (every field is part of the cache key).

    Attributes:
        context: positions a ``kv_budget`` share is of (the evaluator's ``Workload.context``).
        batch: sequences the budget is made for (``Workload.batch``; each decoded window keeps what one
            sequence would).
        samples: held-out windows decoded (one batch); ``samples x (seq_len - prefix + 1)`` tokens scored.
        seq_len: decode length (None: ``max(context, 64)``, module docstring).
        prefix: prompt tokens prefilled before decoding.
        check_combined: also measure the most lossy choice of every knob together (the approximation error).
    """

    context: int = DEFAULT_KV_CONTEXT
    batch: int = 1
    samples: int = 32
    seq_len: int | None = None
    prefix: int = 16
    check_combined: bool = True

    def __post_init__(self) -> None:
        for name in ("context", "batch", "samples", "prefix"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"`{name}` must be an int >= 1, got {value!r}.")
        if not self.prefix < self.decode_len:
            raise InvalidArgumentError(f"`prefix` must be < the decode length, got prefix={self.prefix}, "
                                       f"seq_len={self.decode_len}; lower `prefix` or raise `seq_len`.")

    @property
    def decode_len(self) -> int:
        """The decode length actually used (``seq_len`` or ``max(context, 64)``)."""
        return self.seq_len if self.seq_len is not None else max(self.context, RUNTIME_SEQ_LEN)


@dataclass(frozen=True)
class KVSensitivityTable:
    """Measured KV quality loss of each session choice alone, on one model (weights included).

    Attributes:
        loss: ``{(knob, choice_label(value)): kv_quality_loss}`` (0.01 = 1 % higher perplexity; signed).
        kept_tokens: tokens per sequence each choice lets the cache hold (window + sinks; budget bytes over
            the bytes of a token in every layer, before page rounding); None: unbounded.
        unmeasured: ``{(knob, label): why}`` for choices the runtime cannot take here (fp8 without float8).
        context / seq_len / prefix: the measurement's context (:class:`KVSensitivitySettings`).
        tokens: tokens scored per measurement.
        reference_nll: mean NLL through Hugging Face's cache (nats per token).
        combined: ``{"session", "measured", "predicted"}`` of the most lossy combination (empty if unchecked).
        key / settings / seconds: cache key, every setting, wall time of the measurement.
    """

    loss: Mapping[tuple[str, str], float]
    kept_tokens: Mapping[tuple[str, str], int | None]
    context: int
    seq_len: int
    prefix: int
    tokens: int
    reference_nll: float = float("nan")
    unmeasured: Mapping[tuple[str, str], str] = field(default_factory=dict)
    combined: Mapping[str, Any] = field(default_factory=dict)
    key: str = ""
    settings: Mapping[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def binds(self, knob: str, value: Any) -> bool:
        """Whether the choice can evict anything in a decode of ``seq_len`` positions."""
        kept = self.kept_tokens.get((knob, choice_label(value)))
        return kept is not None and kept < self.seq_len

    def delta_nll(self, knob: str, value: Any) -> float | None:
        """The choice's contribution in nats of mean NLL (``max(0, log1p(loss))``); None if not in the table."""
        if value == QUALITY_KNOBS.get(knob, object()):
            return 0.0
        loss = self.loss.get((knob, choice_label(value)))
        return None if loss is None else max(0.0, math.log1p(loss))

    def predict(self, session: Mapping[str, Any]) -> dict[str, Any]:
        """Estimate of ``session``'s KV loss: precision nats + max(budget nats, window nats) (module docstring).

        Returns ``{"kv_quality_loss", "delta_nll", "parts": {knob: nats}, "unscored": ["knob=value", ...]}``
        (``parts`` holds every measured choice's own nats; ``delta_nll`` the combination); a value the table
        did not measure (a ``kv_budget`` in bytes, fp8 where unavailable) adds 0 and is listed in ``unscored``.
        """
        parts: dict[str, float] = {}
        unscored: list[str] = []
        for knob, reference in QUALITY_KNOBS.items():
            value = session.get(knob, reference)
            if value == reference:
                continue
            d = self.delta_nll(knob, value)
            if d is None:
                unscored.append(f"{knob}={choice_label(value)}")
            else:
                parts[knob] = d
        total = parts.get("kv_precision", 0.0) + max(parts.get("kv_budget", 0.0), parts.get("kv_window", 0.0))
        return {"kv_quality_loss": math.expm1(total), "delta_nll": total, "parts": parts, "unscored": unscored}

    def to_json(self) -> str:
        data = {
            "loss": [[k, v, x] for (k, v), x in self.loss.items()],
            "kept_tokens": [[k, v, x] for (k, v), x in self.kept_tokens.items()],
            "unmeasured": [[k, v, why] for (k, v), why in self.unmeasured.items()],
            "context": self.context, "seq_len": self.seq_len, "prefix": self.prefix, "tokens": self.tokens,
            "reference_nll": self.reference_nll, "combined": dict(self.combined), "key": self.key,
            "settings": dict(self.settings), "seconds": self.seconds,
        }
        return json.dumps(wrap(TABLE_TYPE, TABLE_VERSION, data), indent=1)

    @classmethod
    def from_json(cls, text: str) -> KVSensitivityTable:
        d = unwrap(text, type_name=TABLE_TYPE, version=TABLE_VERSION, what="KV sensitivity table",
                   fix="measure it again")
        return cls(
            loss={(k, v): float(x) for k, v, x in d["loss"]},
            kept_tokens={(k, v): (None if x is None else int(x)) for k, v, x in d["kept_tokens"]},
            unmeasured={(k, v): str(why) for k, v, why in d["unmeasured"]},
            context=int(d["context"]), seq_len=int(d["seq_len"]), prefix=int(d["prefix"]), tokens=int(d["tokens"]),
            reference_nll=float(d["reference_nll"]), combined=d["combined"], key=d["key"], settings=d["settings"],
            seconds=float(d["seconds"]),
        )


# ---------------------------------------------------------------------------------------------- measuring
def _choices() -> list[tuple[str, Any]]:
    """Every non-reference choice of the quality knobs, in the space's order."""
    lists = {"kv_precision": KV_PRECISIONS, "kv_budget": KV_BUDGET_CHOICES, "kv_window": KV_WINDOW_CHOICES}
    return [(knob, v) for knob, values in lists.items() for v in values if v != QUALITY_KNOBS[knob]]


def _settings_dict(module: torch.nn.Module, settings: KVSensitivitySettings) -> dict[str, Any]:

    defaults = KVCacheConfig()
    return {**asdict(settings), "decode_len": settings.decode_len,
            "choices": [[k, choice_label(v)] for k, v in _choices()],
            "heldout": "quality.lm_heldout_windows (seed 0, 131072 bytes)",
            "kv_runtime": {"sinks": defaults.sinks, "page_tokens": defaults.page_tokens, "policy": defaults.policy},
            "dtype": str(next(p.dtype for p in module.parameters() if p.is_floating_point()))}


def _check_model(model: Any) -> torch.nn.Module:

    module = module_of(model)
    if any(p.is_meta for p in module.parameters()):
        raise InvalidArgumentError("the KV sensitivity table decodes real text: load the model with weights "
                                   "(not device='meta').")
    record = build_session_record(module, task=getattr(model, "task", None))
    if not record.has_kv:
        raise InvalidArgumentError(f"no KV sensitivity for this model: {record.kv_reason}.")
    return module


def kv_table_key(model: Any, settings: KVSensitivitySettings | None = None) -> str:
    """The cache key of ``model``'s table at ``settings`` (computed without measuring; hashes the weights)."""

    module = _check_model(model)
    settings = settings or KVSensitivitySettings()
    return _cache_key(module, _settings_dict(module, settings), version=TABLE_VERSION)


# long: one measurement loop (cache lookup, reference decode, one decode per choice, atomic write); its steps share state
def measure_kv_sensitivity(model: Any, settings: KVSensitivitySettings | None = None, *, use_cache: bool = True,
                           cache_dir: str | os.PathLike[str] | None = None,
                           threads: int | None = None) -> KVSensitivityTable:
    """Measure (or load from the cache) the :class:`KVSensitivityTable` of a causal LM.

    Args:
        model: a zoo ``LoadedModel`` or a causal-LM ``nn.Module`` with real weights; a copy runs on the CPU
            (the numerics of int8/fp8 storage and eviction do not depend on the device).
        settings: context, samples, decode length (:class:`KVSensitivitySettings`).
        use_cache: read and write ``<cache>/sensitivity/kv-<key>.json``.
        cache_dir: cache root (default ``$AUTOSURGEON_CACHE`` or ``~/.cache/autosurgeon``).
        threads: torch CPU threads during the measurement (restored after); None leaves them.
    """

    settings = settings or KVSensitivitySettings()
    if threads is not None and threads < 1:
        raise InvalidArgumentError(f"`threads` must be >= 1 or None, got {threads}.")
    module = _check_model(model)
    task = getattr(model, "task", None)
    key = kv_table_key(model, settings)
    path = cache_root(cache_dir) / "sensitivity" / f"kv-{key}.json"
    if use_cache and path.is_file():
        logger.info("KV sensitivity table from cache %s", path)
        return KVSensitivityTable.from_json(path.read_text())

    seq_len = settings.decode_len
    windows = lm_heldout_windows(seq_len=seq_len, max_windows=settings.samples)
    record = build_session_record(module, task=task)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    loss: dict[tuple[str, str], float] = {}
    kept: dict[tuple[str, str], int | None] = {}
    unmeasured: dict[tuple[str, str], str] = {}
    combined: dict[str, Any] = {}

    def options(session: dict[str, Any]) -> Any:
        return session_options(session, runner, exec_device="cpu", kv_context=settings.context,
                               kv_batch=settings.batch, task=task or "causal-lm").kv

    runner = copy.deepcopy(module).to("cpu").eval()  # the Session takes over its weights; the caller's stay
    try:
        with Session(runner, SessionSpec(), kv=KVCacheConfig()) as session:
            reference = None
            tokens = 0
            for knob, value in _choices():
                label = choice_label(value)
                try:
                    session.kv_config = options({knob: value})
                except InvalidArgumentError as exc:  # fp8 storage without torch.float8_e4m3fn
                    unmeasured[(knob, label)] = str(exc)
                    continue
                config = session.kv_config
                if config.window is not None:
                    kept[(knob, label)] = config.window + config.sinks
                elif config.budget_bytes is not None:
                    per_token = _token_bytes_all_layers(record, config.precision, settings.batch)
                    kept[(knob, label)] = int(config.budget_bytes) // per_token
                else:
                    kept[(knob, label)] = None
                r = kv_quality_loss(session, windows=windows, prefix=settings.prefix, kv_batch=settings.batch,
                                    reference_nll=reference)
                reference, tokens = r["nll_reference"], r["tokens"]
                loss[(knob, label)] = r["kv_quality_loss"]
            if settings.check_combined:
                worst: dict[str, Any] = {}
                for knob in QUALITY_KNOBS:  # ties go to the later (more aggressive) choice
                    measured = [(x, i, v) for i, ((k, v), x) in enumerate(loss.items()) if k == knob]
                    if measured:
                        worst[knob] = _parse_label(knob, max(measured)[2])
                session.kv_config = options(worst)
                r = kv_quality_loss(session, windows=windows, prefix=settings.prefix, kv_batch=settings.batch,
                                    reference_nll=reference)
                partial = KVSensitivityTable(loss=loss, kept_tokens=kept, context=settings.context, seq_len=seq_len,
                                             prefix=settings.prefix, tokens=tokens)
                combined = {"session": {k: choice_label(v) for k, v in worst.items()},
                            "measured": r["kv_quality_loss"],
                            "predicted": partial.predict(worst)["kv_quality_loss"]}
    finally:
        torch.set_num_threads(previous_threads)
    seconds = time.perf_counter() - started
    table = KVSensitivityTable(loss=loss, kept_tokens=kept, unmeasured=unmeasured, context=settings.context,
                               seq_len=seq_len, prefix=settings.prefix, tokens=tokens,
                               reference_nll=float(reference) if reference is not None else float("nan"),
                               combined=combined, key=key, settings=_settings_dict(module, settings), seconds=seconds)
    logger.info("KV sensitivity of %d choices in %.2f s (%d tokens each, context %d, decode to %d)", len(loss),
                seconds, tokens, settings.context, seq_len)
    if use_cache:
        _write_atomic(path, table.to_json())
    return table


def _token_bytes_all_layers(record: Any, precision: str, batch: int) -> int:
    """Stored bytes of one token of one sequence in every layer (``footprint.kv_token_bytes`` x layers)."""

    return record.kv_layers * kv_token_bytes(record.kv_heads, record.head_dim, precision, record.dtype, batch=batch)


def _parse_label(knob: str, label: str) -> Any:
    """A table label back to the session value it spells (windows are ints, ``"none"`` is None for windows)."""
    if knob == "kv_window":
        return None if label == "none" else int(label)
    return label


__all__ = ["QUALITY_KNOBS", "KVSensitivitySettings", "KVSensitivityTable", "choice_label", "kv_table_key",
           "measure_kv_sensitivity"]
