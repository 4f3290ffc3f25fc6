"""The demo's GPU scenario: a model that does not fit the GPU budget, and what each way of running it buys.

``autosurgeon demo`` on a CUDA machine (unless told ``--scenario search``) takes the Llama-7B architecture with 16
layers (``llama-7b-16l-shape``, bf16, 7.0 GB) under ``gpu=3GiB``: it does not fit, so something must give. Raced
in one harness (``experiments.demo_compare``): the unmodified model all on the GPU (the reference, over the
budget), Hugging Face accelerate's CPU offload at the same cap, and AutoSurgeon's plans on the runtime at the same
cap: bf16 streamed (placement only), uniform int8 and uniform int4 (blocks resident while the cap lasts, the rest
streamed). The fastest plan that fits the cap at the quality bound is chosen.

Quality: the shape model's weights are random, so its own perplexity means nothing. Each row's quality is measured
on the trained ``tiny-llama`` under the same precision rule (float rows: unchanged weights; uniform int8/int4:
every linear of tiny-llama at that precision) and labelled so.

Not here (said in the notes): the NSGA-II sweep and the knapsack, which need a sensitivity table that a model of
random weights cannot give.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autosurgeon._logging import get_logger
from autosurgeon.errors import InvalidArgumentError

logger = get_logger(__name__)

MODEL = "llama-7b-16l-shape"
BUDGET = "gpu=3GiB"
QUALITY_MODEL = "tiny-llama"
PROMPT_TOKENS = 16
ROUNDS = 3
RACE_BUDGET_S = 90.0

Progress = Callable[[str, str], None]


@dataclass(frozen=True)
class StreamingSettings:
    """What the GPU scenario does (``autosurgeon demo --scenario streaming``)."""

    model: str = MODEL
    budget: str = BUDGET
    max_quality_loss: float = 0.01
    tokens: int = 16
    quality_model: str = QUALITY_MODEL
    quality_samples: int = 8
    seed: int = 0
    cache_dir: str | None = None


@dataclass
class StreamingResult:
    """What the CLI prints: the race, the chosen row and its standing against each other row."""

    profile: Any
    model: str
    model_bytes: int
    budget_bytes: int
    tiers: tuple[str, ...]
    comparison: Any
    chosen: Any  # demo_compare.Row or None
    standings: list[str]
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": "streaming", "model": self.model, "device": self.profile.name,
                "model_bytes": self.model_bytes, "budget_bytes": self.budget_bytes, "tiers": list(self.tiers),
                "chosen": self.chosen.label if self.chosen is not None else None, "standings": self.standings,
                "notes": self.notes, "seconds": self.seconds, "comparison": self.comparison.to_dict()}


def _tier_budget(text: str, reference: int, tier: str) -> int:
    """Bytes of a one-tier budget on ``tier`` (the machine's fastest); a clear error otherwise."""
    from autosurgeon.budget import FLAG, MemoryBudget

    limits = MemoryBudget.parse(text, argument=FLAG).resolve(reference_bytes=reference, fastest=tier)
    if set(limits) != {tier}:
        raise InvalidArgumentError(f"`{FLAG}` for the streaming demo bounds this machine's fastest tier only, like "
                                   f"{tier}=3GiB; got {text!r}.")
    return limits[tier]


def _machine_tier(budget: str) -> str:
    """``gpu`` where CUDA is visible, else ``cpu`` (a CPU run streams from disk); a gpu budget needs a GPU."""
    import torch

    from autosurgeon.budget import FLAG, MemoryBudget

    if torch.cuda.is_available():
        return "gpu"
    if "gpu" in MemoryBudget.parse(budget, argument=FLAG).limits:
        raise InvalidArgumentError(f"the streaming demo's budget {budget} needs a CUDA GPU; none is visible. On this "
                                   "machine run `autosurgeon demo` (the search scenario), or give a cpu budget "
                                   "(--memory-budget cpu=25%) to stream from disk.")
    return "cpu"


def _precision_of(label: str) -> str | None:
    """The precision rule a row applies to every linear (None: the weights are unchanged)."""
    return label.split()[-1] if label.startswith("uniform ") else None


def proxy_quality(rows: list[Any], settings: StreamingSettings, profile: Any) -> str:
    """Each row's quality loss measured on the trained quality model under the row's precision rule; the label."""
    from autosurgeon.knobs import KNOBS
    from autosurgeon.quality.settings import QualitySettings
    from autosurgeon.space.search_space import SearchSpace
    from autosurgeon.transforms import apply_plan
    from autosurgeon.zoo import load_model
    from experiments.sweep.baselines import uniform_vectors

    tiny = load_model(settings.quality_model, cache_dir=settings.cache_dir)
    space = SearchSpace.build(tiny, profile, knobs=KNOBS)
    quality = QualitySettings(samples=settings.quality_samples).evaluator(tiny, default_samples=settings.quality_samples)
    vectors = {"float": space.default_vector(), **{k.removeprefix("uniform-"): v
                                                    for k, v in uniform_vectors(space).items()}}
    why = "its weights are random" if settings.model.endswith("-shape") else "scored by proxy in this scenario"
    label = (f"{quality.reference.method}, measured on {settings.quality_model} (trained) under the row's precision "
             f"rule, not on {settings.model} ({why})")
    losses: dict[str, float] = {}
    for row in rows:
        rule = _precision_of(row.label) or "float"
        if rule not in losses:
            if rule not in vectors:
                row.quality_loss, row.quality_method = None, f"{rule} not valid for {settings.quality_model} here"
                continue
            with apply_plan(tiny, space.decode(vectors[rule]), profile, inplace=False, space=space) as session:
                losses[rule] = float(quality.loss(session.model))
        row.quality_loss, row.quality_method = losses[rule], label
    return label


# long: the scenario end to end, in the order the module docstring gives, each stage timed
def run_streaming_demo(settings: StreamingSettings, *, progress: Progress | None = None) -> StreamingResult:
    """Race the ways of running a model that does not fit the GPU budget (module docstring)."""
    import torch

    from autosurgeon.cost.base import mean_watts
    from autosurgeon.hardware.resolve import resolve_profile
    from autosurgeon.knobs import KNOBS
    from autosurgeon.space.search_space import SearchSpace
    from autosurgeon.zoo import load_model
    from experiments.demo_alternatives import fill_within, uniform_at_budget
    from experiments.demo_compare import judge, pick, race, standing
    from experiments.demo_contenders import (
        AccelerateContender,
        PlanContender,
        accelerate_available,
    )
    from runtime.session import module_bytes

    say = progress or (lambda stage, message: None)
    tier = _machine_tier(settings.budget)
    seconds: dict[str, float] = {}
    notes = [("no sweep or knapsack here: both need a sensitivity table, which a model of random weights cannot "
              "give; `autosurgeon demo --scenario search` runs them on a trained model")]
    t = time.perf_counter()
    say("profile", "measuring this machine (quick; cached afterwards)")
    profile = resolve_profile("local")
    seconds["profile"] = time.perf_counter() - t

    t = time.perf_counter()
    dtype = torch.bfloat16 if tier == "gpu" else None  # bf16 on a GPU; on a CPU the model's own (bf16 GEMV is slow)
    say("model", f"loading {settings.model}" + (" in bfloat16" if dtype is not None else ""))
    loaded = load_model(settings.model, device="cpu", dtype=dtype, cache_dir=settings.cache_dir)
    total = module_bytes(loaded.model)
    budget = _tier_budget(settings.budget, total, tier)
    tiers = (tier,)
    space = SearchSpace.build(loaded, profile, knobs=KNOBS)
    seconds["model"] = time.perf_counter() - t

    t = time.perf_counter()
    watts = mean_watts(profile, 1.0)
    contenders: list[Any] = []

    def add(label: str, make: Callable[[], Any]) -> None:
        say("race", f"preparing {label}")
        try:
            contenders.append(make())
        except Exception as exc:  # noqa: BLE001 - a row that cannot be built says why; the race goes on
            notes.append(f"{label} not raced: {type(exc).__name__}: {exc}")

    add("unmodified", lambda: PlanContender("unmodified", space.decode(space.default_vector()), loaded, profile,
                                            full_space=space, source="unmodified, all on the GPU",
                                            energy_watts=watts))
    reason = accelerate_available()
    if reason is None:
        if tier == "gpu":  # CPU offload: the rest in host memory (unbounded in practice), copied per forward
            host = int(torch.cuda.get_device_properties(0).total_memory) * 4
            memory, main = {0: budget, "cpu": host}, "cuda:0"
        else:  # disk offload: the rest on disk, read per forward
            memory, main = {"cpu": budget}, "cpu"
        add("accelerate offload", lambda: AccelerateContender("accelerate offload", loaded.model, max_memory=memory,
                                                              main_device=main))
    else:
        notes.append(f"accelerate offload not raced: {reason}")
    float_name = str(next(loaded.model.parameters()).dtype).removeprefix("torch.")
    streamed_label = f"streamed {float_name}"
    streamed = fill_within(space, space.default_vector(), budget, tiers)
    if streamed is None:
        notes.append(f"{streamed_label} not raced: does not fit {budget} B even with every block streamed")
    else:
        plan = space.decode(streamed, metadata={"proposer": "demo:streamed-float-at-budget"})
        add(streamed_label, lambda: PlanContender(streamed_label, plan, loaded, profile, full_space=space,
                                                  source="the runtime's streaming, weights unchanged",
                                                  energy_watts=watts))
    for alt in uniform_at_budget(space, budget, tiers):
        if alt.plan is None:
            notes.append(f"{alt.label} not raced: {alt.skipped}")
            continue
        add(alt.label, lambda alt=alt: PlanContender(alt.label, alt.plan, loaded, profile, full_space=space,
                                                     source=f"{alt.label}, streamed within the budget",
                                                     energy_watts=watts))
    seconds["prepare"] = time.perf_counter() - t

    t = time.perf_counter()
    generator = torch.Generator().manual_seed(settings.seed)
    ids = torch.randint(0, int(loaded.model.config.vocab_size), (1, PROMPT_TOKENS), generator=generator)
    try:
        say("race", f"{len(contenders)} contenders, {ROUNDS} interleaved rounds of up to {settings.tokens} tokens")
        comparison = race(contenders, ids, tokens=settings.tokens, rounds=ROUNDS, watts=watts, budget_s=RACE_BUDGET_S,
                          progress=lambda message: say("race", message))
    finally:
        for c in contenders:
            c.close()
        contenders.clear()
    seconds["race"] = time.perf_counter() - t

    t = time.perf_counter()
    say("quality", f"measuring each row's precision rule on {settings.quality_model}")
    proxy_quality(comparison.rows, settings, profile)
    seconds["quality"] = time.perf_counter() - t
    judge(comparison, budget=budget, tiers=tiers, max_quality_loss=settings.max_quality_loss)
    chosen = pick(comparison)
    standings = [standing(comparison, chosen, r, tiers) for r in comparison.rows if r is not chosen] if chosen else []
    return StreamingResult(profile=profile, model=settings.model, model_bytes=total, budget_bytes=budget, tiers=tiers,
                           comparison=comparison, chosen=chosen, standings=standings, notes=notes, seconds=seconds)


__all__ = ["StreamingResult", "StreamingSettings", "proxy_quality", "run_streaming_demo"]
