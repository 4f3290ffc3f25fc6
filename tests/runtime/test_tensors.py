"""TensorStore: tiers, exact byte accounting, budgets with precise errors, disk round trips."""
from __future__ import annotations

import os

import pytest
import torch

from runtime.errors import BudgetExceededError, JalapenoError
from runtime.mapped import file_resident_fraction
from runtime.sizes import format_bytes, parse_bytes
from runtime.tensors import ALIGN, TensorStore, aligned, carve, tier_of


def test_register_fetch_release_accounting() -> None:
    store = TensorStore(budgets={"cpu": 10_000})
    a, b = torch.randn(10, 20), torch.randn(7)  # 800 B and 28 B
    store.register({"a": a, "b": b}, "cpu", label="blk")
    assert store.used("cpu") == aligned(800) + aligned(28)
    got = store.fetch(["a", "b"], "cpu")
    assert torch.equal(got[0], a) and torch.equal(got[1], b)
    assert got[0] is store.home("a")  # same tier: the home copy itself, no charge
    assert store.used("cpu") == 1024 + 256
    store.unregister(["a", "b"], label="blk")
    assert store.used("cpu") == 0 and store.peak("cpu") == aligned(800) + aligned(28)
    store.close()


def test_disk_tier_round_trip_and_staging(tmp_path) -> None:
    store = TensorStore(budgets={"cpu": 4096}, offload_dir=tmp_path)
    tensors = {"w": torch.randn(16, 8), "s": torch.arange(5, dtype=torch.int32), "h": torch.randn(3).bfloat16()}
    store.register(tensors, "disk", label="unit")
    assert store.used("disk") == 16 * 8 * 4 + 5 * 4 + 3 * 2 and store.used("cpu") == 0
    assert list(tmp_path.glob("*.safetensors"))
    need = store.group_nbytes(list(tensors))
    buf = store.allocate("cpu", need, label="slot")
    assert store.used("cpu") == need
    views = store.fetch(list(tensors), "cpu", out=buf)
    for v, t in zip(views, tensors.values()):
        assert v.dtype == t.dtype and torch.equal(v, t)
        assert (v.data_ptr() - buf.data_ptr()) % ALIGN == 0  # every tensor aligned inside the slot
    assert store.used("cpu") == need  # fetching into a reserved slot costs nothing more
    fresh = store.fetch(["w"], "cpu")  # no slot: allocated and charged until release
    assert store.used("cpu") == need + aligned(512)
    store.release(fresh, ["w"])
    assert store.used("cpu") == need
    store.free(buf, tier="cpu", label="slot")
    assert store.used("cpu") == 0 and store.peak("cpu") == need + aligned(512)
    assert torch.equal(store.load("h"), tensors["h"])
    # the file is a plain safetensors file
    from safetensors import safe_open

    with safe_open(str(next(tmp_path.glob("*.safetensors"))), "pt") as f:
        assert torch.equal(f.get_tensor("w"), tensors["w"])
    store.close()


def test_budget_error_names_tier_budget_need_and_offender() -> None:
    store = TensorStore(budgets={"cpu": 2048})
    store.register({"big": torch.zeros(300)}, "cpu", label="layers.0")  # 1200 B -> 1280 aligned
    with pytest.raises(BudgetExceededError, match=r"tier 'cpu' budget 2.00 KiB \(2048 B\) cannot take 'layers.1'.*"
                       r"needs 1.25 KiB more on top of 1.25 KiB.*largest holder 'layers.0' \(1.25 KiB\)"):
        store.register({"big2": torch.zeros(300)}, "cpu", label="layers.1")
    assert store.used("cpu") == 1280 and "big2" not in store  # nothing charged or registered on failure
    with pytest.raises(BudgetExceededError, match="'staging"):
        store.allocate("cpu", 1024, label="staging:cpu")
    assert isinstance(BudgetExceededError("x"), MemoryError)
    store.close()


def test_errors_are_precise() -> None:
    with pytest.raises(JalapenoError, match="budget tier 'ram' is unknown"):
        TensorStore(budgets={"ram": 1})
    store = TensorStore()
    with pytest.raises(JalapenoError, match="'nope' is not registered"):
        store.fetch(["nope"], "cpu")
    store.register({"x": torch.ones(2)}, "cpu")
    with pytest.raises(JalapenoError, match="already registered"):
        store.register({"x": torch.ones(2)}, "cpu")
    with pytest.raises(JalapenoError, match="no memory tier"):
        tier_of("meta")
    buf = torch.empty(8, dtype=torch.uint8)
    with pytest.raises(JalapenoError, match="too small"):
        carve(buf, [((4,), torch.float32)])


@pytest.mark.parametrize(("text", "expected"), [("3GiB", 3 * 2**30), ("500MB", 500 * 10**6), ("1.5 kib", 1536),
                                                ("1024", 1024), (2048, 2048), ("2g", 2 * 2**30), ("0", 0)])
def test_parse_bytes(text, expected) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(("text", "match"), [("3 parsecs", "unknown unit 'parsecs'"), ("lots", "byte size"),
                                             ("-1GB", "byte size")])
def test_parse_bytes_errors(text, match) -> None:
    with pytest.raises(JalapenoError, match=match):
        parse_bytes(text, what="--memory-budget gpu")


def test_format_bytes() -> None:
    assert format_bytes(512) == "512 B" and format_bytes(3 * 2**30) == "3.00 GiB"


def test_a_tied_tensor_registered_in_place_twice_is_charged_once() -> None:
    """A head tied to its embedding is one tensor held by two modules: one charge, kept while either holds it."""
    store = TensorStore()
    shared, other = torch.zeros(64, 16), torch.zeros(8)
    store.register({"embed.weight": shared}, "cpu", label="embed", copy=False)
    store.register({"head.weight": shared, "head.bias": other}, "cpu", label="head", copy=False)
    assert store.used("cpu") == shared.numel() * 4 + other.numel() * 4
    store.unregister(["embed.weight"], label="embed")
    assert store.used("cpu") == shared.numel() * 4 + other.numel() * 4  # still held by the head
    store.unregister(["head.weight", "head.bias"], label="head")
    assert store.used("cpu") == 0  # in-place entries give back what they were charged (exact, not aligned)
    store.close()


def test_disk_tier_files_are_written_back_so_a_cache_drop_evicts_them(tmp_path) -> None:
    store = TensorStore(offload_dir=str(tmp_path))
    w = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0))
    store.register({"w": w}, "disk")  # 4 MiB, just written
    path = store.entry("w").path
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # evicts clean pages only
    finally:
        os.close(fd)
    assert file_resident_fraction(path) < 0.05
    assert torch.equal(store.load("w"), w)  # read back from the disk
