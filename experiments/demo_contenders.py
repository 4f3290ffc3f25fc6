"""What the demo races: one runnable *contender* per table row, each with the same small interface.

A contender generates greedily from token ids, says the bytes it holds per tier and how it counted them, and
exposes the module the quality evaluator scores. Two kinds:

* :class:`PlanContender`: a plan applied on the runtime (``apply_plan`` -> ``runtime.Session``): the unmodified
  model, the same-budget baselines (uniform int8/int4, knapsack) and the search's pick. Bytes: the runtime's
  TensorStore peaks per tier (what the budget is enforced on).
* :class:`AccelerateContender`: what a user would do otherwise with Hugging Face accelerate:
  ``infer_auto_device_map(max_memory=...)`` at the same budget + ``dispatch_model`` (CPU or disk offload).
  Bytes: the weights its device map puts on each tier (accelerate keeps no accounting of its own).

The harness that times them is ``experiments.demo_compare``; nothing here measures time.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from typing import Any

import torch

from autosurgeon._logging import get_logger

logger = get_logger(__name__)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


class PlanContender:
    """A plan applied to the model on the runtime (a copy: the loaded model stays as it was)."""

    kind = "plan"

    def __init__(self, label: str, plan: Any, loaded: Any, profile: Any, *, full_space: Any, source: str,
                 energy_watts: float | None = None, lookahead: int = 2) -> None:
        from autosurgeon.transforms import apply_plan

        self.label = label
        self.source = source
        if full_space is not None:  # knobs the plan's space left out take the full space's (repaired) defaults
            plan = replace(full_space.decode(full_space.repair(full_space.encode(plan)), metadata=plan.metadata),
                           session=plan.session)
        self.plan = plan
        self.session = apply_plan(loaded, plan, profile, inplace=False, space=full_space, lookahead=lookahead,
                                  energy_watts=energy_watts)
        self.device = next((d for d in getattr(self.session, "_devices", ["cpu"]) if str(d).startswith("cuda")),
                           "cpu")
        self.memory_method = "TensorStore peak per tier (the runtime's accounting, where budgets are enforced)"

    @property
    def model(self) -> Any:
        return self.session.model

    def generate(self, ids: torch.Tensor, tokens: int) -> list[int]:
        out = self.session.generate(ids, max_new_tokens=tokens)
        _sync(self.device)
        return out[0, ids.shape[1]:].tolist()

    def tier_bytes(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.session.stats().peak_bytes.items()}

    def close(self) -> None:
        self.session.close()


def accelerate_available() -> str | None:
    """None if accelerate imports, else the reason the row is skipped (and how to get it)."""
    try:
        import accelerate  # noqa: F401
    except ImportError as exc:
        return f"accelerate is not installed ({exc}); `pip install accelerate` adds this row"
    return None


class AccelerateContender:
    """Hugging Face accelerate at the same budget: ``infer_auto_device_map`` + ``dispatch_model``.

    Args:
        max_memory: accelerate's ``max_memory`` (``{"cpu": bytes}`` on a CPU: the rest goes to disk;
            ``{0: bytes, "cpu": bytes}`` on a GPU: the rest stays in host memory and is copied per forward).
        main_device: where inputs go and computation runs (``"cpu"`` or ``"cuda:0"``).
    """

    kind = "accelerate"

    def __init__(self, label: str, model: torch.nn.Module, *, max_memory: dict[Any, int], main_device: str) -> None:
        import copy

        from accelerate import dispatch_model, infer_auto_device_map

        self.label = label
        self.source = "accelerate " + _version()
        self.device = main_device
        self.offload_dir = tempfile.mkdtemp(prefix="autosurgeon-demo-accelerate-")
        model = copy.deepcopy(model).to("cpu")
        no_split = list(getattr(model, "_no_split_modules", None) or [])
        self.device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split)
        if "" in self.device_map:  # the whole model on one device: name its children, or dispatch_model offloads
            self.device_map = {n: self.device_map[""] for n, _ in model.named_children()}  # nothing (empty prefix)
        self._bytes = _map_bytes(model, self.device_map)
        kwargs: dict[str, Any] = {"offload_dir": self.offload_dir} if "disk" in self.device_map.values() else {}
        if main_device == "cpu":
            kwargs["main_device"] = "cpu"
        self._model = dispatch_model(model, device_map=self.device_map, **kwargs)
        self.memory_method = "weights per tier by accelerate's device map (it keeps no accounting of its own)"

    @property
    def model(self) -> Any:
        return self._model

    def generate(self, ids: torch.Tensor, tokens: int) -> list[int]:
        ids = ids.to(self.device)
        with torch.inference_mode():
            out = self._model.generate(ids, max_new_tokens=tokens, do_sample=False,
                                       attention_mask=torch.ones_like(ids), pad_token_id=0)
        _sync(self.device)
        return out[0, ids.shape[1]:].tolist()

    def tier_bytes(self) -> dict[str, int]:
        return dict(self._bytes)

    def close(self) -> None:
        from accelerate.hooks import remove_hook_from_module

        remove_hook_from_module(self._model, recurse=True)
        self._model = None
        shutil.rmtree(self.offload_dir, ignore_errors=True)


def _version() -> str:
    import accelerate

    return accelerate.__version__


def _tier(device: Any) -> str:
    if device == "disk":
        return "disk"
    if device == "cpu" or str(device) == "cpu":
        return "cpu"
    return "gpu"


def _map_bytes(model: torch.nn.Module, device_map: dict[str, Any]) -> dict[str, int]:
    """Bytes of parameters and buffers each tier holds under ``device_map`` (longest matching prefix wins)."""
    out = {"gpu": 0, "cpu": 0, "disk": 0}
    keys = sorted(device_map, key=len, reverse=True)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        owner = next((k for k in keys if k == "" or name == k or name.startswith(k + ".")), None)
        if owner is None:
            continue
        out[_tier(device_map[owner])] += tensor.numel() * tensor.element_size()
    return out


__all__ = ["AccelerateContender", "PlanContender", "accelerate_available"]
