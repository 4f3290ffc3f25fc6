"""The cheap evaluators' KV quality proxy: the KV sensitivity table scores a plan's KV decisions."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autosurgeon._logging import get_logger
from autosurgeon.cost.kv import has_kv_decisions
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.knobs import SESSION_UNIT
from autosurgeon.quality.sensitivity_kv import (
    QUALITY_KNOBS,
    KVSensitivitySettings,
    KVSensitivityTable,
    kv_table_key,
    measure_kv_sensitivity,
)

logger = get_logger(__name__)



class KVQualityProxy:
    """Mixed into :class:`~autosurgeon.evaluate.base.Evaluator` (see the package docstring)."""

    # ---- the KV quality proxy (sensitivity_kv)
    def _check_kv_sensitivity(self, value: Any) -> Any:

        if value is None or (isinstance(value, str) and value == "auto"):
            return value
        if not isinstance(value, (KVSensitivitySettings, KVSensitivityTable)):
            raise InvalidArgumentError(f"`kv_sensitivity` must be 'auto', a KVSensitivitySettings, a "
                                       f"KVSensitivityTable or None, got {value!r}.")
        if value.context != self.workload.context:
            raise InvalidArgumentError(
                f"`kv_sensitivity` is at context {value.context}, but the workload's context is "
                f"{self.workload.context} (kv_budget shares are of the workload's context); measure it with "
                f"KVSensitivitySettings(context={self.workload.context}) or pass 'auto'.")
        if isinstance(value, KVSensitivityTable):
            self._kv_table = value
        return value

    def _kv_quality_applies(self) -> bool:
        """Quality is estimated here, the model is an LM, and the space can decide what its KV cache reads."""

        return (self.kv_proxy and self.sensitivity is not None and self.workload.task == "causal-lm"
                and any(self.space.variable(SESSION_UNIT, k) is not None for k in QUALITY_KNOBS))

    def _kv_settings(self) -> Any:

        if isinstance(self.kv_sensitivity, KVSensitivitySettings):
            return self.kv_sensitivity
        return KVSensitivitySettings(context=self.workload.context, batch=self.workload.batch)

    def _kv_key(self) -> str | None:
        """The KV table's key (part of the evaluator's settings), known before the table is measured."""

        if self.kv_sensitivity is None:
            return None
        if self._kv_table is not None:
            return self._kv_table.key
        try:
            return kv_table_key(self.loaded, self._kv_settings())
        except InvalidArgumentError as exc:
            self._kv_unavailable = str(exc)
            return "unavailable"

    def kv_table(self) -> Any:
        """The KV sensitivity table this evaluator scores KV decisions with (measured or loaded on first use
        with ``kv_sensitivity="auto"``); None where there is none (the reason is logged once)."""
        if self._kv_table is not None or self.kv_sensitivity is None or self._kv_unavailable is not None:
            return self._kv_table

        try:
            self._kv_table = measure_kv_sensitivity(self.loaded, self._kv_settings())
        except InvalidArgumentError as exc:
            self._kv_unavailable = str(exc)
            logger.warning("no KV sensitivity table (%s); KV decisions score as lossless", exc)
        return self._kv_table

    def _kv_quality(self, session: Mapping[str, Any]) -> tuple[float, dict[str, Any]]:
        """``(nats the plan's KV decisions add to the mean NLL, extra)`` for the cheap evaluators' proxy."""

        if not has_kv_decisions(session):
            return 0.0, {}

        table = self.kv_table() if self._kv_quality_applies() else None
        if table is None:
            if all(session.get(k, ref) == ref for k, ref in QUALITY_KNOBS.items()):
                return 0.0, {}  # float pages, no budget, no window: the paged cache is lossless
            why = (self._kv_unavailable or ("kv_sensitivity=None" if self.kv_sensitivity is None else
                                            "the space has no kv_precision/kv_budget/kv_window variable"))
            return 0.0, {"quality_ignores_kv": True, "quality_kv_proxy": {"method": "none (scored as lossless)",
                                                                          "reason": why}}
        pred = table.predict(session)
        return pred["delta_nll"], {"quality_kv_proxy": {
            "method": "sensitivity_kv: per-choice kv_quality_loss measurements, precision + max(budget, window) nats",
            "table": table.key, "context": table.context, "seq_len": table.seq_len, "tokens": table.tokens,
            "kv_quality_loss": pred["kv_quality_loss"], "nats": pred["parts"], "unscored": pred["unscored"]}}

    def _quality_note(self, quality: float | None, qextra: Mapping[str, Any]) -> str:
        if quality is None:
            return ""
        proxy = qextra.get("quality_kv_proxy")
        if qextra.get("quality_proxy_method"):  # a classifier: flips from margin noise
            return "; quality: sensitivity proxy, " + qextra["quality_proxy_method"]
        if proxy is None:
            return "; quality: sensitivity proxy"
        if "table" not in proxy:
            return "; quality: sensitivity proxy (KV decisions scored as lossless: " + proxy["reason"] + ")"
        return (f"; quality: sensitivity proxy x KV sensitivity table (per-choice, combined; context "
                f"{proxy['context']}, decoded to {proxy['seq_len']} positions)")
