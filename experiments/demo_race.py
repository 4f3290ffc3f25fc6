"""The search demo's race: what a user would do otherwise at the same budget, raced against the search's pick.

Rows: the unmodified model (the reference; over the budget), accelerate offload at the budget (on a GPU machine the
budget on the GPU and the rest on disk, else ``max_memory={"cpu": budget}``: disk offload), uniform int8 and
uniform int4 placed within the budget (``demo_alternatives``), the sweep's knapsack at the budget, and the search's
verified pick (raced once if it equals a baseline). All are measured by ``demo_compare.race``; each row that cannot
be built says why in the notes. ``experiments.demo_flow`` calls :func:`race_at_budget`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

GENERATE_REPEATS = 3  # interleaved rounds after one warm-up; medians are shown (shared machines are noisy)
RACE_BUDGET_S = 10.0  # the race cuts its token count so that its rounds fit this, by the warm-up's speed


# long: builds every contender (each may be skipped with its reason), races them, judges and closes them
def race_at_budget(settings: Any, loaded: Any, profile: Any, evaluator: Any, space: Any, result: Any,
          unmodified: Any, search_pick: tuple[Any, str] | None, budget: int, notes: list[str],
          say: Callable[[str, str], None], known_quality: dict[str, float] | None = None) -> tuple[Any, list[str], str | None]:
    """Unmodified, accelerate, uniform int8/int4, knapsack and the search's pick, raced in one harness."""
    from autosurgeon.cost.base import mean_watts
    from experiments.demo_alternatives import knapsack_from_sweep, uniform_at_budget
    from experiments.demo_compare import judge, race, standing
    from experiments.demo_compare import pick as pick_row
    from experiments.demo_contenders import (
        AccelerateContender,
        PlanContender,
        accelerate_available,
    )

    tiers = ("gpu", "cpu")
    watts = mean_watts(profile, 1.0)
    full = evaluator._full_space if evaluator._full_space is not None else None
    contenders: list[Any] = []

    def add_plan(label: str, plan: Any, source: str) -> None:
        try:
            contenders.append(PlanContender(label, plan, loaded, profile, full_space=full, source=source,
                                            energy_watts=watts))
        except Exception as exc:  # noqa: BLE001 - a row that cannot be built says why; the race goes on
            notes.append(f"{label} not raced: {type(exc).__name__}: {exc}")

    say("race", "building the same-budget alternatives: accelerate offload, uniform int8, uniform int4, knapsack")
    add_plan("unmodified", unmodified, "unmodified")
    reason = accelerate_available()
    if reason is None:
        # The budget bounds GPU+CPU bytes: on a GPU, accelerate gets it on the GPU and the rest goes to disk.
        gpu = any(u.kind == "gpu" for u in profile.units) and torch.cuda.is_available()
        memory, main = ({0: budget, "cpu": 0}, "cuda:0") if gpu else ({"cpu": budget}, "cpu")
        try:
            contenders.append(AccelerateContender("accelerate offload", loaded.model, max_memory=memory,
                                                  main_device=main))
        except Exception as exc:  # noqa: BLE001 - accelerate's own failure names the row it cost
            notes.append(f"accelerate offload not raced: {type(exc).__name__}: {exc}")
    else:
        notes.append(f"accelerate offload not raced: {reason}")
    seen: dict[str, str] = {}  # plan JSON -> row label
    alternatives = [*uniform_at_budget(space, budget, tiers), knapsack_from_sweep(result)]
    for alt in alternatives:
        if alt.plan is None:
            notes.append(f"{alt.label} not raced: {alt.skipped}")
            continue
        seen[alt.plan.to_json(indent=None)] = alt.label
        add_plan(alt.label, alt.plan, f"baseline {alt.label} at the budget")
    pick_label = None
    if search_pick is not None:
        plan, source = search_pick
        pick_label = seen.get(plan.to_json(indent=None))
        if pick_label is not None:
            notes.append(f"the search's pick ({source}) is the same plan as the {pick_label} baseline; raced once")
        else:
            pick_label = "search's pick"
            add_plan(pick_label, plan, source)
    try:
        say("race", f"{len(contenders)} contenders, {GENERATE_REPEATS} interleaved rounds of {settings.tokens} tokens")
        ids = torch.tensor([list(settings.prompt.encode("utf-8"))], dtype=torch.long)
        comparison = race(contenders, ids, tokens=settings.tokens, rounds=GENERATE_REPEATS,
                          watts=watts, quality=evaluator.quality_evaluator, budget_s=RACE_BUDGET_S,
                          known_quality={k: v for k, v in (known_quality or {}).items()
                                         if k in {"unmodified", pick_label}},
                          progress=lambda message: say("race", message))
    finally:
        for c in contenders:
            c.close()
    judge(comparison, budget=budget, tiers=tiers, max_quality_loss=settings.max_quality_loss)
    chosen = pick_row(comparison)
    standings = ([standing(comparison, chosen, r) for r in comparison.rows if r is not chosen]
                 if chosen is not None else [])
    return comparison, standings, pick_label


__all__ = ["GENERATE_REPEATS", "RACE_BUDGET_S", "race_at_budget"]
