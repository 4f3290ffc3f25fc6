"""Transformations: quantize, fuse, place, kernel, layout and prune — each a frozen config, one handler.

::

    from autosurgeon.transforms import QuantizeConfig, FuseConfig, transform, apply_plan

    transform(model, FuseConfig("qkv"), fqn="model.layers.0.self_attn")          # one module, in place
    transform(model, QuantizeConfig("int4", group_size=64), fqn="model.layers.0.mlp.down_proj")
    session = apply_plan(model, plan, "local", budgets={"cpu": "2GiB"})           # a copy, checked first
    out = session.generate(ids, max_new_tokens=16); session.close()

Configs (``configs.py``) are validated on construction; ``register_transform(ConfigType)`` binds exactly
one handler per type, and ``transform`` with an unregistered type raises ``TypeError`` naming the
registered ones. Handlers are idempotent. ``apply_plan`` (``apply.py``) checks, resolves, applies in the
order fuse -> prune -> quantize -> kernel -> layout and returns a ``runtime.Session`` whose KV cache, expert
streaming and lookahead follow the plan's session decisions (``session.py``: ``session_options``).
"""
from __future__ import annotations

# Handler modules register themselves on import (one handler per config type).
from autosurgeon.transforms import fuse as _fuse  # noqa: F401
from autosurgeon.transforms import kernel as _kernel  # noqa: F401
from autosurgeon.transforms import layout as _layout  # noqa: F401
from autosurgeon.transforms import place as _place  # noqa: F401
from autosurgeon.transforms import prune as _prune  # noqa: F401
from autosurgeon.transforms import quantize as _quantize  # noqa: F401
from autosurgeon.transforms.apply import (
    STAGES,
    Step,
    Surgery,
    apply_plan,
    apply_surgery,
    resolve_surgery,
    session_from_plan,
)
from autosurgeon.transforms.configs import (
    FuseConfig,
    KernelConfig,
    LayoutConfig,
    PlaceConfig,
    PruneConfig,
    QuantizeConfig,
)
from autosurgeon.transforms.place import build_session_spec
from autosurgeon.transforms.registry import (
    TransformContext,
    handler_for,
    register_transform,
    registered_types,
    transform,
)
from autosurgeon.transforms.session import SessionOptions, session_options

__all__ = [
    "STAGES", "FuseConfig", "KernelConfig", "LayoutConfig", "PlaceConfig", "PruneConfig", "QuantizeConfig",
    "SessionOptions", "Step", "Surgery", "TransformContext", "apply_plan", "apply_surgery", "build_session_spec",
    "handler_for", "register_transform", "registered_types", "resolve_surgery", "session_from_plan",
    "session_options", "transform",
]
