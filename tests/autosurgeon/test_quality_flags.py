"""The quality flags are the same in every command and reach what measures quality: plan, evaluate, demo, sweep,
apply and the env take `--data`, `--quality-samples`, `--quality-method` from one parser (`cli/_quality.py`)."""
from __future__ import annotations

from pathlib import Path

import pytest

from autosurgeon import cli
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.quality.settings import QualitySettings

FLAGS = ("--data", "--quality-samples", "--quality-method")


def _options(command: str) -> dict[str, object]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {o: a for a in sub.choices[command]._actions for o in a.option_strings}


@pytest.mark.parametrize("command", ["plan", "evaluate", "demo", "sweep", "apply"])
def test_every_command_takes_the_same_quality_flags(command: str) -> None:
    options, reference = _options(command), _options("evaluate")
    for flag in FLAGS:
        assert flag in options, f"{command} lacks {flag}"
        same = options[flag].help.split(" (default")[0] == reference[flag].help.split(" (default")[0]
        assert same and options[flag].choices == reference[flag].choices  # defaults may differ per command


@pytest.mark.parametrize("argv", [
    ["sweep", "tiny-llama-test", "--out", "{tmp}/run", "--quality-samples", "0"],
    ["sweep", "tiny-llama-test", "--out", "{tmp}/run", "--data", "{tmp}/missing.txt"],
    ["apply", "--policy", "{tmp}/none", "--model", "tiny-llama-test", "--out", "{tmp}/p.json",
     "--quality-samples", "0"],
    ["apply", "--policy", "{tmp}/none", "--model", "tiny-llama-test", "--out", "{tmp}/p.json",
     "--data", "{tmp}/missing.txt"],
])
def test_bad_quality_flags_are_one_line_before_any_work(argv: list[str], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert ("`--quality-samples` must be an integer >= 1" in err) or ("`--data`" in err and "is not a readable file"
                                                                      in err)
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


@pytest.mark.slow  # builds a runtime evaluator (the zoo model, its reference quality)
def test_sweep_config_carries_the_settings_to_the_runtime_evaluator(tmp_path: Path) -> None:
    from experiments.sweep import SweepConfig
    from experiments.sweep.runner import build_evaluator

    data = tmp_path / "text.txt"
    data.write_text("def f(x):\n    return x + 1\n" * 200)
    config = SweepConfig(model="tiny-llama-test", evaluator="runtime", quality_data=str(data), quality_samples=2,
                         quality_method="perplexity")
    assert SweepConfig.from_dict(config.to_dict()) == config  # written into the run's config.json and resumed
    assert SweepConfig.from_dict({"model": "tiny-llama-test"}).quality_settings() == QualitySettings()
    with pytest.raises(InvalidArgumentError, match="`--quality-method` must be one of"):
        SweepConfig(model="tiny-llama-test", quality_method="vibes")
    evaluator = build_evaluator(config, cache_path=tmp_path / "cache.jsonl")
    assert evaluator.quality_settings == QualitySettings(data=str(data), samples=2, method="perplexity")
    assert evaluator.quality_evaluator.method == "perplexity" and evaluator.quality_evaluator.data.shape[0] <= 2


@pytest.mark.slow  # a runtime context measures the unmodified model
def test_the_env_takes_the_settings_for_its_measuring_evaluator() -> None:
    from envs.surgery import SurgeryEnv

    with pytest.raises(InvalidArgumentError, match="`--quality-samples` must be an integer >= 1"):
        SurgeryEnv(models="tiny-llama-test", quality={"samples": 0})
    with pytest.raises(InvalidArgumentError, match="unknown key"):
        SurgeryEnv(models="tiny-llama-test", quality={"sample": 2})
    env = SurgeryEnv(models="tiny-llama-test", evaluator="runtime", quality={"samples": 2, "method": "fidelity"})
    runtime = env.contexts[0].evaluator
    assert runtime.quality_settings == QualitySettings(samples=2, method="fidelity")
    assert runtime.quality_evaluator.method == "fidelity"
