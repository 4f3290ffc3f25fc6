"""The ``autosurgeon`` command.

Each subcommand lives in its own module of this package and exposes ``register(subparsers)``,
which adds its parser and sets ``func``. This is the only place that prints, and the only module
of ``autosurgeon`` that may reach up into ``agents`` or ``experiments`` (lazily, inside commands).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence

from autosurgeon import __version__
from autosurgeon._logging import LIBRARY_LOGGER
from autosurgeon.errors import AutoSurgeonError
from runtime.errors import JalapenoError

# Subcommand modules, in the order `autosurgeon --help` lists them.
COMMANDS = (
    "demo", "profile", "zoo", "analyze", "plan", "evaluate", "run", "sweep", "markov", "train", "apply", "tune",
    "report",
)

CACHE_DIR_HELP = ("cache root for every cache this command reads or writes: the local profile, zoo models, "
                  "sensitivity, GEMV and profiled tables, the Markov model (default $AUTOSURGEON_CACHE or "
                  "~/.cache/autosurgeon)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autosurgeon",
        description="Hardware-aware model surgery for PyTorch models, run on the Jalapeño runtime.",
    )
    parser.add_argument("--version", action="version", version=f"autosurgeon {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"autosurgeon.cli.{name}").register(sub)
    for command in sub.choices.values():  # every command reads or writes some cache: each takes --cache-dir
        own = [a for a in command._actions if "--cache-dir" in a.option_strings]
        if own:  # declared by the command itself: one help text for all (what cache_root_for does)
            own[0].help, own[0].metavar = CACHE_DIR_HELP, "DIR"
        else:
            command.add_argument("--cache-dir", default=None, metavar="DIR", help=CACHE_DIR_HELP)
    return parser


@contextlib.contextmanager
def cache_root_for(args: argparse.Namespace) -> Iterator[None]:
    """``--cache-dir`` as the process's cache root while the command runs.

    Every cache (the local profile, zoo models, sensitivity, GEMV and profiled tables, the user's Markov model)
    resolves its folder from ``$AUTOSURGEON_CACHE`` when no folder is passed down to it, and so do the worker
    processes a command starts (Dask workers inherit the environment): setting it here moves them all, however
    deep the call that opens the cache. Restored afterwards, so an in-process caller (tests) sees no change."""
    from autosurgeon.models.cache import CACHE_ENV, cache_root

    given = getattr(args, "cache_dir", None)
    if given is None:
        yield
        return
    if not str(given).strip():
        from autosurgeon.errors import InvalidArgumentError

        raise InvalidArgumentError("`--cache-dir` is empty; give a folder (it is created if missing), or leave "
                                   "the flag out for $AUTOSURGEON_CACHE or ~/.cache/autosurgeon.")
    root = cache_root(given).resolve()  # refuses a file, naming the flag
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(root)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = before


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger(LIBRARY_LOGGER)
    logger.setLevel(level)
    logger.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _configure_logging(args.verbose)
    try:
        with cache_root_for(args):
            code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe (`| head`) shows here, inside the handlers below, not at exit
        return code
    except (AutoSurgeonError, JalapenoError) as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split())  # one line, whatever a value quoted in it holds
        print(f"autosurgeon {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"autosurgeon {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `--json | head`: the reader left; nothing more to say, and no traceback
        _quiet_stdout()
        return 2
    except RecursionError:
        if args.debug:
            raise
        print(f"autosurgeon {args.command}: error: an input file is nested too deeply to be read (JSON "
              "depth beyond Python's recursion limit); give a file written by autosurgeon.", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the user named cannot be read or written: one line naming it
        if args.debug:
            raise
        where = f" {exc.filename!r}" if exc.filename is not None else ""
        print(f"autosurgeon {args.command}: error: cannot use{where}: {exc.strerror or exc}; check the path and its "
              "permissions, or choose another.", file=sys.stderr)
        return 2


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot raise BrokenPipeError again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
