"""First screens: every --help works, every flag a help or error text names exists, --help imports no torch."""
from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest
from autosurgeon.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[2]
# Flags of other programs that our texts name on purpose: `tensorboard --logdir runs`.
OTHER_PROGRAMS = {"--logdir"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9](?![\w*-])")


def _parsers(parser: argparse.ArgumentParser,
             path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _parsers(sub, (*path, name))
    return found


def _known_flags() -> set[str]:
    return {s for _, p in _parsers(build_parser()) for a in p._actions for s in a.option_strings if s.startswith("--")}


@pytest.mark.parametrize("command", [(), *[(c,) for c in COMMANDS]], ids=lambda c: " ".join(c) or "top")
def test_every_help_works(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: autosurgeon" in capsys.readouterr().out


def test_nested_helps_work() -> None:
    for path, parser in _parsers(build_parser()):
        assert parser.format_help().startswith("usage:"), path


def test_every_flag_named_in_a_text_exists() -> None:
    known = _known_flags()
    files = [*(ROOT / "autosurgeon").rglob("*.py"), ROOT / "experiments" / "demo_flow.py"]
    missing = {}
    for path in files:
        for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if tok.type == tokenize.STRING or tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
                for flag in FLAG.findall(tok.string):
                    if flag not in known and flag not in OTHER_PROGRAMS:
                        missing.setdefault(flag, set()).add(path.relative_to(ROOT).as_posix())
    assert not missing, f"texts name flags no command has: {missing}"


def test_help_and_zoo_listing_import_no_torch() -> None:
    code = ("import sys, contextlib, io; from autosurgeon.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['zoo'])\n"
            "    try: main(['--help'])\n"
            "    except SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
