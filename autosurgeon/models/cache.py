"""Where trained zoo models live, and how a build is made safe against concurrent processes.

A build runs under an exclusive file lock and writes into a temporary folder beside its final place,
which it renames into place when complete: a reader sees either no folder or a whole one, and two
processes asking for the same model train it once.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from autosurgeon._logging import get_logger
from autosurgeon.errors import InvalidArgumentError

logger = get_logger(__name__)

CACHE_ENV = "AUTOSURGEON_CACHE"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the cache folder: ``cache_dir`` if given, else ``$AUTOSURGEON_CACHE``, else ``~/.cache/autosurgeon``."""
    if cache_dir is not None:
        root, named = Path(cache_dir).expanduser(), "`--cache-dir`"
    elif os.environ.get(CACHE_ENV):
        root, named = Path(os.environ[CACHE_ENV]).expanduser(), f"${CACHE_ENV}"
    else:
        root, named = Path.home() / ".cache" / "autosurgeon", "the cache folder"
    if root.exists() and not root.is_dir():

        raise InvalidArgumentError(f"{named} {str(root)!r} is a file; give a folder (it is created if missing).")
    return root


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    # fcntl is POSIX-only; elsewhere the atomic rename below still keeps readers safe, at the cost
    # of two processes possibly training the same model once each.
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def is_complete(folder: Path, required: tuple[str, ...]) -> bool:
    """Whether ``folder`` holds every file in ``required`` (a finished build), each ``.safetensors`` one whole."""
    if not (folder.is_dir() and all((folder / name).is_file() for name in required)):
        return False
    torn = [name for name in required if name.endswith(".safetensors") and not safetensors_whole(folder / name)]
    if torn:
        logger.warning("cache entry %s has a truncated or corrupt %s; it will be rebuilt", folder, ", ".join(torn))
    return not torn


def safetensors_whole(path: Path) -> bool:
    """Whether ``path`` is a safetensors file whose header parses and whose tensors end exactly at its end.

    Reads the header only (8 bytes + a JSON object), so checking a cache entry costs microseconds."""
    import json
    import struct

    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                return False
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, 100 * 2**20):
                return False
            header = json.loads(fh.read(n))
    except (OSError, ValueError, RecursionError):
        return False
    if not isinstance(header, dict):
        return False
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            return False
        end = max(end, offsets[1])
    return 8 + n + end == size


def _publish_permissions(folder: Path) -> None:
    # mkdtemp makes the folder private (0700) and some writers make files 0600; a finished model is
    # shared like any cache entry, so give it the permissions the user's umask would give.
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _remove_stale_temps(folder: Path) -> None:
    # Called under the lock: any temporary folder of this build left now belongs to a killed process.
    for path in folder.parent.glob(f".{folder.name}.*"):
        if path.is_dir():
            logger.debug("removing stale %s", path)
            shutil.rmtree(path, ignore_errors=True)


def build_once(folder: Path, required: tuple[str, ...], build: Callable[[Path], None]) -> Path:
    """Return ``folder``, first calling ``build(tmp)`` to fill it if it is not complete yet.

    ``build`` writes into an empty temporary folder on the same file system; on success it is renamed
    to ``folder`` (atomic), on failure it is removed and the error propagates.
    """
    if is_complete(folder, required):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(folder.parent / f".{folder.name}.lock"):
        if is_complete(folder, required):  # another process finished it while we waited
            return folder
        _remove_stale_temps(folder)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            build(tmp)
            missing = [name for name in required if not (tmp / name).is_file()]
            if missing:
                raise RuntimeError(f"build of {folder.name} did not write {missing}")  # internal invariant
            _publish_permissions(tmp)
            if folder.exists():  # an incomplete leftover from a killed run
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    logger.info("cached %s", folder)
    return folder
