"""Weight bytes under a precision, and a plan's resident bytes per memory tier — the one byte formula.

``weight_bytes`` matches the runtime's stored layouts exactly (``runtime/kernels/formats.py`` and
``QuantizedLinear``'s buffers), so a memory budget checked here is the budget the runtime charges:

* float32 / bfloat16 / float16: ``numel * itemsize`` (weight and bias cast alike);
* int8 and int8-dynamic: int8 codes (N, K) + float32 per-channel ``scales`` (N,);
* int4: uint8 (N, Kp/2) + float32 ``scales`` and ``offsets`` (N, Kp/g) each, Kp = K rounded up to the group;
* fp8: float8_e4m3fn (N, K) + float32 ``scales`` (N,);
* a quantized layer keeps its bias in float32 (``QuantizedLinear.from_linear``).

``plan_memory`` places those bytes the way ``runtime.Session`` does (``runtime/session.py``,
``runtime/streaming.py``): a resident block's tensors on its execution tier; a streamed block's tensors
on its home tier (each tensor 256-byte aligned in a memory tier's arena, exact on disk), except
vectors-only modules (norms: every tensor <= 1-D) which stay resident on the execution tier; and, per
execution device that runs streamed units, ``lookahead + 1`` staging slots the size of its largest streamed unit (each tensor 256-byte aligned, as ``TensorStore.group_nbytes`` does).
Units are modules (``granularity="module"``, the runtime default) unless a block's layout is ``packed``,
which streams the whole block, vectors included, as one unit. Kernels that keep a packed copy of a *resident* weight
(fbgemm for int8-dynamic; tinygemm for CUDA int4 with kernel auto; torch's CPU int4 kernel) add it on the execution tier, as the
streamer charges it (``QuantizedLinear.prepared_nbytes``). Fusion
decisions change the tensors as ``transforms/fuse.py`` does (a folded BatchNorm vanishes and its conv gains
a bias; concatenated q/k/v or gate/up linears are one unit). Modules outside the blocks are resident on
the profile's default unit. A DLA shares the board's DRAM; its bytes are counted on the "gpu" tier (the
integrated GPU's memory, the same DRAM).

Session decisions (``Plan.session``, or the session variables of the space) add what the runtime's session
charges besides the weights:

* **KV cache** (when any KV knob is decided: the session then builds the runtime's paged cache, charged to
  its store; without one Hugging Face's own cache is used and, as before, not counted). The bytes after
  one decode step at ``context`` cached positions (``context + 1`` tokens, ``batch`` sequences), peak over
  prefill and that step, on the KV tier (``kv_tier``, else block 0's execution tier). Per layer and token
  ``2 x batch x kv_heads x (head_dim x itemsize + scale)``, itemsize the KV dtype (model dtype for "float",
  1 for int8/fp8), scale 2 bytes (a float16 per head and token) for int8/fp8 (``runtime.kv_quant``). Pages
  are simulated as ``runtime.kv_pages.LayerKV`` allocates them (a sink block of 4 tokens, pages of 16
  tokens, short pages at the budget's tail, oldest page evicted past the budget, window trimmed token by
  token, a page freed when fully trimmed) for one layer, times the layers (every layer holds the same
  tokens and an even share of the budget). ``kv_budget`` as a share is of ``layers x (context + 1) x
  token bytes`` at the chosen precision, raised where needed to the floor the runtime requires (sinks and one
  page per layer; :func:`kv_budget_bytes`, which ``transforms.session_from_plan`` uses too).
* **Experts streamed** (``prefetch`` other than "none" on a mixture-of-experts model): the experts leaves
  leave their blocks; every expert's (gate_up, down) slices are homed on the slower tier (disk next to a
  CPU, host memory next to a GPU; aligned per tensor on a memory tier, exact on disk) and an expert cache
  of ``max(experts per layer, round(0.25 x all experts))`` slots (``ExpertConfig.capacity`` default) is
  allocated on the execution tier (``runtime.experts.ExpertCache``).
* **Prefetch depth** sets the streaming lookahead, i.e. the staging slots (``lookahead + 1``) above.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from autosurgeon import precisions as precision_table
from autosurgeon.budget import MemoryBudget
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.knobs import KV_KNOBS, SESSION_UNIT, parse_kv_budget, placement_kind
from autosurgeon.plan import Plan

if TYPE_CHECKING:  # pragma: no cover
    from autosurgeon.plan import Plan
    from autosurgeon.space.search_space import SearchSpace

FLOAT_ITEMSIZE = precision_table.FLOAT_ITEMSIZE
_ALIGN = 256  # runtime.tensors.ALIGN
_TINYGEMM_K_TILE = 128  # runtime.kernels.cuda: tinygemm needs Kp % 128 == 0 and N % 8 == 0
TIERS = ("gpu", "cpu", "disk")
DEFAULT_KV_CONTEXT = 32  # cost_profiled.Workload's default context (positions cached at a decode step)
# runtime.kvcache.KVCacheConfig defaults the plan does not choose (sinks, page size) and runtime.experts'
# default expert cache share; test_footprint checks them against the runtime's dataclasses.
KV_SINKS, KV_PAGE_TOKENS, EXPERT_CAPACITY = 4, 16, 0.25
_MEMO_LIMIT = 20_000  # FootprintTracker's per-block memo: cleared at this many configurations (a few KB each)


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def tensor_bytes(numel: int, out_features: int, precision: str, group_size: int = 128, *,
                 bias: bool = False) -> list[int]:
    """Bytes of each stored tensor of one (out_features, numel/out_features) weight under ``precision``.

    Order: weight (codes), scales, offsets (int4), bias. See the module docstring for the layouts.
    """
    if numel <= 0 or out_features <= 0 or numel % out_features:
        raise InvalidArgumentError(
            f"`numel` ({numel}) must be a positive multiple of `out_features` ({out_features}).")
    n, k = out_features, numel // out_features
    if precision in FLOAT_ITEMSIZE:
        size = FLOAT_ITEMSIZE[precision]
        return [numel * size] + ([n * size] if bias else [])
    row = precision_table.TABLE.get(precision)
    if row is not None and row.quantized and not row.grouped:  # one byte codes + a float32 scale per channel
        parts = [n * k, 4 * n]
    elif row is not None and row.grouped:  # 4-bit codes, float32 scale and offset per group
        if not isinstance(group_size, int) or group_size <= 0 or group_size % 32:
            raise InvalidArgumentError(f"`group_size` must be a positive multiple of 32 for int4, got {group_size!r}.")
        kp = -(-k // group_size) * group_size
        groups = kp // group_size
        parts = [n * kp // 2, 4 * n * groups, 4 * n * groups]
    else:
        raise InvalidArgumentError(
            f"`precision` must be one of {', '.join(precision_table.NAMES)}; got {precision!r}.")
    return parts + ([4 * n] if bias else [])


def weight_bytes(numel: int, out_features: int, precision: str, group_size: int = 128, *,
                 bias: bool = False) -> int:
    """Bytes a weight of ``numel`` elements and ``out_features`` rows takes stored in ``precision``.

    Args:
        numel: elements of the float weight (N * K; for a conv N * Cin * kh * kw).
        out_features: N (rows; per-channel scales are one per row).
        precision: a precision from ``autosurgeon.knobs.PRECISIONS``.
        group_size: int4 group along K (ignored otherwise).
        bias: include an (N,) bias (float32 for quantized layers, the float dtype otherwise).
    """
    return sum(tensor_bytes(numel, out_features, precision, group_size, bias=bias))


def packed_copy_bytes(numel: int, out_features: int, precision: str, group_size: int = 128, *,
                      kernel: str = "auto", exec_kind: str = "cpu") -> int:
    """Bytes of the packed copy a kernel keeps next to a resident weight (0 for kernels that read it as is).

    fbgemm (int8-dynamic) counts as the int8 weight size, as ``QuantizedLinear.prepared_nbytes`` does;
    tinygemm (CUDA int4, the default kernel there) holds the repacked codes (N * Kp / 2) and a bfloat16
    (groups, N, 2) scale/zero table, when the shape fits it (N % 8 == 0, Kp % 128 == 0); torch's CPU int4
    kernel (``torch-int4pack-cpu``, never the default) the codes and a float32 table when N % 16 == 0.
    """
    n, k = out_features, numel // out_features
    if precision == "int8-dynamic" or kernel == "int8-dynamic":
        return n * k
    kp = -(-k // group_size) * group_size
    if precision == "int4" and exec_kind == "gpu" and kernel in ("auto", "cuda-int4-tinygemm"):
        if n % 8 == 0 and kp % _TINYGEMM_K_TILE == 0 and group_size in (32, 64, 128, 256):
            return n * kp // 2 + 4 * n * (kp // group_size)  # codes + bfloat16 (groups, N, 2)
    if precision == "int4" and exec_kind == "cpu" and kernel == "torch-int4pack-cpu" and n % 16 == 0:
        return n * kp // 2 + 8 * n * (kp // group_size)  # codes + float32 (groups, N, 2)
    return 0


def plan_memory(space: SearchSpace, plan: Plan | Any, *, lookahead: int = 2, batch: int = 1,
                context: int = DEFAULT_KV_CONTEXT) -> dict[str, int]:
    """Resident bytes per tier (``gpu``, ``cpu``, ``disk``) of the model under ``plan`` (see module docstring).

    Args:
        space: the SearchSpace of the model and device (holds every unit's shapes).
        plan: a :class:`~autosurgeon.plan.Plan` or an encoded vector of ``space``.
        lookahead: the runtime's streaming lookahead (``SessionSpec.lookahead``, default 2); a
            ``prefetch_depth`` session decision overrides it.
        batch, context: the workload the KV cache is counted at (sequences; positions cached at a decode step).
    """
    return memory_breakdown(space, plan, lookahead=lookahead, batch=batch, context=context)["tiers"]


def fastest_tier(space: SearchSpace) -> str:
    """The tier a bare memory budget limits: ``gpu`` where the model executes on a GPU (or DLA), else ``cpu``."""
    return "gpu" if space.default_placement.partition("<-")[0] in ("gpu", "dla") else "cpu"


def resolve_budget(space: SearchSpace | None, budget: Any, *, lookahead: int = 2) -> dict[str, int]:
    """``{tier: bytes}`` of a memory budget (``MemoryBudget``, its text or a tier mapping) for the model of
    ``space``: shares are of the unmodified model's bytes (``plan_memory`` of the default vector, all tiers),
    a bare entry limits :func:`fastest_tier`."""

    parsed = MemoryBudget.parse(budget, argument="budgets")
    if not parsed:
        return {}
    if space is None:  # absolute per-tier sizes need no model
        return parsed.resolve()
    reference = sum(plan_memory(space, space.default_vector(), lookahead=lookahead).values())
    return parsed.resolve(reference_bytes=reference, fastest=fastest_tier(space))


def memory_breakdown(space: SearchSpace, plan: Plan | Any, *, lookahead: int = 2, batch: int = 1,
                     context: int = DEFAULT_KV_CONTEXT, session: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``plan_memory`` with detail: ``tiers``, ``by_unit`` {tier: {unit: bytes}}, ``staging`` {tier: bytes},
    ``kv`` (the KV cache's bytes and settings, or None) and ``experts`` (expert streaming, or None).

    A Plan's own session decisions are what count (what ``apply_plan`` will build), whether or not ``space``
    has session variables and whether or not its values are choices of them (an absolute ``"64MiB"`` budget);
    a vector's are its session variables' values, unless ``session`` gives them.
    """
    from dataclasses import replace


    if isinstance(plan, Plan):
        return FootprintTracker(space, space.encode(replace(plan, session={})), lookahead=lookahead, batch=batch,
                                context=context, session=plan.session).breakdown()
    return FootprintTracker(space, space.check_vector(plan), lookahead=lookahead, batch=batch,
                            context=context, session=session).breakdown()


# ---------------------------------------------------------------------------------------------- KV cache
def kv_token_bytes(kv_heads: int, head_dim: int, precision: str, dtype: str, *, batch: int = 1) -> int:
    """Stored bytes of one token's key and value in one layer (``runtime.kv_quant.KVCodec.bytes_per_token``)."""
    if precision == "float":
        itemsize, scale = FLOAT_ITEMSIZE.get(dtype, 4), 0
    elif precision in ("int8", "fp8"):
        itemsize, scale = 1, 2
    else:
        raise InvalidArgumentError(f"`kv_precision` must be one of float, int8, fp8; got {precision!r}.")
    return 2 * batch * kv_heads * (head_dim * itemsize + scale)


def kv_budget_bytes(value: Any, *, layers: int, token_bytes: int, tokens: int, sinks: int = KV_SINKS,
                    page_tokens: int = KV_PAGE_TOKENS) -> int | None:
    """The runtime's ``KVCacheConfig.budget_bytes`` for a plan's ``kv_budget`` (None: unbounded).

    A share is of ``layers x tokens x token_bytes`` (the full context stored at the chosen precision). Any
    budget is raised to the floor the runtime needs (each layer's sinks and one page) rather than failing
    at the first token, and rounded down to a multiple of ``layers`` (the runtime splits it evenly).
    """

    kind, amount = parse_kv_budget(value, where="kv_budget")
    if kind == "none":
        return None
    want = int(amount * layers * tokens * token_bytes) if kind == "share" else int(amount)  # type: ignore[operator]
    floor = layers * (sinks + page_tokens) * token_bytes
    return max(want, floor) // layers * layers


@lru_cache(maxsize=4096)
def kv_layer_bytes(prefill: int, decode: int, token_bytes: int, budget: int | None, window: int | None, *,
                   sinks: int = KV_SINKS, page_tokens: int = KV_PAGE_TOKENS) -> tuple[int, int, int, int, int]:
    """``(peak bytes, final bytes, evicted tokens, kept tokens, pages)`` of ONE layer after a prefill of ``prefill`` tokens and
    ``decode`` one-token steps, as ``runtime.kv_pages.LayerKV`` allocates them (policy "sinks-window",
    no offload). ``budget`` is this layer's share."""
    pages: list[list[int]] = []  # [capacity, start, end], oldest first
    sink = 0  # sink block capacity in tokens (allocated at the first append)
    state = {"hot": 0, "peak": 0, "evicted": 0, "seen": 0}

    def alloc(tokens: int) -> None:
        state["hot"] += tokens * token_bytes
        state["peak"] = max(state["peak"], state["hot"])

    def make_room(nbytes: int) -> None:
        if budget is None:
            return
        while state["hot"] + nbytes > budget:
            if not pages:
                raise InvalidArgumentError(
                    f"KV budget {budget} B per layer cannot hold the sinks and one page "
                    f"({state['hot'] + nbytes} B); raise `kv_budget`.")
            cap, start, end = pages.pop(0)
            state["evicted"] += end - start
            state["hot"] -= cap * token_bytes

    def next_page_tokens() -> int:
        if budget is None:
            return page_tokens
        if budget - state["hot"] < token_bytes:
            make_room(token_bytes)
        return min((budget - state["hot"]) // token_bytes, page_tokens)

    def trim() -> None:
        if window is None:
            return
        excess = sum(e - s for _, s, e in pages) - window
        while excess > 0 and pages:
            page = pages[0]
            n = min(excess, page[2] - page[1])
            page[1] += n
            state["evicted"] += n
            excess -= n
            if page[1] == page[0]:
                pages.pop(0)
                state["hot"] -= page[0] * token_bytes

    def append(total: int) -> None:
        nonlocal sink
        if state["seen"] == 0 and sinks:
            make_room((sinks + page_tokens) * token_bytes)
            sink = sinks
            alloc(sinks)
        i = 0
        while i < total:
            pos = state["seen"] + i
            if pos < sinks:
                n = min(total - i, sinks - pos)
            else:
                if not pages or pages[-1][2] >= pages[-1][0]:
                    cap = next_page_tokens()
                    alloc(cap)
                    pages.append([cap, 0, 0])
                page = pages[-1]
                n = min(total - i, page[0] - page[2])
                page[2] += n
            i += n
            if pos >= sinks:
                trim()
        state["seen"] += total

    if prefill > 0:
        append(prefill)
    for _ in range(decode):
        append(1)
    kept = min(state["seen"], sinks) + sum(e - s for _, s, e in pages)
    return state["peak"], state["hot"], state["evicted"], kept, len(pages)


def session_values(space: SearchSpace, x: Any) -> dict[str, Any]:
    """Session decisions of vector ``x``: the values of the space's session variables."""

    return {v.knob: v.choices[int(x[i])] for i, v in enumerate(space.variables) if v.name == SESSION_UNIT}


def kv_footprint(space: SearchSpace, values: Mapping[tuple[str, str], Any], session: Mapping[str, Any], *,
                 batch: int, context: int) -> dict[str, Any] | None:
    """The KV cache of the session (module docstring): tier, bytes (peak, final), settings; None without one."""

    record = getattr(space, "session", None)
    if not any(k in session for k in KV_KNOBS):
        return None
    if record is None or not record.has_kv:
        why = "the space was saved before session records existed" if record is None else record.kv_reason
        raise InvalidArgumentError(f"the plan decides the KV cache ({', '.join(k for k in KV_KNOBS if k in session)}) "
                                   f"but its KV bytes cannot be counted: {why}; drop the kv_* knobs from the plan's session"
                                   + (" (or rebuild the SearchSpace from the model)." if record is None else "."))
    precision = session.get("kv_precision", "float")
    dtype = record.dtype
    if record.first_leaf is not None and values.get((record.first_leaf, "precision")) in FLOAT_ITEMSIZE:
        dtype = values[(record.first_leaf, "precision")]  # the runtime builds the cache in this dtype
    tb = kv_token_bytes(record.kv_heads, record.head_dim, precision, dtype, batch=batch)
    tokens = context + 1
    budget = kv_budget_bytes(session.get("kv_budget", "none"), layers=record.kv_layers, token_bytes=tb,
                             tokens=tokens)
    share = None if budget is None else budget // record.kv_layers
    peak, final, evicted, kept, pages = kv_layer_bytes(context, 1, tb, share, session.get("kv_window"))
    first = next((b for b in space.blocks if b.is_block and b.runtime_block), None)
    placement = values.get((first.name, "placement"), space.default_placement) if first else space.default_placement
    exec_kind = placement.partition("<-")[0]
    tier = session.get("kv_tier") or ("gpu" if exec_kind in ("gpu", "dla") else "cpu")
    return {"tier": tier, "peak_bytes": peak * record.kv_layers, "bytes": final * record.kv_layers,
            "budget_bytes": budget, "token_bytes": tb * record.kv_layers, "evicted_tokens": evicted, "kept_tokens": kept, "pages": pages * record.kv_layers,
            "precision": precision, "dtype": dtype, "tokens": tokens, "batch": batch}


def expert_footprint(space: SearchSpace, values: Mapping[tuple[str, str], Any],
                     session: Mapping[str, Any]) -> dict[str, Any] | None:
    """Expert streaming's bytes (module docstring): home tier, home bytes, cache tier and bytes; None if off."""
    record = getattr(space, "session", None)
    if session.get("prefetch", "none") == "none" or record is None or not record.moe:
        return None
    first = next((b for b in space.blocks if b.is_block and b.runtime_block), None)
    placement = values.get((first.name, "placement"), space.default_placement) if first else space.default_placement
    exec_tier = "gpu" if placement.partition("<-")[0] in ("gpu", "dla") else "cpu"
    home = "disk" if exec_tier == "cpu" else "cpu"
    layers, per_layer = len(record.experts), record.num_experts
    total = layers * per_layer
    expert = record.expert_tensor_bytes
    home_bytes = total * (sum(expert) if home == "disk" else sum(_aligned(b) for b in expert))
    slots = min(total, max(per_layer, int(round(EXPERT_CAPACITY * total))))
    return {"home": home, "home_bytes": home_bytes, "tier": exec_tier, "cache_bytes": slots * sum(expert),
            "slots": slots, "prefetch": session["prefetch"]}


class FootprintTracker:
    """Bytes per tier of a vector that changes one entry at a time, recomputing only the affected block.

    Every decision touches one block-level unit (a leaf's precision its block, a fusion its members'
    block), and the tiers are sums over blocks plus staging (a max over blocks), so a greedy search over
    thousands of variables (``plan_check.smallest_footprint``) stays fast on 70B-parameter shapes.
    """

    def __init__(self, space: SearchSpace, x: Any, *, lookahead: int = 2, batch: int = 1,
                 context: int = DEFAULT_KV_CONTEXT, session: Mapping[str, Any] | None = None) -> None:
        if lookahead < 0:
            raise InvalidArgumentError(f"`lookahead` must be >= 0, got {lookahead}.")
        if batch < 1 or context < 1:
            raise InvalidArgumentError(f"`batch` and `context` must be >= 1, got {batch} and {context}.")
        self.space, self.base_lookahead, self.batch, self.context = space, lookahead, batch, context
        self.x = space.check_vector(x).copy()
        self.values = space.values(self.x)
        # A plan's session is taken as written; a vector's comes from its session variables.
        self.session = dict(session) if session is not None else session_values(space, self.x)
        record = getattr(space, "session", None)
        self.expert_leaves = set(record.experts) if record is not None else set()
        index = {b.name: k for k, b in enumerate(space.blocks)}
        block_of_leaf = {leaf.name: index[leaf.block] for leaf in space.leaves.values() if leaf.block in index}
        groups = {g.name: g for g in space.units.groups}
        # Blocks each variable touches: a fusion touches every member's block (a conv and its BatchNorm
        # may sit in different block-level units, e.g. a stem outside the blocks).
        self.blocks_of_var: list[tuple[int, ...]] = []
        for v in space.variables:
            if v.knob == "fusion":
                self.blocks_of_var.append(tuple(sorted({block_of_leaf[m] for m in groups[v.name].members})))
            else:
                k = index[v.name] if v.name in index else block_of_leaf.get(v.name)
                self.blocks_of_var.append(() if k is None else (k,))
        expert_blocks = tuple(sorted({block_of_leaf[n] for n in self.expert_leaves if n in block_of_leaf}))
        for i, v in enumerate(space.variables):
            if v.knob == "prefetch":  # streaming experts takes them out of their blocks
                self.blocks_of_var[i] = expert_blocks
        self.fused = _fusions(space.units.groups, self.values)
        # A block's bytes depend only on the variables touching it (and on whether experts stream): memoised
        # per (block, those choices), so a tracker that flips entries back and forth (the env's budget shield
        # trying each choice of a unit) recomputes each block configuration once. Bounded; held by the tracker.
        touching: list[list[int]] = [[] for _ in space.blocks]
        for i, ks in enumerate(self.blocks_of_var):
            for k in ks:
                touching[k].append(i)
        self._touching = [np.asarray(t, dtype=np.int64) for t in touching]
        self._memo: dict[tuple[int, bool, bytes], Any] = {}
        self.usage = [self._block_memo(k) for k in range(len(space.blocks))]
        self._session_part = self._session_bytes()

    @property
    def lookahead(self) -> int:
        """The streaming lookahead: the plan's ``prefetch_depth`` where it decides one, else the given one."""
        depth = self.session.get("prefetch_depth")
        return self.base_lookahead if depth is None else int(depth)

    def set(self, i: int, j: int) -> None:
        """Give variable ``i`` choice ``j`` and recompute the blocks it touches."""
        v = self.space.variables[i]
        self.x[i] = j
        self.values[(v.name, v.knob)] = v.choices[j]
        if v.knob == "fusion":
            self.fused = _fusions(self.space.units.groups, self.values)
        if v.kind == "session":
            self.session[v.knob] = v.choices[j]
        for k in self.blocks_of_var[i]:
            self.usage[k] = self._block_memo(k)
        if v.kind == "session" or v.knob in ("placement", "precision"):  # KV tier and dtype follow these
            self._session_part = self._session_bytes()

    def _session_bytes(self) -> tuple[dict[str, int], dict[str, dict[str, int]], Any, Any]:
        """(bytes per tier, {tier: {label: bytes}}, kv detail, experts detail) of the session's own holdings."""
        kv = kv_footprint(self.space, self.values, self.session, batch=self.batch, context=self.context)
        experts = expert_footprint(self.space, self.values, self.session)
        by_unit: dict[str, dict[str, int]] = defaultdict(dict)
        if kv is not None:
            _add(by_unit, kv["tier"], "kv_cache", kv["peak_bytes"])
        if experts is not None:
            _add(by_unit, experts["home"], "experts", experts["home_bytes"])
            _add(by_unit, experts["tier"], "expert_cache", experts["cache_bytes"])
        totals = {tier: sum(names.values()) for tier, names in by_unit.items()}
        return totals, by_unit, kv, experts

    def tiers(self) -> dict[str, int]:
        out = dict.fromkeys(TIERS, 0)
        slots: dict[str, int] = defaultdict(int)
        for totals, _, slot in self.usage:
            for tier, n in totals.items():
                out[tier] += n
            for tier, n in slot.items():
                slots[tier] = max(slots[tier], n)
        lookahead = self.lookahead
        for tier, n in slots.items():
            out[tier] += (lookahead + 1) * n
        for tier, n in self._session_part[0].items():
            out[tier] += n
        return out

    def breakdown(self) -> dict[str, Any]:
        by_unit: dict[str, dict[str, int]] = defaultdict(dict)
        slots: dict[str, int] = defaultdict(int)
        for _, units, slot in self.usage:
            for tier, names in units.items():
                for name, n in names.items():
                    _add(by_unit, tier, name, n)
            for tier, n in slot.items():
                slots[tier] = max(slots[tier], n)
        for tier, names in self._session_part[1].items():
            for name, n in names.items():
                _add(by_unit, tier, name, n)
        staging = {tier: (self.lookahead + 1) * n for tier, n in slots.items() if n}
        return {"tiers": self.tiers(), "by_unit": {t: dict(v) for t, v in by_unit.items()}, "staging": staging,
                "kv": self._session_part[2], "experts": self._session_part[3]}

    def _block_memo(self, k: int) -> tuple[dict[str, int], dict[str, dict[str, int]], dict[str, int]]:
        """``_block(k)``, memoised on the choices of the variables touching block ``k`` (``__init__``)."""
        key = (k, self.session.get("prefetch", "none") != "none", self.x[self._touching[k]].tobytes())
        hit = self._memo.get(key)
        if hit is None:
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            hit = self._memo[key] = self._block(k)
        return hit

    def _block(self, k: int) -> tuple[dict[str, int], dict[str, dict[str, int]], dict[str, int]]:
        """(bytes per tier, {tier: {unit: bytes}}, {exec tier: largest streamed unit}) of block ``k``."""
        space, values = self.space, self.values
        block = space.blocks[k]
        default_kind = space.default_placement
        placement = values.get((block.name, "placement"), default_kind) if block.is_block else default_kind
        exec_kind, home = placement_kind(placement), placement.partition("<-")[2]  # "gpu:1<-cpu": gpu, cpu
        exec_tier = "gpu" if exec_kind in ("gpu", "dla") else "cpu"
        home_tier = home or exec_tier
        packed = values.get((block.name, "layout")) == "packed" and home_tier != exec_tier
        removed, with_bias, merged = self.fused
        by_unit: dict[str, dict[str, int]] = defaultdict(dict)
        slot = 0
        experts_streamed = self.session.get("prefetch", "none") != "none"
        for leaf_name in block.leaves:
            if leaf_name in removed or (experts_streamed and leaf_name in self.expert_leaves):
                continue  # a streamed experts leaf is the session's (homed per expert, see _session_bytes)
            leaf = space.leaves[leaf_name]
            if leaf_name in merged:
                group = merged[leaf_name]
                leaf = _concatenated(leaf, [space.leaves[m] for m in group.members])
                leaf_name = group.name
            parts, resident_parts, extra = _leaf_parts(leaf, values, exec_kind, add_bias=leaf_name in with_bias)
            if packed:  # the whole block is one streamed unit: its vectors travel with it
                parts, resident_parts = parts + resident_parts, []
            if home_tier == exec_tier:
                _add(by_unit, exec_tier, leaf_name, sum(parts) + sum(resident_parts) + extra)
                continue
            # A streamed unit's home copy: disk stores exact bytes; a memory tier copies it into an arena
            # with every tensor aligned (TensorStore.register(copy=True)).
            home_bytes = sum(parts) if home_tier == "disk" else sum(_aligned(p) for p in parts)
            _add(by_unit, home_tier, leaf_name, home_bytes)
            _add(by_unit, exec_tier, leaf_name, sum(resident_parts))
            staged = sum(_aligned(p) for p in parts)
            slot = slot + staged if packed else max(slot, staged)
        totals = {tier: sum(names.values()) for tier, names in by_unit.items()}
        return totals, by_unit, ({exec_tier: slot} if slot else {})


def _add(by_unit: dict[str, dict[str, int]], tier: str, name: str, nbytes: int) -> None:
    if nbytes:
        by_unit[tier][name] = by_unit[tier].get(name, 0) + nbytes


def _fusions(groups: Any, values: dict[tuple[str, str], Any]) -> tuple[set[str], set[str], dict[str, Any]]:
    """What fusion decisions do to the tensors (``transforms/fuse.py``): (leaves whose tensors disappear,
    convs that gain a bias, first member -> concatenated group).

    conv+bn: the BatchNorm becomes an identity and the conv gets a bias. q/k/v, gate/up: one linear with
    the members' weights (and biases, zeros for a member without one) concatenated along the rows.
    """
    removed: set[str] = set()
    with_bias: set[str] = set()
    merged: dict[str, Any] = {}
    for group in groups:
        if values.get((group.name, "fusion")) != "fuse":
            continue
        if group.kind == "conv-bn":
            removed.add(group.members[1])
            with_bias.add(group.members[0])
        else:
            merged[group.members[0]] = group
            removed.update(group.members[1:])
    return removed, with_bias, merged


def _concatenated(first: Any, members: list[Any]) -> Any:
    """A leaf record standing for the members concatenated along the output rows (named like the first)."""
    from dataclasses import replace

    numel = sum(m.weight_numel for m in members)
    out = sum(m.out_features for m in members)
    bias = any(m.bias for m in members)
    size = FLOAT_ITEMSIZE.get(first.dtype, 4)
    sizes = (numel * size, *((out * size,) if bias else ()))
    return replace(first, weight_numel=numel, out_features=out, bias=bias, tensor_sizes=sizes)


def _leaf_parts(leaf: Any, values: dict[tuple[str, str], Any], exec_kind: str, *,
                add_bias: bool = False) -> tuple[list[int], list[int], int]:
    """(streamable tensor sizes, always-resident sizes, packed-copy bytes) of one leaf under the plan.

    The runtime streams a module's tensors together unless *all* of them are vectors (<= 1-D), which
    stay resident; a QuantizedLinear's scales and bias travel with its codes. ``add_bias``: a folded
    BatchNorm gave this conv a bias it did not have.
    """
    precision = values.get((leaf.name, "precision"))
    bias = leaf.bias or add_bias
    if precision is None:
        sizes = list(leaf.tensor_sizes)
        if add_bias and not leaf.bias and leaf.out_features:
            sizes.append(leaf.out_features * FLOAT_ITEMSIZE.get(leaf.dtype, 4))
        return (sizes, [], 0) if leaf.streamable else ([], sizes, 0)
    group = values.get((leaf.name, "group_size"), 128)
    kernel = values.get((leaf.name, "kernel"), "auto")
    parts = tensor_bytes(leaf.weight_numel, leaf.out_features, precision, group, bias=bias)
    parts += list(leaf.other_sizes)  # tensors besides weight and bias (none for nn.Linear/Conv), as they are
    extra = packed_copy_bytes(leaf.weight_numel, leaf.out_features, precision, group, kernel=kernel,
                              exec_kind=exec_kind)
    return parts, [], extra


__all__ = ["DEFAULT_KV_CONTEXT", "FLOAT_ITEMSIZE", "TIERS", "FootprintTracker", "expert_footprint", "kv_budget_bytes",
           "kv_footprint", "kv_layer_bytes", "kv_token_bytes", "memory_breakdown", "packed_copy_bytes", "plan_memory",
           "session_values", "tensor_bytes", "weight_bytes"]
