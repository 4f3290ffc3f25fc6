"""Persistent mappings of disk-tier files: views read the file in place, populate/drop move pages in and out."""
from __future__ import annotations

import pytest
import torch

from runtime.errors import JalapenoError
from runtime.mapped import MappedFiles
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
    import os

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
