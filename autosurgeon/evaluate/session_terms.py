"""The cheap evaluators' session terms: memory with KV cache and experts, and their estimated step cost."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from autosurgeon.cost.footprint import expert_footprint, kv_footprint, memory_breakdown, session_values
from autosurgeon.cost.kv import expert_step_delta, kv_step_delta
from autosurgeon.multi.footprint import device_footprint, multi_gpu_space


class SessionTerms:
    """Mixed into :class:`~autosurgeon.evaluate.base.Evaluator`: the plan's session (KV cache, streamed experts)
    priced on paper (``cost.kv``) and counted in bytes (``cost.footprint``)."""

    def _session(self, x: np.ndarray) -> dict[str, Any]:
        """The session decisions of vector ``x`` (its session variables' values; {} in spaces without them)."""

        return session_values(self.space, x)

    def _memory(self, x: np.ndarray, lookahead: int) -> tuple[dict[str, int], dict[str, Any]]:
        """``(peak bytes per tier, extra)``: footprint at the workload's batch and context, with KV/experts detail."""

        detail = memory_breakdown(self.space, x, lookahead=lookahead, batch=self.workload.batch,
                                  context=self.workload.context)
        extra: dict[str, Any] = {}
        if detail["kv"] is not None:
            extra["kv"] = {k: detail["kv"][k] for k in ("tier", "peak_bytes", "budget_bytes", "kept_tokens",
                                                          "evicted_tokens", "precision")}
        if detail["experts"] is not None:
            extra["experts"] = dict(detail["experts"])
        if multi_gpu_space(self.space):  # bytes per GPU: what each device must hold (objective "memory:device")
            extra["device_bytes"] = device_footprint(self.space, x, lookahead=lookahead).devices
        return detail["tiers"], extra

    def _kv_delta(self, x: np.ndarray, launch_overhead_s: float) -> dict[str, Any] | None:
        """The KV cache's estimated change to one decode step (``cost_kv``), None without a paged cache."""

        if self.workload.phase != "decode":
            return None
        session = self._session(x)
        kv = kv_footprint(self.space, self.space.values(x), session, batch=self.workload.batch,
                          context=self.workload.context)
        if kv is None:
            return None
        kind = "gpu" if kv["tier"] == "gpu" else self.space.default_placement.partition("<-")[0]
        unit = next((u for u in self.profile.units if u.kind == kind), self.profile.default_unit())
        return kv_step_delta(kv, record=self.space.session, bandwidth=unit.memory_bandwidth,
                             launch_overhead_s=launch_overhead_s, context=self.workload.context)

    def _expert_delta(self, x: np.ndarray, stream: Mapping[str, Mapping[str, Any]] | None = None
                      ) -> dict[str, Any] | None:
        """Streamed experts' estimated cost per decode step (``cost_kv.expert_step_delta``), None if not streamed.

        ``stream``: measured streaming costs per placement (``ProfiledTable.stream``); where the experts' link
        ("cpu<-disk", "gpu<-cpu") was measured, its per-fetch and per-byte costs replace the paper link."""

        if self.workload.phase != "decode":
            return None
        experts = expert_footprint(self.space, self.space.values(x), self._session(x))
        if experts is None:
            return None
        unit = next((u for u in self.profile.units if u.kind == experts["tier"]), self.profile.default_unit())
        out = expert_step_delta(experts, record=self.space.session, profile=self.profile, exec_unit=unit,
                                batch=self.workload.batch)
        measured = (stream or {}).get(f"{'gpu' if experts['tier'] == 'gpu' else 'cpu'}<-{experts['home']}")
        if out is not None and measured:
            out["delta_s"] = out["misses"] * measured["fetch_s"] + out["bytes"] * measured["s_per_byte"]
            out["link"] = "measured streaming costs of the profiled table"
        return out

    def _session_latency(self, x: np.ndarray, parts: dict[str, Any], *, launch_overhead_s: float,
                         stream: Mapping[str, Mapping[str, Any]] | None = None, kv_op: str = "") -> str:
        """Add the session's estimated KV and expert terms to ``parts`` (latency_s, busy_s); the method note."""
        notes = []
        kv = self._kv_delta(x, launch_overhead_s)
        if kv is not None:
            parts["kv_s"] = kv["delta_s"]
            notes.append(f"KV cache term {kv['delta_s'] * 1e6:+.1f} us{kv_op}")
        experts = self._expert_delta(x, stream)
        if experts is not None:
            parts["experts_s"] = experts["delta_s"]
            parts["expert_misses"] = experts["misses"]
            notes.append(f"expert misses {experts['misses']:.2f}/step at ASSUMED LRU hit rate "
                         f"{experts['hit_rate']:.2f} ({experts['link']}) {experts['delta_s'] * 1e6:+.1f} us")
        delta = parts.get("kv_s", 0.0) + parts.get("experts_s", 0.0)
        parts["latency_s"] = max(1e-9, parts["latency_s"] + delta)
        if "busy_s" in parts:
            parts["busy_s"] = max(0.0, parts["busy_s"] + parts.get("kv_s", 0.0))
        return (" + " + "; ".join(notes) + " (estimated, cost_kv)") if notes else ""
