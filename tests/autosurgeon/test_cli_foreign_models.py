"""`plan` and `evaluate` with default flags on an encoder, a causal-LM directory without a tokenizer and a
Hugging Face image classifier (ViT: no data of its own, scored by agreement with the unmodified model)."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from autosurgeon.cli import evaluate as evaluate_cli
from autosurgeon.cli import plan as plan_cli
from autosurgeon.errors import InvalidArgumentError


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    plan_cli.register(sub)
    evaluate_cli.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def _bert(folder: Path) -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, architectures=["BertModel"])
              ).save_pretrained(str(folder))
    return folder


def _neox(folder: Path) -> Path:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=160,
                                     architectures=["GPTNeoXForCausalLM"])).save_pretrained(str(folder))
    return folder


def _vit(folder: Path) -> Path:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=32,
                                        num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                        num_labels=5, architectures=["ViTForImageClassification"])
                              ).save_pretrained(str(folder))
    return folder


def test_an_image_classifier_directory_loads_with_its_inputs_and_model_labelled_quality(tmp_path: Path) -> None:
    from autosurgeon.quality.calibration import calibration_for
    from autosurgeon.quality.measure import QualityEvaluator
    from autosurgeon.zoo import load_model

    loaded = load_model(str(_vit(tmp_path / "vit")))
    assert (loaded.task, loaded.image_shape, loaded.input_name) == ("image-classification", (3, 16, 16),
                                                                    "pixel_values")
    assert loaded.example_inputs()["pixel_values"].shape == (1, 3, 16, 16)
    calib = calibration_for(loaded)
    assert calib.kind == "images" and calib.inputs.shape[1:] == (3, 16, 16) and "unmodified model" in \
        calib.settings["source"]
    meter = QualityEvaluator(loaded, max_samples=6)
    assert meter.reference.value == 1.0 and meter.reference.n_samples == 6
    assert "labelled by the unmodified model" in meter.reference.method


@pytest.mark.slow
@pytest.mark.parametrize("make", [_bert, _neox, _vit], ids=["encoder", "causal-lm-without-tokenizer",
                                                          "image-classifier"])
def test_plan_and_evaluate_with_default_flags(make, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = make(tmp_path / "model")
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert _run(["plan", str(model), "--device", "local", "--max-quality-loss", "0.01", "--precisions",
                 "int8,int4", "--group-sizes", "32", "--out", str(tmp_path / "plan.json"), *cache]) == 0
    out = capsys.readouterr().out
    assert "measured loss" in out  # the plan's quality was re-checked on the runtime before it was written
    assert _run(["evaluate", str(model), "--plan", str(tmp_path / "plan.json"), "--evaluator", "runtime",
                 "--quality-samples", "3", *cache]) == 0
    out = capsys.readouterr().out
    assert "quality_loss" in out and "vs reference" in out


def test_bad_data_file_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"`--data` .* is not a readable file"):
        _run(["evaluate", str(tmp_path), "--plan", str(tmp_path / "p.json"), "--data", str(tmp_path / "none.txt")])
    with pytest.raises(InvalidArgumentError, match=r"`--quality-samples` must be an integer >= 1"):
        _run(["evaluate", str(tmp_path), "--plan", str(tmp_path / "p.json"), "--quality-samples", "0"])
