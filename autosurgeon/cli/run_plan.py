"""``autosurgeon run``'s flags as a Plan, so a run without ``--plan`` takes the same road as one with it.

``--weight-format int8|int4`` becomes a precision decision for every ``nn.Linear`` inside the runtime's block
list (what the old flag road quantized; the embeddings and head stay as loaded; int4 in groups of 128, or of
the largest group that is not mostly padding on a narrower layer: ``space.masks.default_group_size``), the ``--kv-*`` and
``--prefetch`` flags become the plan's session knobs, and placement is left open: ``apply_plan(...,
placement="fit")`` fits the transformed model's exact bytes into the budget. Float formats are not decisions:
``--weight-format bfloat16`` is the dtype the whole model is loaded in (``model.to``), norms included, as
Hugging Face's ``torch_dtype`` would load it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from autosurgeon.plan import Plan
from autosurgeon.precisions import GROUPED_PRECISIONS, QUANTIZED_PRECISIONS
from autosurgeon.space.masks import default_group_size


def flags_plan(model: nn.Module, *, weight_format: str | None, session: Mapping[str, Any]) -> Plan:
    """The plan ``autosurgeon run MODEL [--weight-format F] [--kv-* ...] [--prefetch P]`` means."""
    from runtime.session import find_blocks

    decisions: dict[str, dict[str, Any]] = {}
    if weight_format in QUANTIZED_PRECISIONS:
        path, blocks = find_blocks(model)
        for i, block in enumerate(blocks):
            for name, module in block.named_modules():
                if type(module) is nn.Linear:
                    decision: dict[str, Any] = {"precision": weight_format}
                    if weight_format in GROUPED_PRECISIONS:  # group 128 unless that is mostly padding here
                        decision["group_size"] = default_group_size(module.in_features)
                    decisions[f"{path}.{i}.{name}"] = decision
    return Plan.from_decisions(decisions, session=dict(session),
                               metadata={"origin": "autosurgeon run flags", "weight_format": weight_format})


__all__ = ["flags_plan"]
