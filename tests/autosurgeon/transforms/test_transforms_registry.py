"""Transform configs validate on construction; one handler per config type; clear errors for the rest."""
from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass

import pytest
import torch
from torch import nn

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.transforms import (
    FuseConfig,
    KernelConfig,
    LayoutConfig,
    PlaceConfig,
    PruneConfig,
    QuantizeConfig,
    TransformContext,
    register_transform,
    registered_types,
    transform,
)


def test_every_config_type_has_exactly_one_handler() -> None:
    assert set(registered_types()) == {QuantizeConfig, FuseConfig, PlaceConfig, KernelConfig, LayoutConfig,
                                       PruneConfig}
    with pytest.raises(TypeError, match="already registered.*one handler per config type"):
        register_transform(QuantizeConfig)(lambda module, config, *, fqn, context: module)
    assert len(registered_types()) == 6


def test_unregistered_config_raises_type_error_listing_registered_types() -> None:
    @dataclass(frozen=True)
    class SparsifyConfig:
        ratio: float = 0.5

    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(TypeError, match=r"no transform is registered for config type SparsifyConfig; registered "
                                        r"config types: .*QuantizeConfig.*") as info:
        transform(model, SparsifyConfig(), fqn="0")
    for t in ("FuseConfig", "KernelConfig", "LayoutConfig", "PlaceConfig", "PruneConfig"):
        assert t in str(info.value)


@pytest.mark.parametrize("make, match", [
    (lambda: QuantizeConfig("int3"), r"`precision` must be one of .*int4.*got 'int3'"),
    (lambda: QuantizeConfig("int4", group_size=48), r"`group_size` must be a positive multiple of 32.*got 48"),
    (lambda: QuantizeConfig("int4", group_size=True), r"`group_size`"),
    (lambda: QuantizeConfig("int8", kernel=""), r"`kernel` must be None"),
    (lambda: FuseConfig("qk"), r"`kind` must be one of conv-bn, linear-act, qkv, gate-up, got 'qk'"),
    (lambda: PlaceConfig("gpu<-tape"), r"`placement` must be one of .*got 'gpu<-tape'"),
    (lambda: KernelConfig(""), r"`name` must be 'auto' or a runtime kernel name"),
    (lambda: LayoutConfig("nhwc"), r"`layout` must be one of default, channels_last, packed, got 'nhwc'"),
    (lambda: PruneConfig(1.0), r"`ratio` must be a number in \[0, 1\)"),
    (lambda: PruneConfig(0.5, method="taylor"), r"`method` must be one of l2"),
])
def test_configs_validate_on_construction(make, match) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        make()


def test_configs_are_frozen_and_hashable() -> None:
    config = QuantizeConfig("int4", group_size=64)
    with pytest.raises(FrozenInstanceError):
        config.precision = "int8"  # type: ignore[misc]
    assert {config, QuantizeConfig("int4", group_size=64)} == {config}


def test_transform_names_a_missing_fqn() -> None:
    with pytest.raises(InvalidArgumentError, match=r"`fqn` 'nope' names no submodule of Sequential"):
        transform(nn.Sequential(nn.Linear(4, 4)), QuantizeConfig("int8"), fqn="nope")


def test_transform_installs_the_replacement_and_logs() -> None:
    model = nn.Sequential(nn.Linear(64, 8))
    ctx = TransformContext()
    new = transform(model, QuantizeConfig("bfloat16"), fqn="0", context=ctx)
    assert model[0] is new and new.weight.dtype == torch.bfloat16
    transform(model, QuantizeConfig("bfloat16"), fqn="0", context=ctx)
    assert [what for *_, what in ctx.log] == ["applied", "skipped"]
