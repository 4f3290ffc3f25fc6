"""The session unit of a SearchSpace: model-level KV-cache and prefetch decisions, their choices and masks.

Session knobs (``autosurgeon.knobs.SESSION_KNOBS``) decide about the runtime session as a whole, so they are
variables of one model-level unit named ``SESSION_UNIT`` ("<session>"), appended after every per-module
variable (no per-module rule depends on them, and they depend on nothing, so variable order is kept).
They exist only when ``SearchSpace.build(knobs=...)`` asks for them: existing spaces, sweeps and policies
are unchanged by default.

Which variables exist depends on the *model*; which choices are valid on the *device*:

* KV knobs (``kv_precision``, ``kv_budget``, ``kv_tier``, ``kv_window``) exist for causal language models
  whose attention the runtime's paged cache supports (full attention; ``runtime.kvcache.make_kv_cache``);
  for other models :attr:`SessionRecord.kv_reason` says why there are none.
* ``kv_precision`` "fp8" needs, on a GPU execution unit, compute capability >= 8.9 (the rule weights use,
  ``space_masks.precision_reason``) and on a CPU one a torch with ``float8_e4m3fn`` (storage only: the cache
  decodes to the model dtype before attention).
* ``kv_tier`` "gpu" needs a GPU unit.
* ``prefetch`` (the expert prefetcher) exists for every model; "markov", "lru" and "gate" need fused
  mixture-of-experts modules (``runtime.experts.find_expert_modules``), and "gate" a router next to each.
  A dense model's blocks prefetch sequentially; its only prefetch decision is ``prefetch_depth``.
* ``prefetch_depth`` (streaming lookahead, and expert fetches ahead) exists for every model.

Index 0 of each variable is the runtime's default for a session that has a paged KV cache: float KV on the
execution tier, no budget, no window, experts resident, lookahead 2. Budgets and windows are discretised
into small fixed sets (``KV_BUDGET_CHOICES``, ``KV_WINDOW_CHOICES``); a budget is a share of the KV bytes the
workload's full context would store at the chosen precision, so the same choice means the same share of
tokens at every precision. The execution unit the KV rules read is the profile's default unit (where the
runtime's first block runs unless a plan moves it).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autosurgeon.knobs import (
    KV_BUDGET_NONE,
    KV_KNOBS,
    KV_PRECISIONS,
    KV_TIERS,
    PREFETCHES,
    SESSION_KNOBS,
    SESSION_UNIT,
)
from autosurgeon.space.masks import placement_units, precision_reason
from autosurgeon.space.variables import Variable
from runtime.experts import find_expert_modules
from runtime.kv_quant import fp8_dtype

if TYPE_CHECKING:  # annotations only
    from autosurgeon.hardware.profile import HardwareProfile

# Discretised choices (index 0: the runtime's default). Budgets: share of the full-context KV bytes.
KV_BUDGET_CHOICES: tuple[str, ...] = (KV_BUDGET_NONE, "75%", "50%", "25%")
# Windows in tokens (besides the 4 attention sinks): long-context settings down to a very short one.
KV_WINDOW_CHOICES: tuple[int | None, ...] = (None, 1024, 256, 64, 16)
PREFETCH_DEPTH_CHOICES: tuple[int, ...] = (2, 0, 1, 3, 4)
DEFAULT_PREFETCH_DEPTH = 2  # runtime.spec.SessionSpec.lookahead and ExpertConfig.lookahead defaults
SESSION_KIND = "session"


@dataclass(frozen=True)
class SessionRecord:
    """What the session knobs need to know about a model (saved with the space; no model needed later).

    Attributes:
        causal_lm: the model generates with a KV cache.
        kv_reason: why the model has no KV knobs (None: the runtime's paged KV cache supports it).
        kv_layers / kv_heads / head_dim: the KV cache's shape per token (layers x 2 x heads x head_dim).
        dtype: the KV compute dtype as loaded (the dtype of the model's first floating parameter, which is
            what ``runtime.Session`` builds the cache in).
        first_leaf: the leaf owning that parameter (a float precision decision on it changes the KV dtype).
        experts: FQNs of fused mixture-of-experts leaves (``runtime.experts.find_expert_modules`` order).
        num_experts: experts per MoE layer.
        expert_tensor_bytes: bytes of one expert's (gate_up, down) slices, as the store registers them.
        routers: every experts module has a router (``prefetch="gate"`` needs one).
        experts_per_token: experts each token is routed to per MoE layer (top-k).
    """

    causal_lm: bool
    kv_reason: str | None
    kv_layers: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    dtype: str = "float32"
    first_leaf: str | None = None
    experts: tuple[str, ...] = ()
    num_experts: int = 0
    expert_tensor_bytes: tuple[int, ...] = ()
    routers: bool = False
    experts_per_token: int = 1

    @property
    def has_kv(self) -> bool:
        return self.kv_reason is None

    @property
    def moe(self) -> bool:
        return bool(self.experts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["experts"], d["expert_tensor_bytes"] = list(self.experts), list(self.expert_tensor_bytes)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SessionRecord:
        d = dict(d)
        d["experts"], d["expert_tensor_bytes"] = tuple(d.get("experts", ())), tuple(d.get("expert_tensor_bytes", ()))
        return cls(**d)


def _text_config(config: Any) -> Any:
    getter = getattr(config, "get_text_config", None)
    return getter(decoder=True) if callable(getter) else config


def build_session_record(model: nn.Module, *, task: str | None = None) -> SessionRecord:
    """The :class:`SessionRecord` of ``model`` (real or meta weights); ``task`` from a LoadedModel if known."""

    first = next(((n, p) for n, p in model.named_parameters() if p.is_floating_point()), None)
    dtype = str(first[1].dtype).removeprefix("torch.") if first is not None else "float32"
    owner = first[0].rpartition(".")[0] if first is not None else None
    found = find_expert_modules(model)
    experts = tuple(name for name, _, _ in found)
    num_experts = int(found[0][1].num_experts) if found else 0
    per_expert: tuple[int, ...] = ()
    if found:
        gu, dn = found[0][1].gate_up_proj, found[0][1].down_proj
        per_expert = (gu[0].numel() * gu.element_size(), dn[0].numel() * dn.element_size())
    routers = bool(found) and all(router is not None for _, _, router in found)
    cfg = getattr(model, "config", None)
    top_k = getattr(_text_config(cfg), "num_experts_per_tok", None) if cfg is not None else None
    if top_k is None and found and found[0][2] is not None:
        top_k = getattr(found[0][2], "top_k", None)
    common = {"dtype": dtype, "first_leaf": owner, "experts": experts, "num_experts": num_experts,
              "expert_tensor_bytes": per_expert, "routers": routers, "experts_per_token": int(top_k or 1)}
    causal = (task == "causal-lm") if task is not None else bool(cfg is not None and hasattr(model, "generate")
                                                                 and not getattr(cfg, "is_encoder_decoder", False))
    if not causal or cfg is None:
        return SessionRecord(causal_lm=False, kv_reason=f"{type(model).__name__} is not a causal language model "
                             "(no KV cache)", **common)
    text = _text_config(cfg)
    layers = getattr(text, "num_hidden_layers", None)
    heads = getattr(text, "num_attention_heads", None)
    if not layers or not heads:
        return SessionRecord(causal_lm=True, kv_reason=f"its config ({type(text).__name__}) lacks num_hidden_layers/"
                             "num_attention_heads, so the KV shape is unknown", **common)
    types = getattr(text, "layer_types", None)
    if getattr(text, "sliding_window", None) is not None or (types and any(t != "full_attention" for t in types)):
        return SessionRecord(causal_lm=True, kv_reason="the runtime's paged KV cache supports full-attention layers "
                             "only (this config has sliding-window or linear-attention layers)", **common)
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return SessionRecord(causal_lm=True, kv_reason=None, kv_layers=int(layers), kv_heads=int(kv_heads),
                         head_dim=int(head_dim), **common)


def _first(value: Any, values: tuple[Any, ...]) -> tuple[Any, ...]:
    return (value, *(v for v in values if v != value))


def kv_precision_reason(precision: str, profile: HardwareProfile) -> str | None:
    """Why the KV cache cannot store ``precision`` on ``profile``'s default unit (None: it can)."""

    if precision != "fp8":
        return None
    unit = profile.default_unit()
    if unit.kind == "gpu":
        why = precision_reason("fp8", unit, profile)
        return None if why is None else f"fp8 KV on the GPU: {why}"
    if fp8_dtype() is None:
        return (f"fp8 KV on {unit.name} needs torch.float8_e4m3fn (storage only), which this torch "
                f"({torch.__version__}) lacks; use int8")
    return None


def session_variables(record: SessionRecord, profile: HardwareProfile, knobs: tuple[str, ...], *,
                      model_name: str = "the model") -> list[Any]:
    """The session unit's variables for the requested ``knobs``, in ``SESSION_KNOBS`` order (module docstring)."""

    units = placement_units(profile)
    exec_tier = "gpu" if profile.default_unit().kind in ("gpu", "dla") else "cpu"
    out = []
    for knob in SESSION_KNOBS:
        if knob not in knobs or (knob in KV_KNOBS and not record.has_kv):
            continue
        reasons: dict[str, str] = {}
        if knob == "kv_precision":
            choices: tuple[Any, ...] = KV_PRECISIONS
            reasons = {c: r for c in choices if (r := kv_precision_reason(c, profile)) is not None}
        elif knob == "kv_budget":
            choices = KV_BUDGET_CHOICES
        elif knob == "kv_tier":
            choices = _first(exec_tier, KV_TIERS)
            if units.get("gpu") is None:
                reasons["gpu"] = f"profile {profile.name!r} has no GPU unit for the KV pages"
        elif knob == "kv_window":
            choices = KV_WINDOW_CHOICES
        elif knob == "prefetch":
            choices = PREFETCHES
            if not record.moe:
                for c in choices[1:]:
                    reasons[c] = (f"{model_name} has no mixture-of-experts modules (dense): its blocks prefetch "
                                  "sequentially; choose prefetch_depth instead")
            elif not record.routers:
                for c in ("gate", "hybrid"):
                    reasons[c] = f"{c} prefetch reads the next layer's router, and some experts module has none"
        else:  # prefetch_depth
            choices = PREFETCH_DEPTH_CHOICES
        out.append(Variable(name=SESSION_UNIT, knob=knob, choices=choices,
                            mask=tuple(str(c) not in reasons for c in choices), reasons=reasons, kind=SESSION_KIND))
    return out


__all__ = ["DEFAULT_PREFETCH_DEPTH", "KV_BUDGET_CHOICES", "KV_WINDOW_CHOICES", "PREFETCH_DEPTH_CHOICES",
           "SESSION_KIND", "SessionRecord", "build_session_record", "kv_precision_reason", "session_variables"]
