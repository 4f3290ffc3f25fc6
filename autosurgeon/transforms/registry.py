"""One handler per config type, and ``transform(model, config, fqn=...)``: the single entry point.

A handler has the signature ``handler(module, config, *, fqn, context) -> nn.Module``: it gets the module
at ``fqn``, returns its replacement (or the same module, changed in place or left alone when it is
already in the target state — every handler is idempotent), and may record decisions that are not module
surgery (placement) in the :class:`TransformContext`. ``transform`` installs the replacement in its parent.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from autosurgeon._logging import get_logger
from autosurgeon.errors import InvalidArgumentError

logger = get_logger(__name__)

Handler = Callable[..., nn.Module]
_HANDLERS: dict[type, Handler] = {}


@dataclass
class TransformContext:
    """What handlers share during one surgery (the caller holds it; nothing is global).

    Attributes:
        root: the model being changed (set by :func:`transform`).
        profile: the HardwareProfile the plan is for (None when transforms are used by hand).
        placements: block FQN -> ``(placement, BlockSpec)`` recorded by the place handler.
        packed: block FQNs whose layout is ``packed`` (streamed as one unit).
        log: ``(fqn, config, "applied" | "skipped")`` for every call, in order.
    """

    root: nn.Module | None = None
    profile: Any = None
    placements: dict[str, tuple[str, Any]] = field(default_factory=dict)
    packed: set[str] = field(default_factory=set)
    log: list[tuple[str, Any, str]] = field(default_factory=list)

    def device_of(self, fqn: str) -> torch.device:
        """Execution device of the module ``fqn``: its block's placement, else the profile's default unit."""
        for block, (_, spec) in self.placements.items():
            if fqn == block or fqn.startswith(block + "."):
                return torch.device(spec.device)
        if self.profile is not None:
            unit = self.profile.default_unit()
            return torch.device(unit.name if unit.kind == "gpu" else "cpu")
        return torch.device("cpu")

    def skipped(self, fqn: str, config: Any) -> None:
        """Record that ``fqn`` was already in the state ``config`` asks for."""
        self.log.append((fqn, config, "skipped"))


def register_transform(config_type: type) -> Callable[[Handler], Handler]:
    """Class decorator-style registration: ``@register_transform(QuantizeConfig)`` over the handler.

    Exactly one handler per config type: registering a second one raises ``TypeError``.
    """
    if not isinstance(config_type, type):
        raise TypeError(f"register_transform needs a config class, got {config_type!r}.")

    def decorate(handler: Handler) -> Handler:
        if config_type in _HANDLERS:
            raise TypeError(f"a transform for {config_type.__name__} is already registered "
                            f"({_HANDLERS[config_type].__qualname__}); one handler per config type.")
        _HANDLERS[config_type] = handler
        return handler

    return decorate


def registered_types() -> tuple[type, ...]:
    """Config types that have a handler, in registration order."""
    return tuple(_HANDLERS)


def handler_for(config: Any) -> Handler:
    """The handler of ``type(config)``; ``TypeError`` listing the registered types otherwise."""
    handler = _HANDLERS.get(type(config))
    if handler is None:
        names = ", ".join(t.__name__ for t in _HANDLERS) or "none"
        raise TypeError(f"no transform is registered for config type {type(config).__name__}; "
                        f"registered config types: {names}.")
    return handler


def transform(model: nn.Module, config: Any, *, fqn: str, context: TransformContext | None = None) -> nn.Module:
    """Apply ``config`` to the submodule ``fqn`` of ``model`` in place; return the module now at ``fqn``.

    ``fqn=""`` targets ``model`` itself (a replacement of the root is returned, not installed).
    """
    handler = handler_for(config)
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"`model` must be an nn.Module, got {type(model).__name__}.")
    try:
        module = model.get_submodule(fqn) if fqn else model
    except AttributeError:
        raise InvalidArgumentError(f"`fqn` {fqn!r} names no submodule of {type(model).__name__}.") from None
    ctx = context if context is not None else TransformContext()
    ctx.root = model
    before = len(ctx.log)
    new = handler(module, config, fqn=fqn, context=ctx)
    if new is not module and fqn:
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    if len(ctx.log) == before:  # the handler did not say it skipped
        ctx.log.append((fqn, config, "applied"))
    logger.debug("%s %s: %s", ctx.log[-1][2], fqn or "<root>", config)
    return new


__all__ = ["Handler", "TransformContext", "handler_for", "register_transform", "registered_types", "transform"]
