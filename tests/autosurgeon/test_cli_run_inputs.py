"""`autosurgeon run` inputs: --prompt-ids, checks before any build, empty tokenizers, encoders and classifiers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from autosurgeon import zoo
from autosurgeon.cli import main
from autosurgeon.models.prompt import PromptIds, check_before_build, parse_prompt_ids, prompt_ids_tensor
from autosurgeon.errors import InvalidArgumentError


def test_prompt_ids_parse() -> None:
    assert parse_prompt_ids(None) is None
    assert parse_prompt_ids("1,2,3") == PromptIds(ids=(1, 2, 3))
    assert parse_prompt_ids("random:16") == PromptIds(random=16)


@pytest.mark.parametrize("text", ["", "1,,2", "a,b", "-1", "random:0", "random:x", "1.5"])
def test_bad_prompt_ids_are_one_line_errors(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"`--prompt-ids`") as info:
        parse_prompt_ids(text)
    assert "\n" not in str(info.value)


def test_shape_without_ids_is_refused_before_it_is_built(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was built")

    monkeypatch.setattr(zoo, "load_model", refuse)
    assert main(["run", "llama-7b-16l-shape", "--memory-budget", "cpu=1GiB"]) == 2
    assert "--prompt-ids random:16" in capsys.readouterr().err
    assert main(["run", "tiny-llama", "--prompt-ids", "1,x"]) == 2
    assert "`--prompt-ids` must be" in capsys.readouterr().err


def _encoder_dir(tmp_path: Path, *, tokenizer: bool) -> Path:
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(tmp_path)
    if tokenizer:
        (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "def", "x"]))
    return tmp_path


def test_directory_without_tokenizer_needs_ids(tmp_path: Path) -> None:
    folder = _encoder_dir(tmp_path, tokenizer=False)
    with pytest.raises(InvalidArgumentError, match="no tokenizer files .*--prompt-ids random:16"):
        check_before_build(str(folder), None)
    check_before_build(str(folder), PromptIds(random=4))  # ids given: fine


def test_ids_are_checked_against_the_vocabulary() -> None:
    loaded = zoo.load_model("tiny-llama", device="meta")
    assert prompt_ids_tensor(loaded, PromptIds(random=8)).shape == (1, 8)
    assert prompt_ids_tensor(loaded, PromptIds(random=8)).max() < 256
    with pytest.raises(InvalidArgumentError, match="256 is out of 'tiny-llama''s vocabulary of 256"):
        prompt_ids_tensor(loaded, PromptIds(ids=(1, 256)))


def test_encoder_runs_and_reports_embeddings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _encoder_dir(tmp_path, tokenizer=False)
    assert main(["run", str(folder), "--prompt-ids", "random:6", "--json", "--watts", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["output"] == "embeddings" and report["shape"] == [1, 6, 16] and report["mean_norm"] > 0
    assert report["repeats"] >= 3 and report["energy_source"] in ("rapl", "estimate", "nvml")
    assert report["energy_j_per_forward"] > 0 and report["energy_window_s"] >= 1.0


def test_classifier_runs_and_reports_class_scores(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "digits-cnn", "--json", "--watts", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["output"] == "class_scores" and len(report["top_classes"]) == 5
    assert sum(p for _, p in report["top_classes"]) <= 1.0 + 1e-6


def test_generation_from_prompt_ids(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "tiny-llama", "--prompt-ids", "100,101,102", "--max-new-tokens", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["prompt_ids"] == [100, 101, 102] and len(report["token_ids"]) == 2


def test_an_empty_tokenizer_from_transformers_is_detected(tmp_path: Path) -> None:
    """transformers loads a tokenizer with no vocabulary without complaint; `run` refuses it, naming the fix."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import LlamaConfig, LlamaForCausalLM

    from autosurgeon.models.prompt import tokenizer

    Tokenizer(WordLevel(vocab={}, unk_token=None)).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)) == 0  # what transformers gives
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    loaded = zoo.LoadedModel(name=str(tmp_path), model=LlamaForCausalLM(config), task="causal-lm", source="hf-dir",
                             path=tmp_path)
    with pytest.raises(InvalidArgumentError, match=r"is empty \(no vocabulary\); pass --prompt-ids random:16") as info:
        tokenizer(loaded)
    assert "\n" not in str(info.value)


def test_the_gpu_shape_command_is_checked_before_the_build_on_a_cpu_machine(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's GPU command, on a machine without one: one line naming the fix, and no 57 s build first."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the command runs (demo_gpu.sh measures it)")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was built")

    monkeypatch.setattr(zoo, "load_model", refuse)
    code = main(["run", "llama-7b-16l-shape", "--prompt-ids", "random:16", "--memory-budget", "gpu=3GiB", "--json"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "gpu budget but the device is cpu" in err[0] and "--device cuda" in err[0]
