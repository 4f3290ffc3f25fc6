"""A throwaway PostgreSQL server for tests: initdb + pg_ctl in a temp dir, on a unix socket only.

Started from the server binaries (Debian's ``postgresql`` package puts them in /usr/lib/postgresql/N/bin);
as root, the server runs as ``nobody`` (initdb refuses root). ``pytest.skip`` with the reason where no
binaries, no unprivileged user or no driver can be had.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return candidates[-1] if candidates else None


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Yield a SQLAlchemy URL (``postgresql://postgres@/postgres?host=SOCKETDIR``) of a fresh server; stop it after."""
    from agents.storage import check_storage_url
    from autosurgeon.errors import AutoSurgeonError

    try:
        check_storage_url("postgresql://postgres@/postgres")
    except AutoSurgeonError as exc:
        pytest.skip(f"no PostgreSQL driver for SQLAlchemy: {exc}")
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; install Debian's `postgresql` "
                    "(apt-get install postgresql) to run the PostgreSQL storage tests")
    user: str | None = None
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            user = pwd.getpwnam("nobody").pw_name
        except KeyError:
            pytest.skip("running as root and no unprivileged user `nobody` to run the PostgreSQL server as")
    root = tempfile.mkdtemp(prefix="autosurgeon-pg-", dir="/tmp")
    data, log = os.path.join(root, "data"), os.path.join(root, "server.log")
    if user is not None:
        shutil.chown(root, user=user)
    kw = {"user": user} if user is not None else {}
    started = False
    try:
        subprocess.run([initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "-N"],
                       check=True, capture_output=True, timeout=120, **kw)
        # Unix socket in our own folder only (no TCP), fsync off: a test server, thrown away after.
        subprocess.run([pg_ctl, "-D", data, "-l", log, "-w", "-t", "60", "-o",
                        f"-k {root} -c listen_addresses='' -F -p 5432", "start"],
                       check=True, capture_output=True, timeout=120, **kw)
        started = True
        yield f"postgresql://postgres@/postgres?host={root}&port=5432"
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[-1:] or [""]
        pytest.skip(f"could not start a throwaway PostgreSQL server ({exc.cmd[0]}: {detail[0]})")
    finally:
        if started:
            subprocess.run([pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True, timeout=60, **kw)
        shutil.rmtree(root, ignore_errors=True)
