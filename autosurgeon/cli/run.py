"""``autosurgeon run``: run a model on the Jalapeño runtime within memory budgets, and report.

    autosurgeon run tiny-llama --prompt "def main(" --max-new-tokens 32
    autosurgeon run tiny-llama --memory-budget cpu=2MiB --json      # streams blocks from the disk tier
    autosurgeon run ./my-hf-dir --memory-budget gpu=3GiB,cpu=20GiB --weight-format int4
    autosurgeon run tiny-moe --prefetch markov --expert-cache 0.25 --kv-precision int8 --kv-window 256 --json
    autosurgeon run tiny-llama --plan plan.json --kv-precision int8 --kv-budget 50% --json
    autosurgeon run llama-7b-16l-shape --prompt-ids random:16 --memory-budget gpu=3GiB --json   # no tokenizer
    autosurgeon run digits-cnn           # classifiers and encoders: one forward, class scores / embeddings

Session flags (``--kv-precision``, ``--kv-budget``, ``--kv-tier``, ``--kv-window``, ``--prefetch``,
``--lookahead``) spell the plan's session knobs (``autosurgeon.knobs.SESSION_KNOBS``). With ``--plan`` they
override the plan's session decisions knob by knob (``--lookahead`` is ``prefetch_depth``), the merged plan is
checked as a whole, and the report says which decision came from the plan and which from a flag. A
``--kv-budget`` share (``50%``) is of the KV bytes the whole run (prompt + new tokens) would store.

One road: without ``--plan`` the flags are a plan too (``run_plan.flags_plan``: ``--weight-format int8|int4``
for the blocks' linears, the session flags as session knobs), applied by ``apply_plan`` like a ``--plan`` file.
Its placement is fitted (``apply_plan(placement="fit")``): blocks stay resident on the execution device while
its budget lasts (after the embeddings, head and the staging slots streaming needs), the rest stream from the
next slower tier (pinned host memory next to a GPU; the disk tier on a CPU-only machine). Decoding is greedy.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
from typing import TYPE_CHECKING, Any

from autosurgeon.budget import FLAG, MemoryBudget
from autosurgeon.cli._budget import add_memory_budget
from autosurgeon.errors import InvalidArgumentError

if TYPE_CHECKING:  # annotations only
    from autosurgeon.zoo import LoadedModel

FORMATS = ("float32", "bfloat16", "float16", "int8", "int4")
ENERGY_MAX_REPEATS = 1000  # a generation shorter than 1 ms would need more; the energy is then left unknown


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run", help="run a model within memory budgets (streaming what does not fit) and report speed",
        description="Generate greedily with MODEL on the Jalapeño runtime within per-tier memory budgets; "
        "report tokens/s, peak bytes per tier and energy.")
    parser.add_argument("model", metavar="MODEL", help="zoo name, Hugging Face model directory, or module:factory")
    parser.add_argument("--plan", help="a plan JSON (autosurgeon.plan.Plan) for this machine's profile: precision, "
                        "fusion and placement per module, checked before it is applied")
    add_memory_budget(parser, "the run's memory budget per tier, streaming what does not fit (with --plan: "
                      "overrides the plan's own budget)")
    parser.add_argument("--device", default=None, help="execution device: cpu or cuda[:N] (default: cuda:0 if present)")
    parser.add_argument("--prompt", default="def ", help="prompt text (byte-level for the zoo's LMs)")
    parser.add_argument("--prompt-ids", default=None, metavar="IDS|random:N",
                        help="token ids instead of --prompt text: 1,2,3 or random:16 (seeded random ids from the "
                        "vocabulary); for shapes and directories without a tokenizer")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--weight-format", choices=FORMATS, default=None,
                        help="cast (float formats) or weight-only quantize the blocks' linears (int8/int4)")
    parser.add_argument("--lookahead", type=int, default=None,
                        help="streamed units fetched ahead (default 2; with --plan it overrides the plan's "
                        "prefetch_depth, 0..4)")
    parser.add_argument("--watts", type=float, default=None,
                        help="power figure for the energy estimate where no counter (NVML/RAPL) is readable")
    parser.add_argument("--offload-dir", default=None, help="directory for the disk tier (default: a temporary one)")
    parser.add_argument("--cache-dir", default=None, help="zoo cache folder")
    parser.add_argument("--kv-precision", choices=("float", "int8", "fp8"), default=None,
                        help="store the KV cache paged in this precision (default: Hugging Face's own cache)")
    parser.add_argument("--kv-budget", default=None, metavar="SIZE|SHARE",
                        help="budget of the stored KV cache: a size (64MiB) or a share of what the whole run would "
                        "store (50%%); oldest pages are evicted past it, keeping the attention sinks")
    parser.add_argument("--kv-tier", choices=("gpu", "cpu"), default=None,
                        help="tier the KV pages live on (default: the execution device's)")
    parser.add_argument("--kv-window", type=int, default=None, metavar="N",
                        help="keep only the N most recent tokens (plus 4 attention sinks) in the KV cache")
    parser.add_argument("--prefetch", choices=("markov", "lru", "gate", "hybrid"), default=None,
                        help="mixture-of-experts models: stream experts from the slower tier through a bounded expert "
                        "cache, prefetching with a learned Markov model, none (LRU cache only), or the next "
                        "layer's router (gate)")
    parser.add_argument("--expert-cache", type=float, default=0.25, metavar="FRACTION",
                        help="expert cache size as a fraction of all experts (with --prefetch; default 0.25)")
    parser.add_argument("--adapt", action="store_true",
                        help="retune between steps under memory pressure (lookahead, KV window, residency); "
                        "adjustments are reported")
    parser.add_argument("--no-graphs", action="store_true",
                        help="decode eagerly (default on CUDA: greedy decode through a captured CUDA-graph step)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a report")
    parser.set_defaults(func=run)


def parse_budgets(text: str | None, *, reference_bytes: int | None = None, device: str = "cpu") -> dict[str, int]:
    """``"gpu=3GiB,cpu=20GiB"`` -> ``{"gpu": 3221225472, "cpu": 21474836480}`` with precise errors; shares are of
    ``reference_bytes`` (the unmodified model's weight bytes), a bare entry is ``device``'s tier."""
    from runtime.tensors import tier_of

    budget = MemoryBudget.parse(text, argument=FLAG)
    return budget.resolve(reference_bytes=reference_bytes, fastest=tier_of(device))


FLAG_KNOBS = (("kv_precision", "--kv-precision"), ("kv_budget", "--kv-budget"), ("kv_tier", "--kv-tier"),
              ("kv_window", "--kv-window"), ("prefetch", "--prefetch"), ("prefetch_depth", "--lookahead"))


def session_flags(args: argparse.Namespace, *, with_plan: bool) -> dict[str, Any]:
    """The session knobs the flags set, validated with flag-named errors (``--lookahead`` only with a plan)."""
    from autosurgeon.knobs import validate_session_decision

    values = {"kv_precision": args.kv_precision, "kv_budget": args.kv_budget, "kv_tier": args.kv_tier,
              "kv_window": args.kv_window, "prefetch": args.prefetch,
              "prefetch_depth": args.lookahead if with_plan else None}
    out = {}
    for knob, flag in FLAG_KNOBS:
        value = values[knob]
        if value is None:
            continue
        try:
            validate_session_decision(knob, value, where=f"`{flag}`")
        except InvalidArgumentError as exc:
            if knob != "prefetch_depth":
                raise
            raise InvalidArgumentError(f"{str(exc).rstrip('.')} (with --plan, --lookahead sets the plan's "
                                       "prefetch_depth, 0..4).") from None
        out[knob] = value
    return out


def expert_check(args: argparse.Namespace, model: Any) -> None:
    """``--prefetch``/``--expert-cache`` errors named after the flags, before the plan is applied."""
    if args.prefetch is None:
        return
    from runtime.experts import find_expert_modules

    if not find_expert_modules(model):
        raise InvalidArgumentError(f"`--prefetch {args.prefetch}` streams mixture-of-experts weights, but this model "
                                   f"has no experts modules; drop --prefetch.")
    if not 0 < args.expert_cache <= 1:
        raise InvalidArgumentError(f"`--expert-cache` must be a fraction in (0, 1], got {args.expert_cache}.")


def check_limits(model: Any, *, prompt_tokens: int, max_new_tokens: int, lookahead: int | None) -> None:
    """The run's token count within the model's positions, and ``--lookahead`` within its blocks."""
    from runtime.session import find_blocks

    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and prompt_tokens + max_new_tokens > positions:
        raise InvalidArgumentError(
            f"`--max-new-tokens` {max_new_tokens} with a {prompt_tokens}-token prompt exceeds the model's "
            f"{positions} positions; give at most {max(positions - prompt_tokens, 0)}.")
    if lookahead is not None:
        _, blocks = find_blocks(model)
        if lookahead > len(blocks):
            raise InvalidArgumentError(f"`--lookahead` {lookahead} exceeds the model's {len(blocks)} blocks; give "
                                       f"0..{len(blocks)}.")


# long: argument checks before any load, the run, and the report it prints in two forms (text and --json)
def run(args: argparse.Namespace) -> int:
    import torch

    from autosurgeon.cli.run_plan import flags_plan
    from autosurgeon.transforms.apply import apply_plan
    from autosurgeon.zoo import load_model
    from runtime.session import module_bytes
    from runtime.sizes import format_bytes

    if args.max_new_tokens < 1:
        raise InvalidArgumentError(f"`--max-new-tokens` must be >= 1, got {args.max_new_tokens}.")
    if args.lookahead is not None and args.lookahead < 0:
        raise InvalidArgumentError(f"`--lookahead` must be >= 0, got {args.lookahead}.")
    from autosurgeon.models.prompt import check_before_build, parse_prompt_ids

    prompt_ids = parse_prompt_ids(args.prompt_ids)
    check_before_build(args.model, prompt_ids)  # a shape without --prompt-ids fails now, not after its build
    flags = session_flags(args, with_plan=args.plan is not None)  # flag-named errors before any loading
    plan = None
    if args.plan is not None:  # read (and reject) the plan before loading the model
        from autosurgeon.plan import Plan, PlanFormatError

        if args.weight_format is not None:
            raise InvalidArgumentError("`--plan` and `--weight-format` both set precisions; drop --weight-format "
                                       "(the plan decides per layer).")
        try:
            plan = Plan.load(args.plan)
        except PlanFormatError as exc:
            raise InvalidArgumentError(f"`--plan`: {exc}") from None
    budget = MemoryBudget.parse(args.memory_budget, argument=FLAG)  # refused before the model loads
    if args.device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        raise InvalidArgumentError(f"`--device` must be cpu, cuda or cuda:N, got {args.device!r}.")
    device = args.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidArgumentError(f"`--device` {device!r} needs a CUDA GPU; none is visible. Use --device cpu.")
    if device == "cpu" and "gpu" in budget.limits:
        raise InvalidArgumentError("`--memory-budget` gives a gpu budget but the device is cpu; drop it or use "
                                   "--device cuda.")

    loaded = load_model(args.model, device="cpu", cache_dir=args.cache_dir)
    budgets = parse_budgets(args.memory_budget, reference_bytes=module_bytes(loaded.model), device=device)
    if loaded.task != "causal-lm":
        return _run_forward(args, loaded, budgets, device, prompt_ids)
    encode, decode = _encode_decode(loaded, prompt_ids)
    model = loaded.model
    fmt = args.weight_format
    if plan is None:  # the least budget that can work, named (with the least over formats) before formatting
        from autosurgeon.planners.least_budget import check_budget_floor
        from autosurgeon.transforms.fit_placement import expert_cache_bytes

        expert_check(args, model)
        expert_ids, cache_bytes = (expert_cache_bytes(model, float(args.expert_cache)) if args.prefetch is not None
                                   else (set(), 0))
        check_budget_floor(model, device=device, budgets=budgets, weight_format=fmt, exclude=expert_ids,
                           reserve=cache_bytes, name=loaded.name, argument=FLAG)
    if fmt in ("float32", "bfloat16", "float16"):
        model.to(getattr(torch, fmt))  # the dtype the model runs in, not a per-layer decision (run_plan.py)
    if prompt_ids is not None:
        from autosurgeon.models.prompt import prompt_ids_tensor

        ids = prompt_ids_tensor(loaded, prompt_ids)
    else:
        ids = torch.tensor([encode(args.prompt)], dtype=torch.long)
    if ids.numel() == 0:
        raise InvalidArgumentError(f"`--prompt` {args.prompt!r} gave no token ids with {loaded.name!r}'s tokenizer; give "
                                   "non-empty text, or --prompt-ids random:16.")
    check_limits(model, prompt_tokens=ids.shape[1], max_new_tokens=args.max_new_tokens, lookahead=args.lookahead)
    kv_context = ids.shape[1] + args.max_new_tokens - 1  # a --kv-budget share is of the whole run's tokens
    if plan is not None:  # checked against this machine's profile, applied in place, placed as planned
        if args.adapt:
            raise InvalidArgumentError("`--plan` with --adapt is not supported yet (the plan fixes the session's "
                                       "decisions); drop --adapt or the plan.")
        sources = {**{k: "plan" for k in plan.session}, **{k: "flag" for k in flags}}
        session_decisions = {**plan.session, **flags}
        plan = dataclasses.replace(plan, session=session_decisions)
        lookahead, placement = 2, "plan"
    else:  # the flags are a plan too, whose placement the runtime fits into the budget (run_plan.py)
        sources = {k: "flag" for k in flags}
        session_decisions = flags
        plan = flags_plan(model, weight_format=fmt, session=flags)
        lookahead, placement = (2 if args.lookahead is None else args.lookahead), "fit"
    reserve = 0
    if placement == "fit" and device.startswith("cuda") and not args.no_graphs and not session_decisions:
        from runtime.decode_graph import static_kv_nbytes  # the graph decode's KV cache needs room too

        reserve = static_kv_nbytes(model, batch=1, tokens=ids.shape[1] + args.max_new_tokens)
    session = apply_plan(loaded, plan, "local", inplace=True, budgets=budgets if (budget or placement == "fit")
                         else None, lookahead=lookahead, offload_dir=args.offload_dir, energy_watts=args.watts,
                         kv_context=kv_context, expert_capacity=float(args.expert_cache), placement=placement,
                         device=device, reserve_bytes=reserve, adapt=args.adapt or None)
    spec, device = session.spec, session.spec.rest_spec.device
    if args.no_graphs:
        session.graphs = False
    from runtime.telemetry import COUNTER_WINDOW_S  # lazy: the CLI imports the runtime only to run

    with session:
        out = session.generate(ids, max_new_tokens=args.max_new_tokens)
        stats = session.stats()
        repeats = 1
        # NVML's counter ticks every ~0.1-1 s: a shorter generation is repeated (same greedy work) until the
        # session's counter windows add up to >= 1 s, so the energy printed is one the counter saw.
        while "energy" in stats.extra and stats.energy_source == "nvml" and repeats < ENERGY_MAX_REPEATS \
                and stats.extra["energy"]["window_s"] < COUNTER_WINDOW_S:
            session.generate(ids, max_new_tokens=args.max_new_tokens)
            repeats += 1
            stats = session.stats()
    new_ids = out[0, ids.shape[1]:].tolist()
    energy = stats.energy_j / repeats if stats.energy_j is not None and math.isfinite(stats.energy_j) else None
    placement = {"device": device, "resident_blocks": sum(not b.streamed for b in spec.blocks),
                 "streamed_blocks": sum(b.streamed for b in spec.blocks),
                 "streamed_from": sorted({b.tier for b in spec.blocks if b.streamed})}
    if args.json:
        print(json.dumps({
            "model": loaded.name, "token_ids": new_ids, "text": decode(new_ids),
            "prompt": args.prompt if prompt_ids is None else None, "prompt_ids": ids[0].tolist(),
            "tokens_per_s": stats.tokens_per_s, "seconds": stats.seconds, "new_tokens": stats.tokens,
            "peak_bytes": stats.peak_bytes, "budgets": stats.budgets, "peak_rss_bytes": stats.peak_rss,
            "cuda_max_allocated_bytes": stats.cuda_max_allocated, "energy_j": energy,
            "energy_source": stats.energy_source, "energy_generations": repeats,
            "energy_unseen": (stats.extra.get("energy") or {}).get("reason"),
            "weight_format": fmt or ("per plan" if args.plan is not None else "as loaded"), "placement": placement,
            "fetches": stats.fetches, "misses": stats.misses,
            "kv": _kv_report(stats.extra.get("kv"), session.kv_config),
            "session": session_decisions, "session_sources": sources, "experts": stats.extra.get("experts"),
            "decode": stats.extra.get("decode"),
            "prefetch_hit_rate": (stats.extra["experts"]["prefetch_hit_rate"] if "experts" in stats.extra else None),
            "expert_hit_rate": (stats.extra["experts"]["hit_rate"] if "experts" in stats.extra else None),
            "adjustments": stats.extra.get("adjustments"),
        }))
        return 0
    print(f"{args.prompt}{decode(new_ids)}" if prompt_ids is None else f"prompt ids {ids[0].tolist()} -> {new_ids}")
    print()
    print(f"model      {loaded.name} on {device}: {placement['resident_blocks']} blocks resident, "
          f"{placement['streamed_blocks']} streamed" + (f" from {', '.join(placement['streamed_from'])}"
                                                         if placement["streamed_blocks"] else ""))
    if session_decisions:
        print("session    " + ", ".join(f"{k}={v} ({sources.get(k, 'flag')})" for k, v in session_decisions.items()))
    print(f"speed      {stats.tokens_per_s:.2f} tokens/s ({stats.tokens} tokens in {stats.seconds:.2f} s, greedy)")
    for tier, peak in stats.peak_bytes.items():
        budget = stats.budgets[tier]
        if peak or budget is not None:
            print(f"peak {tier:<5} {format_bytes(peak)}" + (f" of {format_bytes(budget)} budget" if budget is not None else ""))
    if stats.peak_rss is not None:
        print(f"peak RSS   {format_bytes(stats.peak_rss)} (whole process, sampled)")
    kv_stats = stats.extra.get("kv")
    if kv_stats is not None:
        peak = kv_stats.get("peak_bytes")
        print(f"kv cache   {format_bytes(kv_stats['bytes_used'])} stored ({session.kv_config.precision})"
              + (f", peak {format_bytes(peak)}" if peak is not None else "")
              + f", {kv_stats['tokens_kept']} of {kv_stats['tokens_seen']} tokens kept, {kv_stats['evictions']} evicted"
              + (f", {kv_stats['offloaded_pages']} pages offloaded" if kv_stats.get("offloaded_pages") else ""))
    ex = stats.extra.get("experts")
    if ex is not None:
        print(f"experts    {ex['capacity']} cached slots, prefetch {ex['prefetch']}: hit rate {ex['hit_rate']:.1%}, "
              f"prefetch hit rate {ex['prefetch_hit_rate']:.1%}, {format_bytes(ex['bytes_moved'])} moved")
    for adj in stats.extra.get("adjustments") or []:
        print(f"adapt      step {adj['step']}: {adj['knob']} {adj['old']} -> {adj['new']} ({adj['reason']})")
    unseen = (stats.extra.get("energy") or {}).get("reason")
    print("energy     " + (f"{energy:.3f} J per generation" if energy is not None else "unknown")
          + f" (source: {stats.energy_source}"
          + (f", over {repeats} generations: one was shorter than the counter's {COUNTER_WINDOW_S:.0f} s window"
             if repeats > 1 and energy is not None else "")
          + (", no power figure: pass --watts" if energy is None and stats.energy_source == "estimate" else "")
          + (f"; {unseen}" if energy is None and unseen else "") + ")")
    return 0


def _encode_decode(loaded: LoadedModel, prompt_ids: Any) -> tuple[Any, Any]:
    """The tokenizer's (encode, decode); with --prompt-ids and no tokenizer, ids are shown as ids."""
    from autosurgeon.models.prompt import tokenizer

    try:
        return tokenizer(loaded)
    except InvalidArgumentError:
        if prompt_ids is None:
            raise
        return (lambda text: []), (lambda ids: " ".join(str(i) for i in ids))


def _run_forward(args: argparse.Namespace, loaded: LoadedModel, budgets: dict[str, int], device: str,
                 prompt_ids: Any) -> int:
    """Encoders and classifiers: one forward on the runtime (or as is, without a block list), reported."""
    import torch

    from autosurgeon.cli.run_forward import forward_inputs, run_forward
    from autosurgeon.models.prompt import prompt_ids_tensor, tokenizer
    from runtime.errors import JalapenoError
    from runtime.session import find_blocks

    if args.plan is not None or args.prefetch is not None or any(
            v is not None for v in (args.kv_precision, args.kv_budget, args.kv_tier, args.kv_window)):
        raise InvalidArgumentError(f"{loaded.name!r} is a {loaded.task} model: one forward, no generation; drop "
                                   "--plan, --prefetch and the --kv-* flags.")
    ids = None
    if loaded.task == "feature-extraction":
        if prompt_ids is not None:
            ids = prompt_ids_tensor(loaded, prompt_ids)
        else:
            ids = torch.tensor([tokenizer(loaded)[0](args.prompt)], dtype=torch.long)
    inputs = forward_inputs(loaded, ids)
    if args.weight_format in ("float32", "bfloat16", "float16"):
        loaded.model.to(getattr(torch, args.weight_format))
        inputs = {k: v.to(getattr(torch, args.weight_format)) if v.is_floating_point() else v
                  for k, v in inputs.items()}
    try:
        find_blocks(loaded.model)
        has_blocks = True
    except JalapenoError:
        has_blocks = False
    session = None
    if has_blocks:  # an empty plan whose placement the runtime fits into the budget, as for a language model
        from autosurgeon.plan import Plan
        from autosurgeon.transforms.apply import apply_plan

        session = apply_plan(loaded, Plan(), "local", inplace=True, budgets=budgets, lookahead=args.lookahead or 2,
                             offload_dir=args.offload_dir, energy_watts=args.watts, placement="fit", device=device)
    else:
        loaded.model.to(device)
    try:
        result = run_forward(loaded, inputs, session=session, watts=args.watts, device=device)
        stats = session.stats() if session is not None else None
    finally:
        if session is not None:
            session.close()
    result.update(model=loaded.name, task=loaded.task, device=device,
                  runtime="session" if session is not None else "as is (no block list to stream)",
                  peak_bytes=stats.peak_bytes if stats else None, budgets=stats.budgets if stats else None)
    if args.json:
        print(json.dumps(result))
        return 0
    from runtime.sizes import format_bytes

    if result["output"] == "embeddings":
        print(f"embeddings {result['shape']}: L2 norm per position mean {result['mean_norm']:.4g} "
              f"(min {result['min_norm']:.4g}, max {result['max_norm']:.4g})")
    else:
        print("class scores (top 5): " + ", ".join(f"{c}: {p:.3f}" for c, p in result["top_classes"]))
    print(f"model      {loaded.name} ({loaded.task}) on {device}, {result['runtime']}")
    print(f"speed      {result['latency_s'] * 1e3:.3f} ms/forward (median of {result['repeats']}, min "
          f"{result['latency_min_s'] * 1e3:.3f}, max {result['latency_max_s'] * 1e3:.3f})")
    for tier, peak in (result["peak_bytes"] or {}).items():
        budget = result["budgets"][tier]
        if peak or budget is not None:
            print(f"peak {tier:<5} {format_bytes(peak)}" + (f" of {format_bytes(budget)} budget" if budget else ""))
    if result["peak_rss_bytes"] is not None:
        print(f"peak RSS   {format_bytes(result['peak_rss_bytes'])} (whole process, sampled)")
    energy = result["energy_j_per_forward"]
    print("energy     " + (f"{energy * 1e3:.4g} mJ/forward" if energy is not None else "unknown")
          + f" (source: {result['energy_source']}, over {result['energy_window_s']:.2f} s"
          + (", no power figure: pass --watts" if energy is None else "") + ")")
    return 0


def _kv_report(kv: dict[str, Any] | None, config: Any = None) -> dict[str, Any] | None:
    """The KV figures ``--json`` promises: bytes stored at the end and at peak, budget, evictions, tokens
    kept/seen, pages (offloaded too), waste, and the cache's precision, window and tier."""
    if kv is None:
        return None
    keys = ("bytes_used", "peak_bytes", "bytes_budget", "evictions", "tokens_kept", "tokens_seen", "pages",
            "waste_fraction", "offloaded_pages", "offloaded_bytes")
    out = {k: kv.get(k) for k in keys}
    if config is not None:
        out.update(precision=config.precision, window=config.window, tier=config.tier)
    return out
