"""Optuna storages from a URL: SQLite, PostgreSQL or any SQLAlchemy database, checked before a study opens.

Several processes (or machines) join one study by giving the same storage URL and study name; Optuna's
``RDBStorage`` keeps the trials in the database, so each process's sampler sees every finished trial.
``postgresql://user:password@host:5432/db`` uses SQLAlchemy's default PostgreSQL driver, psycopg 3
(``psycopg[binary]``, in the ``scale`` extra); ``postgresql+psycopg2://``, ``mysql+pymysql://`` etc. work where their
driver is installed.
The password never reaches a log line or a summary (:func:`redact`).
"""
from __future__ import annotations

import time
from typing import Any

from autosurgeon.errors import AutoSurgeonError, InvalidArgumentError


def redact(url: str) -> str:
    """``url`` with its password hidden (``***``), for logs and summaries."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown without anything after the scheme
        return url.split("://", 1)[0] + "://…"


def check_storage_url(url: str, *, argument: str = "--storage") -> str:
    """Validate a storage URL and that its database driver is importable; returns it unchanged."""
    if not isinstance(url, str) or "://" not in url:
        raise InvalidArgumentError(f"`{argument}` must be a database URL such as postgresql://user@host/db or "
                                   f"sqlite:///study.db, got {url!r}.")
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise InvalidArgumentError(f"`{argument}` {redact(url)!r} is not a SQLAlchemy URL ({exc}); e.g. "
                                   "postgresql://user:password@host:5432/optuna.") from None
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        raise InvalidArgumentError(f"`{argument}` {redact(url)!r}: SQLAlchemy knows no database "
                                   f"{parsed.drivername!r}; use postgresql://, sqlite:/// or mysql+pymysql://.") from None
    except ImportError as exc:
        raise AutoSurgeonError(f"`{argument}` {redact(url)!r} needs the {parsed.drivername!r} driver ({exc}); for "
                               "PostgreSQL `pip install 'autosurgeon[scale]'` (psycopg 3).") from None
    return url


def optuna_storage(url: str, *, heartbeat_s: int | None = None, argument: str = "--storage") -> Any:
    """An Optuna ``RDBStorage`` on ``url``.

    Args:
        url: a SQLAlchemy URL (checked by :func:`check_storage_url`).
        heartbeat_s: trials running under ``study.optimize`` beat every ``heartbeat_s`` seconds; one whose
            process died (no beat for 4 intervals) is marked failed and retried once by the next process that
            asks (``RetryFailedTrialCallback``). None: no heartbeat (ask/tell loops, which cannot beat).
        argument: the option named in errors.
    """
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    check_storage_url(url, argument=argument)
    kwargs: dict[str, Any] = {}
    if not url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}  # a server may drop idle connections between trials
    if heartbeat_s is not None:
        kwargs.update(heartbeat_interval=int(heartbeat_s), grace_period=4 * int(heartbeat_s))
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)  # optuna >= 4.9
        if retry is not None:
            kwargs["heartbeat_stale_trial_callback"] = retry(max_retry=1)
        else:  # pragma: no cover - older optuna
            kwargs["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(max_retry=1)
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except OperationalError as exc:
            raise AutoSurgeonError(f"`{argument}` {redact(url)!r}: the database did not answer "
                                   f"({str(exc.orig).strip() or exc}); check host, port, user and that it is "
                                   "running.") from None
        except (IntegrityError, ProgrammingError):
            # Two processes creating Optuna's tables in a fresh database at once: one wins, the other
            # finds them made on its next try.
            if attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


__all__ = ["check_storage_url", "optuna_storage", "redact"]
