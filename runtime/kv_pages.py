"""One layer's KV storage: a sink block plus fixed-size pages, under a byte budget, with eviction and offload.

Tokens ``0 .. pinned-1`` (the policy's attention sinks) go to a sink block of exactly that many tokens; every
later token goes to pages of ``page_tokens`` tokens, allocated one at a time as the sequence grows (so at most
one page is partly filled: the paged layout's only waste besides trimmed slots; where less than a page of
budget is left, a short page uses that tail). When a new page would take the
layer past its hot-tier budget, the oldest hot page is moved to the CPU (``offload``, while the cold budget
allows) or evicted (the policy picks which). A ``window`` additionally caps the recent tokens kept, trimmed
token by token from the front of the oldest page (the slots stay allocated until the page empties).

Bytes are charged to a :class:`~runtime.tensors.TensorStore` (when given) as pages come and go, under the label
``kv:layer<i>``, on the tier each page lives on.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.errors import BudgetExceededError, JalapenoError
from runtime.kv_policies import EvictionPolicy, PageInfo
from runtime.kv_quant import KVCodec
from runtime.sizes import format_bytes
from runtime.tensors import TensorStore


@dataclass(eq=False)
class Page:
    """A block of ``capacity`` token slots (keys, values and their scales) on one tier."""

    k: torch.Tensor  # (B, H, P, D) storage dtype
    v: torch.Tensor
    ks: torch.Tensor | None  # (B, H, P, 1) float16 scales, or None for float storage
    vs: torch.Tensor | None
    first_pos: int  # original position of slot 0
    tier: str
    nbytes: int
    cold: bool = False  # offloaded to host memory, outside the hot budget
    start: int = 0  # first live slot (slots before it were trimmed by the window)
    end: int = 0  # slots written

    @property
    def capacity(self) -> int:
        return self.k.shape[-2]

    @property
    def live(self) -> int:
        return self.end - self.start

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.k, self.v, self.ks, self.vs) if t is not None]


class RopeRotator:
    """Re-rotates post-RoPE keys by a position delta: ``R(a) R(b) = R(a + b)``, so a key cached at position
    ``p`` becomes the key it would have been at ``p + delta`` (rotate-half layout, as Llama/Mixtral use)."""

    def __init__(self, inv_freq: torch.Tensor) -> None:
        self.inv_freq = inv_freq.float()

    def rotate(self, k: torch.Tensor, delta: int) -> torch.Tensor:
        if delta == 0:
            return k
        freqs = float(delta) * self.inv_freq.to(k.device)
        emb = torch.cat((freqs, freqs))  # (D,)
        cos, sin = emb.cos(), emb.sin()
        kf = k.float()
        half = kf.shape[-1] // 2
        rotated = torch.cat((-kf[..., half:], kf[..., :half]), dim=-1)
        return (kf * cos + rotated * sin).to(k.dtype)


class LayerKV:
    """Paged KV storage of one attention layer. See the module docstring.

    Args:
        index: layer index (for labels and messages).
        codec: storage codec.
        policy: eviction policy.
        sinks: configured sinks (the policy decides how many are pinned).
        window: most recent (non-sink) tokens kept; ``None``: no cap besides the budget.
        page_tokens: tokens per page.
        budget_bytes: this layer's share of the hot-tier budget (``None``: unbounded).
        cold_budget_bytes: this layer's share of the offload budget (``None``: bounded by the store only).
        device: where attention runs (decoded tensors are returned there).
        tier: hot tier (``"gpu"``/``"cpu"``); pages live on ``device`` if it is on that tier, else on the host.
        offload: move cold pages to the host (tier ``"cpu"``) instead of evicting them.
        store: TensorStore to charge, or None.
        rotator: re-positions sinks when the policy asks for it (None: keep original positions).
    """

    def __init__(self, index: int, *, codec: KVCodec, policy: EvictionPolicy, sinks: int, window: int | None,
                 page_tokens: int, budget_bytes: int | None, cold_budget_bytes: int | None,
                 device: torch.device, tier: str, offload: bool, store: TensorStore | None,
                 rotator: RopeRotator | None) -> None:
        self.index = index
        self.codec = codec
        self.policy = policy
        self.pinned = policy.pinned_tokens(sinks)
        self.window = window
        self.page_tokens = page_tokens
        self.budget = budget_bytes
        self.cold_budget = cold_budget_bytes
        self.device = device
        self.tier = tier
        self.hot_device = device if (device.type == "cuda") == (tier == "gpu") else torch.device("cpu")
        self.offload = offload
        self.store = store
        self.rotator = rotator if policy.repositions_sinks else None
        self.label = f"kv:layer{index}"
        self.sink: Page | None = None
        self.pages: list[Page] = []  # oldest first; hot and offloaded pages interleave only by age
        self.seen = 0
        self.evicted = 0
        self.shape: tuple[int, int, int] | None = None  # (B, H, D)

    # ---------------------------------------------------------------- accounting
    @property
    def hot_bytes(self) -> int:
        return (self.sink.nbytes if self.sink else 0) + sum(p.nbytes for p in self.pages if not p.cold)

    @property
    def cold_bytes(self) -> int:
        return sum(p.nbytes for p in self.pages if p.cold)

    @property
    def kept(self) -> int:
        return (self.sink.end if self.sink else 0) + sum(p.live for p in self.pages)

    def allocated_slots(self) -> int:
        return (self.sink.capacity if self.sink else 0) + sum(p.capacity for p in self.pages)

    def positions(self) -> list[int]:
        """Original positions of the kept tokens, in cache order (sinks first)."""
        out = list(range(self.sink.end)) if self.sink else []
        for p in self.pages:
            out += range(p.first_pos + p.start, p.first_pos + p.end)
        return out

    def _token_bytes(self) -> int:
        assert self.shape is not None
        return self.codec.bytes_per_token(*self.shape)

    def _label(self, page: Page) -> str:
        return self.label + (":cold" if page.cold else "")

    def _alloc(self, tokens: int, first_pos: int) -> Page:
        nbytes = tokens * self._token_bytes()
        if self.store is not None:
            self.store.charge(self.tier, nbytes, label=self.label)
        b, h, d = self.shape  # type: ignore[misc]
        k = torch.empty((b, h, tokens, d), dtype=self.codec.store_dtype, device=self.hot_device)
        v = torch.empty_like(k)
        ks = torch.empty((b, h, tokens, 1), dtype=torch.float16, device=self.hot_device) if self.codec.scaled else None
        vs = torch.empty_like(ks) if ks is not None else None
        return Page(k, v, ks, vs, first_pos, self.tier, nbytes)

    def _free(self, page: Page) -> None:
        if self.store is not None:
            self.store.uncharge(page.tier, page.nbytes, label=self._label(page))

    # ---------------------------------------------------------------- eviction and offload
    def _drop(self, page: Page) -> None:
        self.pages.remove(page)
        self.evicted += page.live
        self._free(page)

    def _evict_among(self, candidates: list[Page]) -> None:
        infos = [PageInfo(self.pages.index(p), p.first_pos + p.start, p.live, "cpu" if p.cold else p.tier)
                 for p in candidates]
        self._drop(self.pages[self.policy.victim(infos)])

    def _try_offload(self, page: Page) -> bool:
        """Move ``page`` to host memory (tier ``"cpu"``, label ``kv:layer<i>:cold``), evicting older cold pages
        while the cold budget (or the store's ``cpu`` budget) is full; False if it cannot hold even this page."""
        while True:
            cold = [p for p in self.pages if p.cold]
            if self.cold_budget is not None and self.cold_bytes + page.nbytes > self.cold_budget:
                if not cold:
                    return False
                self._evict_among(cold)
                continue
            try:
                if self.store is not None:
                    self.store.charge("cpu", page.nbytes, label=self.label + ":cold")
            except BudgetExceededError:
                if not cold:
                    return False
                self._evict_among(cold)
                continue
            break
        if self.store is not None:
            self.store.uncharge(page.tier, page.nbytes, label=self.label)
        pin = self.hot_device.type == "cuda"  # page-locked, so the copy back for attention is a DMA
        for name in ("k", "v", "ks", "vs"):
            t = getattr(page, name)
            if t is not None:
                host = torch.empty(t.shape, dtype=t.dtype, pin_memory=pin)
                host.copy_(t)
                setattr(page, name, host)
        page.cold, page.tier = True, "cpu"
        return True

    def _make_room(self, nbytes: int) -> None:
        """Free hot bytes until ``nbytes`` more fit the budget: offload the oldest hot page, else evict."""
        if self.budget is None:
            return
        while self.hot_bytes + nbytes > self.budget:
            hot = [p for p in self.pages if not p.cold]
            if not hot:
                raise JalapenoError(
                    f"KV budget for layer {self.index} ({format_bytes(self.budget)}) cannot hold its sinks and one "
                    f"page ({format_bytes(self.hot_bytes + nbytes)}); raise `budget_bytes`, or lower `page_tokens` "
                    f"or `sinks`.")
            if self.offload and self._try_offload(hot[0]):
                continue
            self._evict_among(hot)

    def _next_page_tokens(self) -> int:
        """Size of the next page: ``page_tokens``, or a short page filling the budget's tail when less than a
        page is left (a budget that is not a page multiple would otherwise leave up to a page unusable)."""
        if self.budget is None:
            return self.page_tokens
        tb = self._token_bytes()
        if self.budget - self.hot_bytes < tb:
            self._make_room(tb)  # one eviction (or offload) frees at least a page's worth of what it held
        return min((self.budget - self.hot_bytes) // tb, self.page_tokens)

    def _trim_window(self) -> None:
        if self.window is None:
            return
        excess = sum(p.live for p in self.pages) - self.window
        while excess > 0 and self.pages:
            page = self.pages[0]
            n = min(excess, page.live)
            page.start += n
            self.evicted += n
            excess -= n
            if page.start == page.capacity:  # fully written and fully trimmed: give its bytes back
                self.pages.pop(0)
                self._free(page)

    # ---------------------------------------------------------------- the two operations
    def append(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store new states ``(B, H, T, D)`` at positions ``seen .. seen+T-1``, evicting as the policy says."""
        if self.shape is None:
            b, h, _, d = key.shape
            self.shape = (b, h, d)
            if self.pinned:
                self._make_room(self.pinned * self._token_bytes() + self.page_tokens * self._token_bytes())
                self.sink = self._alloc(self.pinned, 0)
        qk, sk = self.codec.encode(key)
        qv, sv = self.codec.encode(value)
        total, i = key.shape[-2], 0
        while i < total:
            pos = self.seen + i
            if pos < self.pinned:
                page, n = self.sink, min(total - i, self.pinned - pos)
            else:
                page = self.pages[-1] if self.pages and self.pages[-1].end < self.pages[-1].capacity else None
                if page is None:
                    page = self._alloc(self._next_page_tokens(), pos)
                    self.pages.append(page)
                n = min(total - i, page.capacity - page.end)
            assert page is not None
            s = slice(page.end, page.end + n)
            page.k[:, :, s].copy_(qk[:, :, i:i + n])
            page.v[:, :, s].copy_(qv[:, :, i:i + n])
            if sk is not None:
                page.ks[:, :, s].copy_(sk[:, :, i:i + n])  # type: ignore[index]
                page.vs[:, :, s].copy_(sv[:, :, i:i + n])  # type: ignore[index]
            page.end += n
            i += n
            if pos >= self.pinned:
                self._trim_window()
        self.seen += total

    def gather(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Kept keys and values ``(B, H, kept, D)`` in the compute dtype on the execution device (None if empty)."""
        parts = [p for p in self.pages if p.live]
        out_k: list[torch.Tensor] = []
        out_v: list[torch.Tensor] = []
        if self.sink is not None and self.sink.end:
            s = self.sink
            k = self.codec.decode(s.k[:, :, :s.end], None if s.ks is None else s.ks[:, :, :s.end]).to(self.device)
            v = self.codec.decode(s.v[:, :, :s.end], None if s.vs is None else s.vs[:, :, :s.end]).to(self.device)
            if self.rotator is not None and parts:
                # StreamingLLM positions: the sinks sit just before the first kept window token.
                k = self.rotator.rotate(k, parts[0].first_pos + parts[0].start - s.end)
            out_k.append(k)
            out_v.append(v)
        if parts:
            def cat(name: str) -> torch.Tensor:
                pieces = [getattr(p, name)[:, :, p.start:p.end].to(self.device, non_blocking=True) for p in parts]
                return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-2)

            ks = cat("ks") if self.codec.scaled else None
            vs = cat("vs") if self.codec.scaled else None
            out_k.append(self.codec.decode(cat("k"), ks))
            out_v.append(self.codec.decode(cat("v"), vs))
        if not out_k:
            return None
        if len(out_k) == 1:
            return out_k[0], out_v[0]
        return torch.cat(out_k, dim=-2), torch.cat(out_v, dim=-2)

    def reorder(self, beam_idx: torch.Tensor) -> None:
        """Beam search: reorder the batch rows of every stored tensor."""
        for page in ([self.sink] if self.sink else []) + self.pages:
            for name in ("k", "v", "ks", "vs"):
                t = getattr(page, name)
                if t is not None:
                    setattr(page, name, t.index_select(0, beam_idx.to(t.device)))

    def clear(self) -> None:
        """Drop everything and give every byte back."""
        for page in ([self.sink] if self.sink else []) + self.pages:
            self._free(page)
        self.sink, self.pages = None, []
        self.seen = self.evicted = 0
        self.shape = None
