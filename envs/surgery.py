"""SurgeryEnv: model surgery as a Gymnasium environment, one step per decision unit."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from autosurgeon._logging import get_logger
from autosurgeon.cost.footprint import FootprintTracker
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.hardware.power_cap import resolve_power_cap
from autosurgeon.hardware.power_modes import current_mode
from autosurgeon.hardware.resolve import resolve_profile
from autosurgeon.knobs import SESSION_KNOBS
from autosurgeon.quality.settings import QualitySettings
from envs.context import ModelContext, build_context
from envs.observation import OBJECTIVES, OBS_CLIP, assemble, layout_for
from envs.reward import RewardConfig, episode_reward, improvement_of, normalised

logger = get_logger(__name__)

DEFAULT_MODEL = "tiny-llama-test"
# Knobs whose choice changes the plan's memory: the budget shield filters their masks. Every session knob
# does (autosurgeon.cost.footprint: the KV cache's precision, budget, window and tier; the prefetch depth's
# staging and the expert cache).
SHIELDED_KNOBS = ("placement", "precision", "group_size", *SESSION_KNOBS)


class SurgeryEnv(gym.Env):
    """Choose every surgery decision of a model, unit by unit, for a device, a preference and a budget.

    Each episode samples (from ``self.np_random``) one of the env's models, a preference vector over
    (latency, memory, energy) from a flat Dirichlet (``preference_alphas``: a mix of concentrations), and a memory budget between the smallest reachable
    memory and the unmodified model's (``budget_range`` of the way). It then walks the model's decision
    units in SearchSpace order (``envs.observation.decision_units``: block placements first, then leaves,
    then fusion groups): one step decides every knob of one unit. The finished plan is evaluated once.

    Defaults (``gymnasium.make("AutoSurgeon/Surgery-v0")``): the zoo's ``tiny-llama-test`` built on the
    meta device (no training, no download), this machine's ``"local"`` profile (measured once and cached
    by ``autosurgeon.hardware.resolve``), the analytic evaluator (roofline cost model, ~1 ms per plan), knobs
    precision and placement. That is the fastest honest default: every figure comes from the real cost
    model on the real architecture; pass ``evaluator="profiled"`` (per-unit runtime measurements, real
    weights) or ``"runtime"`` (the plan is applied and run end to end) for measured rewards.

    ## Action Space

    ``MultiDiscrete([6, 7, 4, 16, 3, 2])``: one entry per knob of ``ACTION_KNOBS`` (placement, precision,
    group_size, kernel, layout, fusion), each over the knob's whole vocabulary in SearchSpace order
    (index 0 = unmodified). The shape is the same for every model and device.

    Session knobs (opt-in: ``knobs`` naming any of ``kv_precision``, ``kv_budget``, ``kv_tier``,
    ``kv_window``, ``prefetch``, ``prefetch_depth``) append one entry each, in that order, with the space's
    fixed choice counts (3, 4, 2, 5, 4, 5; ``envs.observation.layout_for``): e.g.
    ``MultiDiscrete([6, 7, 4, 16, 3, 2, 3, 4])`` for ``precision,placement,kv_precision,kv_budget``. They
    are decided in one last step, the model-level ``"<session>"`` unit (masks from the space: a dense
    model allows prefetch "none" only, a CPU-only profile KV tier "cpu" only; :meth:`action_mask_reasons`
    says why). A model without a KV cache (an image classifier) has no KV variables: those entries stay
    masked to index 0. ``self.layout`` is the env's :class:`envs.observation.ObservationLayout`.

    :meth:`action_masks` gives the flat valid-choice mask (sb3-contrib ``MaskablePPO``): knobs the unit lacks
    allow only index 0; a knob whose rule depends on another knob of the *same* unit (group_size and kernel on
    precision, a block's layout on its placement) allows every choice valid under *some* valid parent choice,
    and the env moves it to the nearest valid choice after the parent is set (``info["repaired"]`` counts these;
    with the default knobs there are none). Invalid actions are never applied: they are repaired the same way.

    Budget shield (``budget_shield=True``, default): the masks of memory knobs (placement, precision,
    group_size, and the session knobs) also drop choices after which the memory budget can no longer be met —
    judged by completing the plan with the smallest-footprint choices. Sampled budgets are never below the
    smallest reachable memory, so a masked policy meets them by construction (up to the footprint's non-additive
    staging terms); the policy still learns *where* to spend the budget. ``budget_shield=False`` leaves
    compliance to the reward's penalty alone.

    ## Observation Space

    ``Box(-5, 5, (N,), float32)`` with ``N = self.layout.size`` (``ObservationLayout().size`` without
    session knobs): the unit's model-agnostic features,
    the device's features, running totals of the plan so far against the budget and the unmodified model,
    the previous action (one-hot) and the preference (see ``envs.observation``).

    ## Rewards

    0 on every step but the last; on the last, the evaluated plan's preference-weighted improvement over
    the unmodified model minus penalties for exceeding the memory budget, the quality-loss bound or the
    power cap (``envs.reward``). Each objective's improvement is divided by what reference plans reach on it
    for this model and device (``envs.reward_scale``) and capped to [-1, 1], so no objective swamps the
    preference. With a measuring evaluator the reward is measured, hence ``nondeterministic=True``.

    ``reward_shaping=True`` (what ``agents.ppo.train`` uses) adds potential-based shaping (Ng, Harada & Russell
    1999): each step earns ``gamma * phi(s') - phi(s)``, ``phi`` the preference-weighted score of the plan so
    far (undecided units unmodified) as the estimator prices it for the observation anyway, and the last step
    earns the episode reward minus ``phi`` of the state before it. The best policy is unchanged for the same
    ``gamma`` (``shaping_gamma``, PPO's), but every decision is credited at once: without it, a 7B shape's 130
    decisions share one terminal scalar and 15k timesteps taught a policy nothing about precision (session 5).

    ## Power cap

    ``power_cap_w`` (watts, ``autosurgeon.hardware.power_cap.resolve_power_cap``): on a paper profile the env works on the
    profile in the fastest power mode within the cap (``self.profile``; its rates and energy are that
    mode's, so every plan's mean power is within the cap); on a measured profile (clocks and power limits
    are never changed) a finished plan whose mean power (energy / latency) exceeds the cap is penalised like
    a plan over the memory budget (``info["power_violation"]``, ``info["power_w"]``). ``self.power_cap``
    holds the resolved cap (None without one).

    ## Quality

    ``quality`` (``autosurgeon.quality.settings.QualitySettings``, or a mapping with ``data``, ``samples``,
    ``method``: the ``--data``, ``--quality-samples``, ``--quality-method`` every command takes) sets how a
    measuring (runtime) evaluator scores a finished plan's quality; default: each task's default method.

    ## Starting State

    No decision taken: the plan is the unmodified model. ``reset(options=...)`` may fix ``model`` (a spec
    of the env or an index), ``preference`` (3 non-negative weights summing to 1, or a mapping
    objective -> weight), ``memory_budget`` (bytes) or ``budget_fraction`` (0 = smallest, 1 = unmodified).

    ## Episode End

    Terminated after the model's last decision unit (episode length = number of units: 18 for
    tiny-llama-test with the default knobs, one more with session knobs). No truncation: episodes end on
    their own, so the registration sets no ``max_episode_steps``.

    ## Version History

    * v0: initial version (knobs precision + placement by default; analytic evaluator by default; budget
      shield on by default). Later additions that change no default space: the ``power_cap_w`` option;
      session knobs (opt-in, their own layout); the ``quality`` option; per-objective reward scores over
      reachable gains, capped (``RewardConfig(scale="raw")`` restores the uncapped reward).
    """

    metadata = {"render_modes": []}

    def __init__(self, *, models: str | Sequence[str] = DEFAULT_MODEL, device: Any = "local",
                 evaluator: str = "analytic", knobs: Sequence[str] = ("precision", "placement"),
                 budget_range: tuple[float, float] = (0.1, 1.0), memory_budget: float | None = None,
                 preference: Any = None, reward: RewardConfig | None = None, sensitivity: bool = False,
                 budget_shield: bool = True, render_mode: str | None = None,
                 power_cap_w: float | None = None, quality: Any = None, reward_shaping: bool = False,
                 shaping_gamma: float = 0.99, preference_alphas: Sequence[float] = (1.0,)) -> None:

        if render_mode is not None:
            raise InvalidArgumentError(f"`render_mode` must be None (SurgeryEnv does not render), got {render_mode!r}.")
        specs = [models] if isinstance(models, str) else list(models)
        if not specs or not all(isinstance(s, str) and s for s in specs):
            raise InvalidArgumentError(f"`models` must be a non-empty model spec or list of specs, got {models!r}.")
        lo, hi = budget_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise InvalidArgumentError(f"`budget_range` must satisfy 0 <= low <= high <= 1, got {budget_range!r}.")
        profile = resolve_profile(device)
        self.power_cap = (None if power_cap_w is None else
                          resolve_power_cap(profile, power_cap_w, argument="power_cap_w"))
        self.profile = profile if self.power_cap is None else self.power_cap.profile
        if quality is None or isinstance(quality, QualitySettings):
            self.quality = quality or QualitySettings()
        elif isinstance(quality, Mapping):
            unknown = sorted(set(quality) - {"data", "samples", "method"})
            if unknown:
                raise InvalidArgumentError(f"`quality` has unknown key(s) {unknown}; use data, samples, method.")
            self.quality = QualitySettings(**quality)
        else:
            raise InvalidArgumentError(f"`quality` must be a QualitySettings or a mapping with data/samples/method, "
                                       f"got {quality!r}.")
        self.contexts: list[ModelContext] = [build_context(s, self.profile, evaluator=evaluator, knobs=knobs,
                                                           sensitivity=sensitivity, quality=self.quality)
                                             for s in specs]
        self.specs = specs
        self.evaluator_name = evaluator
        self.knobs = tuple(knobs)
        self.budget_range = (float(lo), float(hi))
        self.fixed_budget = memory_budget
        self.fixed_preference = None if preference is None else parse_preference(preference)
        alphas = tuple(float(a) for a in preference_alphas)
        if not alphas or not all(np.isfinite(a) and a > 0 for a in alphas):
            raise InvalidArgumentError(f"`preference_alphas` must be one or more Dirichlet concentrations > 0, got "
                                       f"{preference_alphas!r}.")
        self.preference_alphas = alphas
        self.reward_config = reward or RewardConfig()
        if not 0.0 < float(shaping_gamma) <= 1.0:
            raise InvalidArgumentError(f"`shaping_gamma` must be in (0, 1] (PPO's gamma), got {shaping_gamma!r}.")
        self.reward_shaping = bool(reward_shaping)
        self.shaping_gamma = float(shaping_gamma)
        self.potential = 0.0  # phi of the current state (reward_shaping; 0 for the unmodified plan)
        self.budget_shield = bool(budget_shield)
        self._mask_cache: tuple[Any, np.ndarray] | None = None
        self._pricers: dict[Any, _Pricer] = {}  # per context: the shield's and the observation's incremental repair
        self._episode = 0
        self.layout = layout_for(self.knobs)
        self.action_space = spaces.MultiDiscrete(np.array(self.layout.max_choices, dtype=np.int64))
        self.observation_space = spaces.Box(-OBS_CLIP, OBS_CLIP, shape=(self.layout.size,), dtype=np.float32)
        self.render_mode = None
        self.ctx = self.contexts[0]
        self.x = self.ctx.space.default_vector()
        self.t = 0
        self.previous: np.ndarray | None = None
        self.preference = np.full(len(OBJECTIVES), 1.0 / len(OBJECTIVES))
        self.budget = float(self.ctx.base.objective("memory"))

    @property
    def power_mode_name(self) -> str:
        """The power mode the env's profile is in (the cap's mode, or the profile's own)."""

        return current_mode(self.profile).name

    # ------------------------------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        model = options.get("model")
        if model is None:
            self.ctx = self.contexts[int(self.np_random.integers(len(self.contexts)))]
        elif isinstance(model, (int, np.integer)) and 0 <= int(model) < len(self.contexts):
            self.ctx = self.contexts[int(model)]
        elif model in self.specs:
            self.ctx = self.contexts[self.specs.index(model)]
        else:
            raise InvalidArgumentError(f"options['model'] must be one of {self.specs} or an index, got {model!r}.")
        pref = options.get("preference", self.fixed_preference)
        self.preference = parse_preference(pref) if pref is not None else self._sample_preference()
        base_mem = float(self.ctx.base.objective("memory"))
        if options.get("memory_budget") is not None:
            self.budget = float(options["memory_budget"])
        elif self.fixed_budget is not None and "budget_fraction" not in options:
            self.budget = float(self.fixed_budget)
        else:
            frac = options.get("budget_fraction")
            frac = float(self.np_random.uniform(*self.budget_range)) if frac is None else float(frac)
            self.budget = self.ctx.min_memory + frac * max(base_mem - self.ctx.min_memory, 0.0)
        if not self.budget > 0:
            raise InvalidArgumentError(f"memory budget must be > 0 bytes, got {self.budget!r}.")
        self.x = self.ctx.space.default_vector()
        self.t = 0
        self.previous = None
        self.repaired = 0
        self._episode += 1
        return self._observation(), {"model": self.ctx.spec, "memory_budget": self.budget,
                                     "preference": self.preference.tolist()}

    def _sample_preference(self) -> np.ndarray:
        """A Dirichlet draw from ``self.np_random``; with several ``preference_alphas`` one is picked first (one
        alpha: no extra draw, so the stream is version 0's). An alpha below 1 puts the weight near the simplex's
        corners and edges, where ``apply --front K`` asks too (its preferences start with the pure objectives)."""
        alpha = self.preference_alphas[0]
        if len(self.preference_alphas) > 1:
            alpha = self.preference_alphas[int(self.np_random.integers(len(self.preference_alphas)))]
        return self.np_random.dirichlet(np.full(len(OBJECTIVES), alpha))

    def state_dict(self) -> dict[str, Any]:
        """The episode in progress and ``np_random``, as JSON data (training checkpoints, ``agents.train_state``)."""
        return {"context": self.contexts.index(self.ctx), "preference": self.preference.tolist(),
                "budget": float(self.budget), "x": [int(v) for v in self.x], "t": int(self.t),
                "previous": None if self.previous is None else [int(v) for v in self.previous],
                "repaired": int(self.repaired), "episode": int(self._episode), "potential": float(self.potential),
                "np_random": self.np_random.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the episode ``state`` (from :meth:`state_dict`) recorded."""
        self.ctx = self.contexts[int(state["context"])]
        self.preference = np.asarray(state["preference"], dtype=np.float64)
        self.budget = float(state["budget"])
        self.x = np.asarray(state["x"], dtype=self.ctx.space.default_vector().dtype)
        self.t = int(state["t"])
        self.previous = None if state["previous"] is None else np.asarray(state["previous"], dtype=np.int64)
        self.repaired = int(state["repaired"])
        self._episode = int(state["episode"])
        self.potential = float(state.get("potential", 0.0))  # checkpoints before shaping: unused, 0
        self._mask_cache = None
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = dict(state["np_random"])
        self._np_random = rng

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self.t >= len(self.ctx.units):
            raise InvalidArgumentError("step() called after the episode ended; call reset().")
        action = self._checked_action(action)
        self.x, repaired = self._decided(action)
        self.repaired += repaired
        self.previous = np.clip(action, 0, np.array(self.layout.max_choices) - 1)
        self.t += 1
        terminated = self.t == len(self.ctx.units)
        reward, info = 0.0, {"repaired": self.repaired}
        before = self.potential
        obs = self._observation()  # updates self.potential
        if self.reward_shaping and not terminated:
            reward = self.shaping_gamma * self.potential - before
        if terminated:
            metrics = self.ctx.evaluator.evaluate(self.x)
            reward, rinfo = episode_reward(metrics, self.ctx.base, self.preference, objectives=OBJECTIVES,
                                           memory_budget=self.budget, config=self.reward_config,
                                           power_cap_w=None if self.power_cap is None else self.power_cap.watts,
                                           gains=self.ctx.gains)
            info.update(rinfo, model=self.ctx.spec, plan_vector=self.x.tolist(), latency_s=metrics.latency_s,
                        energy_j=metrics.energy_j, evaluator=metrics.evaluator)
            if self.reward_shaping:
                reward -= before  # phi(terminal) = 0: the episode's shaped return telescopes to its reward
        return obs, float(reward), terminated, False, info

    def pending_plan(self, action: Any) -> np.ndarray | None:
        """The plan vector ``step(action)`` would evaluate (it ends the episode), else None; changes nothing.

        Lets a vectorised env measure the plans of all its envs' finishing steps as one batch, in parallel
        (``agents.dask_vec_env``), before stepping them one by one from the evaluator's cache."""
        if self.t != len(self.ctx.units) - 1:
            return None
        return self._decided(self._checked_action(action))[0]

    def _checked_action(self, action: Any) -> np.ndarray:
        action = np.asarray(action, dtype=np.int64).reshape(-1)
        knobs = self.layout.action_knobs
        if action.shape != (len(knobs),):
            raise InvalidArgumentError(f"`action` must have {len(knobs)} entries ({', '.join(knobs)}), got shape "
                                       f"{action.shape}.")
        return action

    def _decided(self, action: np.ndarray) -> tuple[np.ndarray, int]:
        """(the plan vector with the current unit decided by ``action``, choices repaired to valid ones)."""
        knobs = self.layout.action_knobs
        space = self.ctx.space
        x, repaired = self.x.copy(), 0
        for i in self.ctx.units[self.t].variables:
            v = space.variables[i]
            j = int(np.clip(action[knobs.index(v.knob)], 0, v.n - 1))
            mask, _ = space.allowed(i, x)
            if not mask[j]:
                j = space._nearest(v, j, mask)
                repaired += 1
            x[i] = j
        return x, repaired

    def action_masks(self) -> np.ndarray:
        """Flat bool mask over ``sum(self.layout.max_choices)`` entries for the current unit (class docstring)."""
        if self._mask_cache is not None and self._mask_cache[0] == self._episode_step_key():
            return self._mask_cache[1].copy()
        masks = self._action_masks()
        self._mask_cache = (self._episode_step_key(), masks)
        return masks.copy()

    def _episode_step_key(self) -> Any:
        return (id(self.ctx), self._episode, self.t)

    def _action_masks(self) -> np.ndarray:
        out = []
        if self.t >= len(self.ctx.units):
            for n in self.layout.max_choices:
                out.append(np.eye(1, n, 0, dtype=bool)[0])
            return np.concatenate(out)
        space = self.ctx.space
        unit = self.ctx.units[self.t]
        by_knob = {space.variables[i].knob: i for i in unit.variables}
        for knob, n in zip(self.layout.action_knobs, self.layout.max_choices):
            m = np.zeros(n, dtype=bool)
            i = by_knob.get(knob)
            if i is None:
                m[0] = True
            else:
                v = space.variables[i]
                m[:v.n] = self._mask(i, unit.variables)
                if self.budget_shield and knob in SHIELDED_KNOBS:
                    m[:v.n] = self._shield(i, m[:v.n])
            out.append(m)
        return np.concatenate(out)

    def action_mask_reasons(self) -> dict[str, dict[str, str]]:
        """Why choices of the current unit are masked: knob -> {choice: reason} (the space's reasons, and the
        budget shield's), for the knobs the unit has; empty after the episode ended."""
        if self.t >= len(self.ctx.units):
            return {}
        space, unit = self.ctx.space, self.ctx.units[self.t]
        flat = self.action_masks()
        offsets = dict(zip(self.layout.action_knobs, np.cumsum([0, *self.layout.max_choices[:-1]])))
        out: dict[str, dict[str, str]] = {}
        for i in unit.variables:
            v = space.variables[i]
            mask = flat[offsets[v.knob]:offsets[v.knob] + v.n]
            _, reasons = space.allowed(i, self.x)
            why = {}
            for j, c in enumerate(v.choices):
                if not mask[j]:
                    why[str(c)] = reasons.get(str(c), f"the memory budget ({self.budget:.0f} B) cannot be met after "
                                                      "it (budget shield)")
            out[v.knob] = why
        return out

    def _shield(self, i: int, mask: np.ndarray) -> np.ndarray:
        """Keep the choices after which the plan can still meet the memory budget.

        Feasible = the plan with this choice, every undecided variable at the smallest-footprint
        completion (``plan_check.smallest_footprint``'s vector, repaired to validity), fits the budget.
        If no choice is feasible the one with the least memory is kept, so the mask is never empty.
        Each candidate is repaired from the previous one (``SearchSpace.repair_one``) and priced by a
        footprint tracker kept per model (``_Pricer``), which recomputes only the blocks that changed.
        """

        space, ctx = self.ctx.space, self.ctx
        candidates = np.nonzero(mask)[0]
        if not candidates.size:
            return mask
        undecided = [j for u in ctx.units[self.t:] for j in u.variables if j != i]
        y = self.x.copy()
        y[undecided] = ctx.smallest[undecided]
        pricer = self._pricers.get(id(ctx))
        if pricer is None:
            pricer = self._pricers[id(ctx)] = _Pricer(space)
        memory = {}
        for c in candidates:
            y[i] = int(c)
            tiers = pricer.tiers(y)
            memory[int(c)] = tiers.get("gpu", 0) + tiers.get("cpu", 0)
        ok = np.zeros_like(mask)
        for c, mem in memory.items():
            ok[c] = mem <= self.budget
        if not ok.any():
            ok[min(memory, key=lambda c: (memory[c], c))] = True
        return ok

    # ------------------------------------------------------------------------------------------ helpers
    def _mask(self, i: int, unit_vars: Sequence[int]) -> np.ndarray:
        space = self.ctx.space
        parent = space.variables[i].parent
        if parent is None or parent not in unit_vars:
            return space.allowed(i, self.x)[0]
        # Parent decided in this same step: any choice valid under some valid parent choice.
        x = self.x.copy()
        union = np.zeros(space.variables[i].n, dtype=bool)
        for c in np.nonzero(self._mask(parent, unit_vars))[0]:
            x[parent] = int(c)
            union |= space.allowed(i, x)[0]
        return union

    def _observation(self) -> np.ndarray:
        ctx = self.ctx
        base = ctx.base
        current = ctx.estimator.evaluate(self._repaired_x()) if self.t else ctx.estimator.evaluate(self.x)
        base_mem = float(base.objective("memory"))
        mem = float(current.objective("memory"))
        energy_ratio = (current.energy_j / base.energy_j) if current.energy_j and base.energy_j else 1.0
        est_base = ctx.estimate_base if ctx.estimate_base is not None else base
        self.potential = improvement_of(normalised(current, est_base, OBJECTIVES), ctx.gains, self.preference,
                                        self.reward_config)[0]
        totals = {"memory_vs_budget": mem / self.budget, "memory_vs_base": mem / max(base_mem, 1.0),
                  "latency_vs_base": current.latency_s / base.latency_s, "energy_vs_base": energy_ratio,
                  "budget_vs_base": self.budget / max(base_mem, 1.0), "progress": self.t / len(ctx.units)}
        index = min(self.t, len(ctx.units) - 1)
        unit = ctx.unit_features[index] if self.t < len(ctx.units) else np.zeros_like(ctx.unit_features[0])
        return assemble(self.layout, unit=unit, hardware=ctx.hardware, totals=totals, previous=self.previous,
                        preference=self.preference)

    def _repaired_x(self) -> np.ndarray:
        """``space.repair(self.x)``, repaired from the last step's by the entries that changed."""
        chain = self._pricers.get((id(self.ctx), "x"))
        if chain is None:
            chain = self._pricers[(id(self.ctx), "x")] = _Pricer(self.ctx.space)
        return chain.repaired(self.x)

    def plan(self) -> Any:
        """The current decisions as a Plan (valid: ``space.repair`` leaves a valid vector unchanged)."""
        space = self.ctx.space
        return space.decode(space.repair(self.x), metadata={"proposer": "SurgeryEnv"})


class _Pricer:
    """``plan_memory(space, space.repair(y))`` for a stream of vectors ``y`` that differ in few entries.

    Keeps the last ``y``, its repair and a :class:`FootprintTracker` on it: a new ``y`` is repaired entry by
    entry from the last (``SearchSpace.repair_one``; a full ``repair`` when many entries differ) and the
    tracker recomputes only the blocks whose decisions changed (memoised per block configuration)."""

    FULL_REPAIR_AFTER = 16  # differing entries beyond which one full repair is cheaper

    def __init__(self, space: Any) -> None:
        self.space = space
        self.y = space.default_vector()
        self.z = space.repair(self.y)
        self._tracker: FootprintTracker | None = None

    def repaired(self, y: np.ndarray) -> np.ndarray:
        diff = np.nonzero(self.y != y)[0]
        if diff.size > self.FULL_REPAIR_AFTER:
            self.y, self.z = y.copy(), self.space.repair(y)
        else:
            for j in diff:
                self.y[j] = y[j]
                self.z = self.space.repair_one(self.y, self.z, int(j))
        return self.z

    def tiers(self, y: np.ndarray) -> dict[str, int]:
        z = self.repaired(y)
        if self._tracker is None:
            self._tracker = FootprintTracker(self.space, z)
        for j in np.nonzero(self._tracker.x != z)[0]:
            self._tracker.set(int(j), int(z[j]))
        return self._tracker.tiers()


def parse_preference(value: Any) -> np.ndarray:
    """A preference over ``OBJECTIVES`` as an array; mapping, sequence or ``"latency=0.6,memory=0.4"``.

    Objectives missing from a mapping get 0. Errors name the offending value: unknown objective,
    negative or non-finite weight, weights not summing to 1 (within 1e-6).
    """
    if isinstance(value, str):
        pairs = {}
        for part in value.split(","):
            name, sep, weight = part.partition("=")
            name = name.strip()
            if not sep or not name:
                raise InvalidArgumentError(f"preference {value!r}: each entry must be objective=weight "
                                           f"(e.g. latency=0.6,memory=0.3,energy=0.1), got {part!r}.")
            try:
                pairs[name] = float(weight)
            except ValueError:
                raise InvalidArgumentError(f"preference weight of {name!r} must be a number, got {weight!r}.") from None
        value = pairs
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in OBJECTIVES]
        if unknown:
            raise InvalidArgumentError(f"preference names unknown objective {unknown[0]!r}; objectives are "
                                       f"{', '.join(OBJECTIVES)}.")
        arr = np.array([float(value.get(k, 0.0)) for k in OBJECTIVES], dtype=np.float64)
        named = dict(value)
    else:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
        if arr.shape != (len(OBJECTIVES),):
            raise InvalidArgumentError(f"preference must have {len(OBJECTIVES)} weights ({', '.join(OBJECTIVES)}), "
                                       f"got {arr.shape[0]}.")
        named = dict(zip(OBJECTIVES, arr.tolist()))
    for k, w in named.items():
        if not np.isfinite(w) or w < 0:
            raise InvalidArgumentError(f"preference weight of {k!r} must be a finite number >= 0, got {w}.")
    if abs(arr.sum() - 1.0) > 1e-6:
        raise InvalidArgumentError(f"preference weights must sum to 1 (within 1e-6), got {arr.sum():.6g} "
                                   f"from {named}.")
    return arr


__all__ = ["DEFAULT_MODEL", "SurgeryEnv", "parse_preference"]
