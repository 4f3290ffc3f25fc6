"""Eviction policies of the KV cache: which tokens survive when the cache is over its budget or window.

A policy is a small object chosen by name from a registry (``register_policy`` adds one). The cache asks it
three things: how many leading tokens are pinned (attention sinks, never evicted), whether those sinks are
re-positioned next to the recent window (StreamingLLM), and which page to drop when a page must go.
Attention scores never reach a ``transformers`` Cache (attention runs after ``update``), so score-based policies
(H2O and the like) cannot be written against this interface; position-based ones can.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from runtime.errors import JalapenoError


@dataclass(frozen=True)
class PageInfo:
    """What a policy sees of one evictable page: its place in the sequence and where it lives."""

    index: int  # position in the layer's page list (0 = oldest)
    first_position: int  # original position of its oldest live token
    tokens: int  # live tokens
    tier: str  # "gpu" or "cpu"


class EvictionPolicy:
    """Base policy: no sinks, original positions, evict the oldest page first (FIFO)."""

    name = "base"
    #: Rotate the sinks' keys so they sit just before the recent window (StreamingLLM's in-cache positions).
    repositions_sinks = False

    def pinned_tokens(self, sinks: int) -> int:
        """Leading tokens this policy never evicts, given the configured ``sinks``."""
        return 0

    def victim(self, pages: Sequence[PageInfo]) -> int:
        """Index (``PageInfo.index``) of the page to drop among ``pages`` (non-empty, oldest first)."""
        return pages[0].index


class SinksWindowPolicy(EvictionPolicy):
    """StreamingLLM: keep the first ``sinks`` tokens and the most recent ones; the sinks' keys are re-rotated
    so that, for RoPE, they sit right before the window (relative distances stay within what was trained)."""

    name = "sinks-window"
    repositions_sinks = True

    def pinned_tokens(self, sinks: int) -> int:
        return sinks


class SinksWindowKeepPositionsPolicy(SinksWindowPolicy):
    """Sinks + window, but every key keeps its original position (the sinks drift ever further from the
    query): the ablation that shows what re-positioning buys."""

    name = "sinks-window-keep-positions"
    repositions_sinks = False


class TruncatePolicy(EvictionPolicy):
    """Plain truncation (window attention): drop the oldest tokens, no sinks. The StreamingLLM baseline."""

    name = "truncate"


_REGISTRY: dict[str, Callable[[], EvictionPolicy]] = {}


def register_policy(name: str, factory: Callable[[], EvictionPolicy]) -> None:
    """Make ``factory()`` available as ``KVCacheConfig(policy=name)``."""
    if name in _REGISTRY:
        raise JalapenoError(f"KV eviction policy {name!r} is already registered.")
    _REGISTRY[name] = factory


def known_policies() -> list[str]:
    return sorted(_REGISTRY)


def get_policy(name: str) -> EvictionPolicy:
    """A fresh policy object for ``name``; an unknown name raises, listing the known ones."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise JalapenoError(
            f"`policy` {name!r} is not a known KV eviction policy; use one of {', '.join(known_policies())} "
            f"(or register_policy() your own).") from None
    return factory()


for _cls in (SinksWindowPolicy, SinksWindowKeepPositionsPolicy, TruncatePolicy):
    register_policy(_cls.name, _cls)
