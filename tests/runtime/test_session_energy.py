"""The Session's energy: a counter window it did not see is reported as unknown with the reason, never as 0 J,
and ``autosurgeon run`` repeats a short generation until NVML's windows add up to a second."""
from __future__ import annotations

import argparse
import json
import logging
import time

import pytest
import torch

from runtime import telemetry
from runtime.session import Session
from runtime.spec import BlockSpec, SessionSpec
from tests.runtime._streaming_models import tiny_llama


class _TickingNVML:
    """NVML as it behaves: the counter moves in 100 ms ticks of 30 J, so a shorter window may read nothing."""

    tick_s, tick_j = 0.1, 30.0

    def __init__(self, *, device: object = None, watts: float | None = None, min_window_s: float = 1.0) -> None:
        self.min_window_s = min_window_s
        self.source = "nvml"

    def _count(self) -> float:
        return (time.perf_counter() // self.tick_s) * self.tick_j

    def __enter__(self) -> _TickingNVML:
        self._t0, self._c0 = time.perf_counter(), self._count()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        self.joules = self._count() - self._c0
        if self.seconds < self.min_window_s:
            logging.getLogger("autosurgeon.runtime.telemetry").warning("energy window %.3f s < 1 s", self.seconds)


def _session() -> Session:
    blocks = tuple(BlockSpec(device="cpu") for _ in range(2))
    return Session(tiny_llama(layers=2), SessionSpec(blocks=blocks, rest=BlockSpec(device="cpu")), graphs=False)


def test_short_nvml_windows_give_no_energy_and_no_warning(monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(telemetry, "EnergyMeter", _TickingNVML)
    ids = torch.randint(3, 256, (1, 5), generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING), _session() as session:
        session.generate(ids, max_new_tokens=2)
        stats = session.stats()
        assert stats.energy_j is None and stats.energy_source == "nvml"
        assert "< 1 s" in stats.extra["energy"]["reason"] and stats.extra["energy"]["window_s"] < 1.0
        started = time.perf_counter()
        while time.perf_counter() - started < 1.05:  # the same work until the windows add up to a second
            session.generate(ids, max_new_tokens=2)
        stats = session.stats()
    assert "energy window" not in caplog.text  # the per-call meter no longer warns
    assert stats.energy_j is not None and stats.energy_j > 0 and "energy" not in stats.extra


def test_a_counter_that_did_not_move_is_unknown_not_zero() -> None:
    with _session() as session:
        session._energy, session._energy_source, session._energy_window = 0.0, "rapl", 0.4
        stats = session.stats()
    assert stats.energy_j is None and "did not move" in stats.extra["energy"]["reason"]


def test_run_repeats_a_short_generation_until_the_counter_saw_it(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from autosurgeon.cli.run import register

    monkeypatch.setattr(telemetry, "EnergyMeter", _TickingNVML)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["run", "tiny-llama-test", "--max-new-tokens", "2", "--prompt", "def f(", "--json",
                              "--device", "cpu"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["energy_generations"] > 1 and out["energy_unseen"] is None
    assert out["energy_j"] is not None and out["energy_j"] > 0 and len(out["token_ids"]) == 2
