"""Persistent mappings of disk-tier files: views read the file in place, populate/drop move pages in and out."""
from __future__ import annotations

import os

import pytest
import torch

from experiments.benchmarks.page_cache import smaps_kb
from runtime.errors import JalapenoError
from runtime.mapped import MappedFiles, file_resident_fraction, refold, thp_available
from runtime.tensors import TensorStore


def _rss_file_kb() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssFile:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def test_views_read_the_file_and_drop_leaves_the_resident_set(tmp_path) -> None:
    store = TensorStore(offload_dir=tmp_path)
    w = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0))  # 4 MiB
    b = torch.arange(7, dtype=torch.int8)
    store.register({"w": w, "b": b}, "disk", label="unit")
    mapped = MappedFiles(store)
    try:
        (vw, vb), rng = mapped.views(["w", "b"])
        assert rng.addr % 4096 == 0 and rng.length % 4096 == 0 and rng.length >= w.numel() * 4
        before = _rss_file_kb()
        mapped.populate(rng)
        during = _rss_file_kb()
        assert torch.equal(vw, w) and torch.equal(vb, b)
        mapped.drop(rng)
        after = _rss_file_kb()
        if before is not None:  # /proc readable: the populated pages counted, the dropped ones do not
            assert during - before >= 3 * 1024
            assert after - before < 1024
        assert torch.equal(vw, w)  # a use after drop faults the pages back in: still correct
        del vw, vb
    finally:
        mapped.close()
        store.close()


def test_views_of_two_files_is_a_clear_error(tmp_path) -> None:
    store = TensorStore(offload_dir=tmp_path)
    store.register({"a": torch.zeros(4)}, "disk", label="a")
    store.register({"b": torch.zeros(4)}, "disk", label="b")
    mapped = MappedFiles(store)
    with pytest.raises(JalapenoError, match="one file"):
        mapped.views(["a", "b"])
    store.close()


def test_resident_follows_the_page_cache(tmp_path) -> None:
    store = TensorStore(offload_dir=tmp_path)
    store.register({"w": torch.randn(512, 1024, generator=torch.Generator().manual_seed(1))}, "disk", label="u")
    mapped = MappedFiles(store)
    try:
        (vw,), rng = mapped.views(["w"])
        mapped.populate(rng)
        assert mapped.resident(rng)  # just read: every page cached
        mapped.drop(rng)
        path = store.entry("w").path
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean, unmapped pages: evicted
        finally:
            os.close(fd)
        if mapped.resident(rng):
            pytest.skip("this file system kept the pages after POSIX_FADV_DONTNEED")
        mapped.populate(rng)
        assert mapped.resident(rng)
        del vw
    finally:
        mapped.close()
        store.close()


def test_huge_pages_map_a_large_unit_with_pmd_entries(tmp_path) -> None:
    if not thp_available():
        pytest.skip("no transparent huge pages on this kernel")
    store = TensorStore(offload_dir=tmp_path)
    w = torch.randn(4096, 1024, generator=torch.Generator().manual_seed(2))  # 16 MiB
    store.register({"w": w}, "disk", label="unit")
    mapped = MappedFiles(store, huge_pages=True)
    try:
        (vw,), rng = mapped.views(["w"])
        mapped.populate(rng)
        assert torch.equal(vw, w)
        pmd = smaps_kb(rng.addr, "FilePmdMapped:")
        if pmd is None or pmd == 0:
            pytest.skip("this file system does not cache the file in huge folios")
        assert pmd >= 8 * 1024  # at least half the unit mapped by 2 MiB entries
        mapped.drop(rng)
        assert torch.equal(vw, w)  # dropped entries fault back in: still correct
        del vw
    finally:
        mapped.close()
        store.close()


def _skip_unless_drop_evicts(folder) -> None:
    probe = os.path.join(folder, "probe.bin")
    with open(probe, "wb") as fh:
        fh.write(os.urandom(256 * 1024))
    refold(probe)
    kept = file_resident_fraction(probe)
    os.unlink(probe)
    if kept > 0.01:
        pytest.skip("this file system keeps pages after POSIX_FADV_DONTNEED")


def test_file_resident_fraction_sees_the_drop_only_when_nothing_maps_the_pages(tmp_path) -> None:
    _skip_unless_drop_evicts(tmp_path)
    store = TensorStore(offload_dir=tmp_path)
    w = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(3))
    store.register({"w": w}, "disk", label="u")
    path = store.entry("w").path
    mapped = MappedFiles(store)
    try:
        (vw,), rng = mapped.views(["w"])
        mapped.populate(rng)
        assert file_resident_fraction(path) > 0.99
        refold(path)  # pages mapped by our populate survive POSIX_FADV_DONTNEED
        assert file_resident_fraction(path) > 0.5
        mapped.drop(rng)
        refold(path)  # unmapped now: evicted
        assert file_resident_fraction(path) < 0.01
        assert torch.equal(vw, w)  # read back from the disk
        del vw
    finally:
        mapped.close()
        store.close()


def test_quiesce_leaves_no_streamed_page_mapped(tmp_path) -> None:
    from torch import nn

    from runtime.streaming import Streamer, StreamUnit

    _skip_unless_drop_evicts(tmp_path)
    torch.manual_seed(0)
    seq = nn.Sequential(*[nn.Linear(512, 512) for _ in range(4)])
    x = torch.randn(1, 512)
    ref = seq(x)
    store = TensorStore(offload_dir=tmp_path)
    units = [StreamUnit(str(i), m, torch.device("cpu"), "disk") for i, m in enumerate(seq)]
    streamer = Streamer(store, units, lookahead=1, disk_io="mmap").attach()
    try:
        with torch.no_grad():
            torch.testing.assert_close(seq(x), ref)  # leaves the next pass's first unit populated
        streamer.quiesce()
        paths = sorted(os.path.join(tmp_path, f) for f in os.listdir(tmp_path))
        for path in paths:
            refold(path)
        fractions = {os.path.basename(p): file_resident_fraction(p) for p in paths}
        assert max(fractions.values()) < 0.01, fractions
        with torch.no_grad():
            torch.testing.assert_close(seq(x), ref)  # and the next pass reads them back
    finally:
        streamer.detach()
        store.close()
