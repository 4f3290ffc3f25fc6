"""Run folders (sweeps, training, demo) owned by one process at a time, created whole or not at all.

:class:`RunFolderLock` is an exclusive, non-blocking ``fcntl.flock`` on ``<folder>/.lock``, which records the
holder's pid, host and start time. The kernel drops a flock when its process dies (kill -9 included), so a
lock file left behind by a dead process is stale by construction and is simply taken over (logged with the
old holder); a live holder makes the second process fail at once with an error naming it.

:func:`run_folder` is the one way a command opens its ``--out``: it refuses ``''`` and a path that is a file,
takes the lock, refuses a folder that already holds something unless ``resume`` (continue it) or
``overwrite`` (empty it first, under the lock), removes temp files a killed writer left (under the lock
they can be no one else's), and on every exit path removes its own temp files
(``*.<pid>.tmp``) and the lock. If the command fails before the folder holds anything worth keeping (the
caller's ``keep``), the folder goes back to how it was: removed when this call created it, emptied when it
was empty before. So a refused or crashed set-up never leaves a half-made run that is then refused for ever.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from autosurgeon._logging import get_logger
from autosurgeon.errors import InvalidArgumentError

logger = get_logger(__name__)

LOCK = ".lock"


class RunFolderBusyError(InvalidArgumentError):
    """Another live process holds the run folder's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_out_path(path: str | os.PathLike[str], *, argument: str = "--out") -> Path:
    """``path`` as a Path; InvalidArgumentError for ``''``, a file, or a parent that is a file."""
    text = os.fspath(path)
    if not str(text).strip():
        raise InvalidArgumentError(f"`{argument}` must name a folder, got {text!r}; give e.g. runs/NAME.")
    p = Path(text)
    if p.exists() and not p.is_dir():
        raise InvalidArgumentError(f"`{argument}` {text!r} is a file; give a folder such as runs/NAME.")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InvalidArgumentError(f"`{argument}` {text!r}: {str(parent)!r} is a file, not a folder; "
                                           "give a path under a folder.")
            if not os.access(parent, os.W_OK | os.X_OK) and not p.exists():
                raise InvalidArgumentError(f"`{argument}` {text!r}: cannot create it in {str(parent)!r} (not "
                                           "writable); choose a writable folder.")
            break
    return p


class RunFolderLock:
    """Exclusive lock of one run folder (module docstring). Use as a context manager or acquire/release."""

    def __init__(self, folder: str | os.PathLike[str], *, argument: str = "--out") -> None:
        self.folder = Path(folder)
        self.argument = argument
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK

    def holder(self) -> dict[str, Any]:
        """What the lock file says about its holder (``{}`` if unreadable)."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def acquire(self) -> RunFolderLock:
        import fcntl

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidArgumentError(f"`{self.argument}` {str(self.folder)!r} cannot be created ({exc.strerror}); "
                                       "choose a writable folder.") from None
        for _ in range(10):  # the file may be unlinked by a releasing holder between open and flock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise InvalidArgumentError(f"`{self.argument}` {str(self.folder)!r}: cannot create its lock file "
                                           f"({exc.strerror}); choose a writable folder.") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                h = self.holder()
                raise RunFolderBusyError(
                    f"`{self.argument}` {str(self.folder)!r} is in use by pid {h.get('pid', '?')} on host "
                    f"{h.get('host', '?')} (since {h.get('started', '?')}); wait for it to finish or choose another "
                    "folder.") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:  # pragma: no cover - needs ten releases racing this acquire
            raise RunFolderBusyError(f"`{self.argument}` {str(self.folder)!r}: its lock keeps changing hands; retry.")
        old = self.holder()
        if old.get("pid") and old.get("pid") != os.getpid():
            here = old.get("host") == socket.gethostname()
            logger.info("took over a stale lock on %s from pid %s on %s (%s)", self.folder, old.get("pid"),
                        old.get("host"), "not running" if here and not _pid_alive(int(old["pid"])) else "lock released")
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> RunFolderLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def contents(folder: str | os.PathLike[str]) -> list[Path]:
    """What a run folder holds, its lock file aside."""
    folder = Path(folder)
    return [p for p in folder.iterdir() if p.name != LOCK] if folder.is_dir() else []


def _remove(paths: list[Path]) -> None:
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


def clean_stale_temp_files(folder: str | os.PathLike[str]) -> int:
    """Remove every ``.NAME.<pid>.tmp`` under ``folder`` — call it holding the folder's lock, when any such
    temp file or folder belongs to a process that died mid-write (kill -9 leaves them)."""
    import re

    folder = Path(folder)
    pattern = re.compile(r"\..+\.\d+\.tmp")
    found = [p for p in folder.rglob("*.tmp") if pattern.fullmatch(p.name)] if folder.is_dir() else []
    _remove(found)
    return len(found)


def clean_temp_files(folder: str | os.PathLike[str], pid: int | None = None) -> int:
    """Remove ``*.<pid>.tmp`` files and folders (this process's by default) anywhere under ``folder``."""
    pid = os.getpid() if pid is None else pid
    folder = Path(folder)
    found = list(folder.rglob(f"*.{pid}.tmp")) if folder.is_dir() else []
    _remove(found)
    return len(found)


@contextlib.contextmanager
def run_folder(path: str | os.PathLike[str], *, resume: bool = False, overwrite: bool = False,
               keep: Callable[[Path], bool] | None = None, argument: str = "--out",
               what: str = "run") -> Iterator[Path]:
    """Open ``path`` as this process's run folder for the duration of the block (module docstring)."""
    if resume and overwrite:
        raise InvalidArgumentError("`--resume` and `--overwrite` contradict each other; pass one of them.")
    folder = check_out_path(path, argument=argument)
    created = not folder.exists()
    was_empty = created or not contents(folder)
    lock = RunFolderLock(folder, argument=argument).acquire()
    try:
        stale = clean_stale_temp_files(folder)  # we hold the lock: any temp file here is a dead writer's
        if stale:
            logger.info("removed %d temp file(s) a killed run left in %s", stale, folder)
        held = contents(folder)
        if overwrite and held:
            logger.warning("--overwrite: removing the %d entries of %s", len(held), folder)
            _remove(held)
        elif held and not resume:
            raise InvalidArgumentError(f"`{argument}` {str(folder)!r} already holds a {what}; pass --resume to "
                                       "continue it, --overwrite to replace it, or choose another folder.")
        was_empty = was_empty or overwrite
        yield folder
    except BaseException:
        clean_temp_files(folder)
        if was_empty and not (keep is not None and keep(folder)):
            _remove(contents(folder))
            lock.release()
            if created:
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise
    finally:
        clean_temp_files(folder)
        lock.release()


__all__ = ["LOCK", "RunFolderBusyError", "RunFolderLock", "check_out_path", "clean_stale_temp_files",
           "clean_temp_files", "contents", "run_folder"]
