"""Greedy decode with the step captured as one CUDA graph: static KV cache, fused elementwise ops, streamed
weights through fixed staging slots.

Eager decode of a 7 GB model on an H200 runs at 3–14 % of the memory bound (measured): the host cannot launch a step's
~700 kernels as fast as the GPU runs them. Here one decode step of a Llama-family model (Llama, Mistral
without sliding-window attention, Qwen2) is written out once — the model's own modules for every
linear (bf16 ``nn.Linear`` or the runtime's ``QuantizedLinear``), :mod:`runtime.decode_ops` for the elementwise
parts, SDPA over a static KV cache with a position mask — captured as a CUDA graph and replayed per token.
Inputs (last token, position) and outputs (next token, logits) live in static buffers; the step itself
advances the position and feeds its token back, so a replay is the only host work per token.

- Prefill is the model's own eager forward (it is compute-bound; a graph would not help), its KV copied into
  the static cache; tokens therefore start exactly as eager's.
- q/k/v and gate/up run side by side on forked streams (:mod:`runtime.graph_branches`): the same kernels on
  the same bytes as one after the other, so the same bits, with one product filling the GPU while the last
  finishes (``branches=False`` runs them in a row).
- A Mixtral block's mixture of experts, its experts resident, runs the model's own router and experts modules:
  routing stays on the device (top-k, sort, ``histc`` offsets, grouped GEMM over the chosen experts' rows) with no
  host sync, so it is captured as is, bit for bit Hugging Face's; an experts implementation that synchronises
  with the host (transformers' ``eager`` loop over ``nonzero``) or streamed experts stay eager, with the reason.
- Streamed units go through :class:`runtime.graph_stream.StaticStreamSchedule`: their host-to-device copies
  are part of the graph, ordered by events on the Streamer's copy stream.
- An embedding kept on the host (``modules={"model.embed_tokens": BlockSpec(device="cpu")}``) is looked up on
  the host per token and copied into the graph's static input.
- The static KV cache holds ``prompt + new tokens`` rounded up to ``bucket`` positions, charged to the
  session's store on the execution tier (a budget that cannot hold it falls back to eager with the reason).

:func:`unsupported_reason` says why a session cannot take this path (host execution, disk-homed streaming,
another architecture, sampling…); the Session then runs Hugging Face ``generate`` and logs that reason.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from runtime._log import get_logger
from runtime.decode_attention import FlashDecodeAttention, masked_sdpa
from runtime.decode_ops import DecodeOps, TritonOps, VerifiedOps, pick_ops
from runtime.errors import BudgetExceededError, JalapenoError
from runtime.graph_branches import Branches, L2Prefetch
from runtime.graph_stream import StaticStreamSchedule, run_unit
from runtime.tensors import tier_of

if TYPE_CHECKING:
    from runtime.session import Session

logger = get_logger(__name__)

SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "mixtral")
_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
_LINEARS = (*_ATTN, "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
# transformers' experts implementations whose routing never reads a device value on the host: "grouped_mm"
# (sort, histc offsets, grouped GEMM) and "batched_mm" (gather by index). "eager" loops over ``nonzero``'s
# result on the host, which a graph cannot record.
CAPTURABLE_EXPERTS = ("grouped_mm", "batched_mm")
# A plan's fusion knob (autosurgeon's fuse transform) puts one concatenated linear here, with ``sizes`` (the
# members' output widths) and the product itself as ``.linear``; the members become slices of its output.
_FUSED = {"self_attn": "qkv_proj", "mlp": "gate_up_proj"}


def _fused(parent: nn.Module, name: str) -> nn.Module | None:
    """The fused linear module of ``parent`` (an attention or MLP module) if a fusion made one, else None."""
    fused = getattr(parent, _FUSED[name], None)
    if fused is None or not hasattr(fused, "sizes") or not isinstance(getattr(fused, "linear", None), nn.Module):
        return None
    return fused


def _moe(mlp: nn.Module) -> bool:
    """Whether ``mlp`` is a sparse mixture-of-experts block (a router ``gate`` and an ``experts`` module)."""
    return isinstance(getattr(mlp, "gate", None), nn.Module) and isinstance(getattr(mlp, "experts", None), nn.Module) \
        and not hasattr(mlp, "gate_proj")


def _split(out: torch.Tensor, sizes: tuple[int, ...]) -> list[torch.Tensor]:
    """The members' outputs as views of the fused product's output (contiguous at batch 1: no copy)."""
    return [p if p.is_contiguous() else p.contiguous() for p in out.split(list(sizes), dim=-1)]


def unsupported_reason(session: Session) -> str | None:
    """Why ``session``'s model cannot decode through a captured step (None: it can)."""
    model = session.model
    cfg = getattr(model, "config", None)
    mtype = getattr(cfg, "model_type", None)
    if mtype not in SUPPORTED_TYPES:
        return f"model type {mtype!r} is not one of {SUPPORTED_TYPES}"
    inner = getattr(model, "model", None)
    if inner is None or not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")) \
            or not hasattr(model, "lm_head"):
        return "the model lacks model.embed_tokens/layers/norm/rotary_emb or lm_head"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r} (the step implements silu)"
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if "dynamic" in str(rope_type) or "longrope" in str(rope_type):
        return f"rope_type {rope_type!r} changes its frequencies with the length"
    for i, layer in enumerate(inner.layers):
        attn = getattr(layer, "self_attn", None)
        if attn is None or hasattr(attn, "q_norm") or not hasattr(layer, "mlp"):
            return f"layer {i} is not a plain Llama block (q_norm or a missing mlp)"
        moe = _moe(layer.mlp)
        for name in _ATTN if moe else _LINEARS:
            try:
                layer.get_submodule(name)
            except AttributeError:
                return f"layer {i} has no {name}"
        if moe:
            impl = getattr(getattr(layer.mlp.experts, "config", cfg), "_experts_implementation", None)
            if impl not in CAPTURABLE_EXPERTS:
                return (f"experts implementation {impl!r} routes on the host (capturable: {CAPTURABLE_EXPERTS}; "
                        f"load the model with experts_implementation='grouped_mm')")
            if hasattr(layer.mlp, "shared_expert") or hasattr(layer.mlp, "shared_experts"):
                return f"layer {i}'s mixture of experts has shared experts (the step implements Mixtral's block)"
    window = getattr(cfg, "sliding_window", None)
    if window is not None and getattr(cfg, "use_sliding_window", True):
        return f"sliding-window attention (window {window}) is not implemented by the step"
    if session.experts is not None:
        return "expert streaming picks cache slots on the host at run time (resident experts are captured)"
    if session.kv_config is not None:
        return "a paged KV cache (kv=) is not static"
    if session.adapter is not None:
        return "adaptation (adapt=) retunes between steps"
    devices = {torch.device(bs.device) for bs in session.block_specs} | {session.rest_device}
    if any(d.type != "cuda" for d in devices) or len(devices) != 1:
        return f"execution devices {sorted(map(str, devices))}: graphs need every block on one CUDA device"
    moe_parts = {id(m) for layer in inner.layers if _moe(layer.mlp) for m in layer.mlp.modules()}
    for unit in session.streamer.units:
        if unit.streamed and unit.home == "disk":
            return f"unit {unit.name!r} streams from disk (file reads cannot be captured)"
        if unit.device.type != "cuda" and unit.module is not inner.embed_tokens:
            return f"unit {unit.name!r} runs on {unit.device} (only the embedding may stay on the host)"
        if unit.streamed and id(unit.module) in moe_parts:
            return (f"unit {unit.name!r} streams part of a mixture of experts on its own (whole streamed blocks "
                    f"and resident experts are captured)")
    return None


_GENERATE_KWARGS = ("attention_mask", "pad_token_id", "eos_token_id")


def generate_reason(session: Session, input_ids: torch.Tensor, *, do_sample: bool, kwargs: dict[str, Any]) -> str | None:
    """Why this ``generate`` call cannot take the captured path (None: it can)."""
    if do_sample:
        return "sampling (the captured step is greedy)"
    extra = sorted(k for k, v in kwargs.items() if k not in _GENERATE_KWARGS and v is not None)
    if extra:
        return f"generate() options {extra} are not handled by the captured step"
    if input_ids.dim() != 2:
        return f"input_ids of shape {tuple(input_ids.shape)} (expected (batch, length))"
    mask = kwargs.get("attention_mask")
    if mask is not None and not bool((mask != 0).all()):
        return "a padded batch (attention_mask with zeros)"
    return unsupported_reason(session)



def static_kv_nbytes(model: nn.Module, *, batch: int, tokens: int, bucket: int = 64) -> int:
    """Bytes the captured decode's static KV cache charges to the execution tier for ``tokens`` positions
    (prompt + new tokens, rounded up to ``bucket``) of ``batch`` sequences; 0 for a model it cannot capture.

    A placement fitted to a budget leaves this much free so the graph path has room (``autosurgeon run``)."""
    cfg = getattr(model, "config", None)
    try:
        layers = list(model.model.layers)
        heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        dtype = layers[0].input_layernorm.weight.dtype
    except (AttributeError, IndexError, TypeError):
        return 0
    length = -(-tokens // bucket) * bucket
    return _kv_nbytes(len(layers), batch, kv_heads, length, head_dim, dtype)


def _kv_nbytes(layers: int, batch: int, kv_heads: int, length: int, head_dim: int, dtype: torch.dtype) -> int:
    """Keys and values of ``layers`` layers at ``length`` positions: what the static cache charges."""
    return 2 * layers * batch * kv_heads * length * head_dim * torch.finfo(dtype).bits // 8

class GraphDecoder:
    """Greedy decode of ``session``'s model through one captured step (see the module docstring).

    Args:
        session: an open Session whose :func:`unsupported_reason` is None.
        ops: "auto" (fused Triton kernels where they run and are bit-exact, see
            :class:`~runtime.decode_ops.VerifiedOps`), "torch", "triton" (the same, required), or "triton-fast"
            (one-kernel RMSNorm, not bit-exact: faster, greedy tokens may differ at near ties).
        capture: False runs the very same step eagerly (the host path, and for comparisons).
        branches: run q/k/v and gate/up on parallel CUDA streams where they are not streamed units
            (:mod:`runtime.graph_branches`; same bits as in a row); False runs them in a row.
        attention: "sdpa" (the whole static cache under a position mask) or "flash" (flash attention over the
            filled positions, their count read on the device; taken only at batch 1 and where it is bit for bit
            the unmasked SDPA call Hugging Face's decode makes, else "sdpa" with the reason in
            ``attention_report``; :mod:`runtime.decode_attention`).
        l2_prefetch: read each group's weights into L2 on a side stream while the small kernels before it run
            (:class:`~runtime.graph_branches.L2Prefetch`; resident bf16 linears only; same bits).
        bucket: the static cache length is ``prompt + new tokens`` rounded up to a multiple of this, so
            nearby lengths reuse one captured graph.
    """

    def __init__(self, session: Session, *, ops: str = "auto", capture: bool = True, bucket: int = 64,
                 branches: bool = True, l2_prefetch: bool = False, attention: str = "sdpa") -> None:
        if attention not in ("sdpa", "flash"):
            raise JalapenoError(f"`attention` must be 'sdpa' or 'flash', got {attention!r}.")
        if bucket < 1:
            raise JalapenoError(f"`bucket` must be >= 1, got {bucket}.")
        self.session = session
        self.model = session.model
        self.inner = self.model.model
        self.cfg = self.model.config
        self.device = session.rest_device
        self.bucket = bucket
        self.capture = capture and self.device.type == "cuda"
        self.layers = list(self.inner.layers)
        self.heads = self.cfg.num_attention_heads
        self.kv_heads = getattr(self.cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(self.cfg, "head_dim", None) or self.cfg.hidden_size // self.heads
        self.hidden = self.cfg.hidden_size
        self.eps = float(self.layers[0].input_layernorm.variance_epsilon)
        self.scaling = self.head_dim ** -0.5
        self.branches = Branches(self.device, 3) if branches and self.device.type == "cuda" else None
        self.use_flash, self.attention_report = False, "sdpa over the static cache with a position mask"
        if attention == "flash":
            self.use_flash, note = FlashDecodeAttention.verify(
                self.device, self.layers[0].input_layernorm.weight.dtype, heads=self.heads, kv_heads=self.kv_heads, head_dim=self.head_dim,
                scale=self.scaling)
            self.attention_report = note if self.use_flash else f"sdpa with a mask ({note})"
            if not self.use_flash:
                logger.info("decode graph: %s", self.attention_report)
        self.flash: FlashDecodeAttention | None = None
        self.dtype = self.layers[0].input_layernorm.weight.dtype
        self.ops: DecodeOps
        self.ops, why = pick_ops(ops, self.device, head_dim=self.head_dim, dtype=self.dtype)
        if why:
            logger.info("decode graph: fused kernels not used (%s); torch ops", why)
        if self.ops is TritonOps:  # each fused op checked bit for bit against torch's, per device and shape
            self.ops = VerifiedOps(self.device, self.dtype, hidden=self.hidden, intermediate=self.cfg.intermediate_size,
                                   heads=self.heads, kv_heads=self.kv_heads, head_dim=self.head_dim, eps=self.eps,
                                   vocab=self.cfg.vocab_size)
            logger.info("decode graph ops: %s", self.ops.report)
        session.streamer.quiesce()  # every staging slot free: the schedule takes them all
        self.units = {id(u.module): u for u in session.streamer.units if u.streamed}
        self.embed_on_host = next(self.inner.embed_tokens.parameters()).device.type == "cpu" or any(
            u.module is self.inner.embed_tokens and u.device.type == "cpu" for u in session.streamer.units)
        order = [u for m in self._call_order() if (u := self.units.get(id(m))) is not None]
        self.schedule = StaticStreamSchedule(session.streamer, self.device, order) if order else None
        self.prefetch = L2Prefetch(self.device) if l2_prefetch and self.device.type == "cuda" \
            and self.schedule is None and isinstance(self.ops, VerifiedOps) else None
        self.key: tuple[int, int] | None = None
        self.graph: Any = None
        self.steps = 0
        self._charged = 0

    # ---------------------------------------------------------------- the step
    def _call_order(self) -> list[nn.Module]:
        mods: list[nn.Module] = [] if self.embed_on_host else [self.inner.embed_tokens]
        for layer in self.layers:
            mods.append(layer)  # a whole-block unit binds here
            mods += self._products(layer)
        return [*mods, self.model.lm_head]

    @staticmethod
    def _products(layer: nn.Module) -> list[nn.Module]:
        """The modules whose products one layer's step runs, in call order (a fused linear once)."""
        attn, mlp = layer.self_attn, layer.mlp
        qkv = _fused(attn, "self_attn")
        head = [*([qkv.linear] if qkv is not None else [attn.q_proj, attn.k_proj, attn.v_proj]), attn.o_proj]
        if _moe(mlp):
            return [*head, mlp.gate, mlp.experts]
        gu = _fused(mlp, "mlp")
        return [*head, *([gu.linear] if gu is not None else [mlp.gate_proj, mlp.up_proj]), mlp.down_proj]

    def _lin(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return run_unit(self.units.get(id(module)), self.schedule, module, x)

    def _prefetch(self, modules: list[nn.Module]) -> None:
        if self.prefetch is not None:
            self.prefetch.start([m.weight for m in modules if type(m) is nn.Linear and m.weight.is_cuda])

    def _group(self, modules: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
        """Independent products of ``x``: side by side where none is a streamed unit (its slot schedule is
        sequential), else one after the other."""
        if self.branches is None or any(id(m) in self.units for m in modules):
            return [self._lin(m, x) for m in modules]
        return self.branches.run([lambda m=m: m(x) for m in modules])

    def _step(self) -> None:
        """One decode token from the static buffers into the static buffers (what the graph records)."""
        ops, sched = self.ops, self.schedule
        if sched is not None:
            sched.begin()
        if self.flash is not None:
            self.flash.set_length(self.pos)
        if self.embed_on_host:
            res = self.x_in
        else:
            res = self._lin(self.inner.embed_tokens, self.ids)
        b = res.shape[0]
        delta: torch.Tensor | None = None
        for i, layer in enumerate(self.layers):
            block = self.units.get(id(layer))
            if block is not None and sched is not None:
                sched.bind(block)
            attn, mlp = layer.self_attn, layer.mlp
            products = self._products(layer)
            o_at = products.index(attn.o_proj)
            self._prefetch(products[:o_at])  # q/k/v (or the fused qkv) while the norm runs
            res, x = ops.add_rms_norm(delta, res, layer.input_layernorm.weight, self.eps)
            qkv = _fused(attn, "self_attn")
            if qkv is not None:  # one product for q, k and v (a plan's fusion), sliced without copies
                q, k, v = _split(self._lin(qkv.linear, x), qkv.sizes)
            else:
                q, k, v = self._group([attn.q_proj, attn.k_proj, attn.v_proj], x)
            kc, vc = self.k_cache[i], self.v_cache[i]
            q = ops.rope_cache(q, k, v, self.cos, self.sin, self.pos, kc, vc, self.heads, self.kv_heads,
                               self.head_dim)
            self._prefetch([attn.o_proj])  # while RoPE and attention run
            if self.flash is not None:
                a = self.flash(q, kc, vc)
            else:
                a = masked_sdpa(q, kc, vc, self.mask, self.scaling, self.heads)
            delta = self._lin(attn.o_proj, a.transpose(1, 2).reshape(b, 1, self.heads * self.head_dim))
            if not _moe(mlp):
                self._prefetch(products[o_at + 1:-1])  # gate/up (or the fused gate_up) while the norm runs
            res, x = ops.add_rms_norm(delta, res, layer.post_attention_layernorm.weight, self.eps)
            if _moe(mlp):  # the model's own block: router and experts on the device, no host sync
                delta = mlp(x)
            else:
                gu = _fused(mlp, "mlp")
                if gu is not None:
                    gate, up = _split(self._lin(gu.linear, x), gu.sizes)
                else:
                    gate, up = self._group([mlp.gate_proj, mlp.up_proj], x)
                delta = self._lin(mlp.down_proj, ops.silu_mul(gate, up))
            if block is not None and sched is not None:
                sched.release(block)
        self._prefetch([self.model.lm_head])
        _, x = ops.add_rms_norm(delta, res, self.inner.norm.weight, self.eps)
        logits = self._lin(self.model.lm_head, x)  # (B, 1, V)
        # keep the logits, take the greedy token, feed it back and move on (one kernel with the fused ops):
        # the next replay needs no host work but the launch
        ops.greedy_tail(logits[:, -1].contiguous(), self.logits, self.next, self.ids, self.pos, self.positions,
                        self.mask, self.zero, self.ninf)
        if self.prefetch is not None:
            self.prefetch.join()
        if sched is not None:
            sched.end()

    # ---------------------------------------------------------------- static state
    def _allocate(self, batch: int, length: int) -> None:
        self._release_state()
        dev, dt = self.device, self.dtype
        nbytes = _kv_nbytes(len(self.layers), batch, self.kv_heads, length, self.head_dim, dt)
        self.session.store.charge(tier_of(dev), nbytes, label="kv:static-graph")
        self._charged = nbytes
        shape = (batch, self.kv_heads, length, self.head_dim)
        self.k_cache = [torch.zeros(shape, dtype=dt, device=dev) for _ in self.layers]
        self.v_cache = [torch.zeros(shape, dtype=dt, device=dev) for _ in self.layers]
        positions = torch.arange(length, device=dev)
        with torch.no_grad():
            cos, sin = self.inner.rotary_emb(torch.empty(1, dtype=dt, device=dev), positions[None])
        self.cos, self.sin = cos[0].contiguous(), sin[0].contiguous()  # (L, head_dim), as HF computes per step
        self.positions = positions.view(1, 1, 1, length)
        self.zero = torch.zeros((), dtype=dt, device=dev)
        self.ninf = torch.full((), float("-inf"), dtype=dt, device=dev)
        self.mask = torch.zeros(1, 1, 1, length, dtype=dt, device=dev)
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=dev)
        self.next = torch.zeros(batch, 1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)
        self.x_in = torch.zeros(batch, 1, self.hidden, dtype=dt, device=dev)
        self.logits = torch.zeros(batch, self.cfg.vocab_size, dtype=dt, device=dev)
        self.key = (batch, length)
        self.flash = FlashDecodeAttention(dev, length=length, scale=self.scaling) \
            if self.use_flash and batch == 1 else None

    def _release_state(self) -> None:
        self.graph = None
        self.key = None
        for name in ("k_cache", "v_cache"):
            setattr(self, name, [])
        if self._charged:
            self.session.store.uncharge(tier_of(self.device), self._charged, label="kv:static-graph")
            self._charged = 0

    def close(self) -> None:
        """Free the graph and the static cache (and give their bytes back to the store)."""
        self._release_state()

    # ---------------------------------------------------------------- driving it
    def start(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Prefill ``input_ids`` eagerly, capture the step if this length bucket has none; returns the first
        new token (B, 1) on the device. Then call :meth:`step` up to ``max_new_tokens - 1`` times."""
        batch, prompt = input_ids.shape
        need = prompt + max_new_tokens
        length = -(-need // self.bucket) * self.bucket
        if self.key != (batch, length):
            try:
                self._allocate(batch, length)
            except BudgetExceededError:
                self._release_state()
                raise
        with torch.no_grad():
            out = self.model(input_ids=input_ids.to(self.device), use_cache=True)
            first = out.logits[:, -1].argmax(-1, keepdim=True)
            cache = out.get("cache", None) or out.get("past_key_values", None)  # renamed in transformers 5.2x
            for i, (k, v) in enumerate(_cache_layers(cache)):
                self.k_cache[i][:, :, :prompt].copy_(k)
                self.v_cache[i][:, :, :prompt].copy_(v)
            del out
            self.session.streamer.quiesce()  # the eager prefill's prefetches leave the slots
            if self.capture and self.graph is None:
                self._capture(first, prompt)
            self._set_state(first, prompt)
        self.steps = 0
        return first

    def _set_state(self, token: torch.Tensor, position: int) -> None:
        self.ids.copy_(token)
        self.next.copy_(token)
        self.pos.fill_(position)
        torch.where(self.positions <= self.pos, self.zero, self.ninf, out=self.mask)
        self.position = position

    def _capture(self, token: torch.Tensor, position: int) -> None:
        # Warm up on a side stream (kernel selection, Triton compilation, packed int4 copies of resident
        # weights), then record. Warm-up writes KV at `position`, `position + 1`, which the real steps
        # overwrite before any query can see them (the mask admits positions <= pos only).
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._set_state(token, position)
            for _ in range(2):
                self._embed_host()
                self._step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._set_state(token, position)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._step()
        self.graph = graph
        logger.info("decode step captured (batch %d, cache %d positions, %d streamed units, %s ops)",
                    *self.key, len(self.schedule.order) if self.schedule else 0, self.ops.name)

    def _embed_host(self) -> None:
        if self.embed_on_host:
            emb = self.inner.embed_tokens
            ids = self.ids.to(next(emb.parameters()).device)
            self.x_in.copy_(emb(ids).to(self.device, non_blocking=False))

    def step(self) -> torch.Tensor:
        """One decode token: returns the static next-token buffer (B, 1) — read or clone it before the next
        step overwrites it."""
        if self.key is None:
            raise JalapenoError("call start() before step().")
        if self.position >= self.key[1]:
            raise JalapenoError(f"the static cache holds {self.key[1]} positions; start() again with a larger "
                                f"`max_new_tokens`.")
        with torch.no_grad():
            self._embed_host()
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step()
        self.position += 1
        self.steps += 1
        return self.next

    def generate(self, input_ids: torch.Tensor, *, max_new_tokens: int, eos_token_id: Any = None,
                 pad_token_id: int = 0, check_every: int = 16) -> torch.Tensor:
        """Greedy tokens as Hugging Face ``generate`` returns them (a finished row is padded until every row
        finished; the call ends when all have, checked every ``check_every`` tokens)."""
        eos = _as_list(eos_token_id)
        first = self.start(input_ids, max_new_tokens)
        tokens = [first.clone()]
        for i in range(1, max_new_tokens):
            if eos and i % check_every == 0 and _all_finished(torch.cat(tokens, 1), eos):
                break
            tokens.append(self.step().clone())
        new = torch.cat(tokens, 1)
        if eos:
            new = _pad_after_eos(new, eos, pad_token_id)
        return torch.cat([input_ids.to(new.device), new], 1)


def _cache_layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer of a Hugging Face cache, across its API versions."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache))
    return [(k, v) for k, v in cache]


def _as_list(eos: Any) -> list[int]:
    if eos is None:
        return []
    if isinstance(eos, torch.Tensor):
        return [int(t) for t in eos.flatten()]
    return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]


def _is_eos(new: torch.Tensor, eos: list[int]) -> torch.Tensor:
    return torch.isin(new, torch.tensor(eos, device=new.device))


def _all_finished(new: torch.Tensor, eos: list[int]) -> bool:
    return bool(_is_eos(new, eos).any(1).all())


def _pad_after_eos(new: torch.Tensor, eos: list[int], pad: int) -> torch.Tensor:
    """Hugging Face's greedy bookkeeping: after a row's first eos, pad; stop once every row has finished."""
    hit = _is_eos(new, eos)
    after = (hit.cumsum(1) - hit.long()) > 0  # strictly after the first eos
    new = new.masked_fill(after, pad)
    if bool(hit.any(1).all()):
        last = int((hit.float().argmax(1)).max()) + 1
        new = new[:, :last]
    return new


__all__ = ["SUPPORTED_TYPES", "GraphDecoder", "static_kv_nbytes", "unsupported_reason"]
