"""The model zoo: spec resolution, trained models beating their baselines, shapes, example inputs, cache, CLI."""
from __future__ import annotations

import argparse
import json
import math
import os
import textwrap
from pathlib import Path

import pytest
import torch
from autosurgeon import zoo
from autosurgeon.errors import InvalidArgumentError, ModelDirectoryError, UnknownModelError
from autosurgeon.models import shapes
from autosurgeon.models.cache import build_once
from autosurgeon.models.digits import DigitsRecipe, train_digits
from autosurgeon.models.inputs import cache_argument
from autosurgeon.models.text_corpus import (
    build_corpus,
    decode,
    encode,
    heldout_windows,
    stdlib_sources,
    unigram_perplexity,
)
from autosurgeon.zoo import LoadedModel, list_models, load_model


def _tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    fields = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=48, max_position_embeddings=128, tie_word_embeddings=False)
    fields.update(overrides)
    return LlamaConfig(**fields)


@pytest.fixture(scope="module")
def trained_lm(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """tiny-llama-test trained once for this file, in a private cache."""
    cache = tmp_path_factory.mktemp("zoo-cache")
    return load_model("tiny-llama-test", cache_dir=cache)


# --- trained models -------------------------------------------------------------------------------


def test_fast_llama_beats_unigram_on_heldout_bytes(trained_lm: LoadedModel) -> None:
    m = trained_lm.metrics
    # A model that learnt nothing of context sits at the unigram perplexity; 0.7x is a clear margin
    # (measured: about 0.45x) that still leaves room for machine-to-machine float differences.
    assert m["perplexity"] < 0.7 * m["unigram_perplexity"], m
    assert 5.0 < m["unigram_perplexity"] < 256.0  # byte frequencies of source code, not uniform bytes
    assert trained_lm.source == "zoo" and trained_lm.task == "causal-lm" and not trained_lm.model.training


def test_trained_model_reloads_as_hf_dir_with_identical_outputs(trained_lm: LoadedModel) -> None:
    assert trained_lm.path is not None and (trained_lm.path / "config.json").is_file()
    again = load_model(str(trained_lm.path))
    assert again.source == "hf-dir" and again.task == "causal-lm"
    assert again.metrics["perplexity"] == pytest.approx(trained_lm.metrics["perplexity"])
    ids = trained_lm.example_inputs(2, 32)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(again.model(input_ids=ids).logits, trained_lm.model(input_ids=ids).logits,
                                   rtol=0, atol=0)


def test_trained_model_is_cached_not_retrained(trained_lm: LoadedModel) -> None:
    cache = trained_lm.path.parent.parent
    mtime = (trained_lm.path / "model.safetensors").stat().st_mtime_ns
    again = load_model("tiny-llama-test", cache_dir=cache)
    assert (again.path / "model.safetensors").stat().st_mtime_ns == mtime
    listed = {e.name: e for e in list_models(cache_dir=cache)}
    assert listed["tiny-llama-test"].trained and listed["tiny-llama-test"].metrics["perplexity"] > 1.0
    # This private cache holds only the fast recipe; tiny-llama is trained because its weights ship.
    assert listed["tiny-llama"].source == "shipped"


def test_prefill_inputs_of_byte_lm_are_heldout_text(trained_lm: LoadedModel) -> None:
    ids = trained_lm.example_inputs(1, 64)["input_ids"]
    assert ids.shape == (1, 64) and ids.dtype == torch.long
    text_like = sum(32 <= b < 127 or b in (9, 10) for b in ids[0].tolist()) / ids.shape[1]
    assert text_like > 0.9  # source text (uniform random bytes would score about 0.38)
    torch.testing.assert_close(ids, trained_lm.example_inputs(1, 64)["input_ids"])  # seeded


def test_decode_inputs_hold_a_cache_of_seq_len(trained_lm: LoadedModel) -> None:
    inputs = trained_lm.example_inputs(3, 17, phase="decode")
    assert inputs["input_ids"].shape == (3, 1) and inputs["use_cache"] is True
    cache = inputs[cache_argument(trained_lm.model)]
    assert cache.get_seq_length() == 17
    with torch.no_grad():
        out = trained_lm.model(**inputs)
    assert out.logits.shape == (3, 1, 256)
    assert cache.get_seq_length() == 18  # the decode step appended one position


def test_digits_cnn_quick_recipe_well_above_chance(tmp_path: Path) -> None:
    record = train_digits(DigitsRecipe(epochs=4, width=16), tmp_path)
    assert record["metrics"]["accuracy"] > 0.8  # chance is 0.1
    loaded = load_model(str(tmp_path))  # the folder loads by path, as a directory spec
    assert loaded.task == "image-classification" and loaded.metrics["accuracy"] == record["metrics"]["accuracy"]
    inputs = loaded.example_inputs(5, phase="prefill")
    assert set(inputs) == {"x"} and inputs["x"].shape == (5, 1, 8, 8)
    with torch.no_grad():
        assert loaded.model(**inputs).shape == (5, 10)
    with pytest.raises(InvalidArgumentError, match="`phase` must be 'prefill'"):
        loaded.example_inputs(1, phase="decode")


@pytest.mark.slow
def test_fast_moe_beats_unigram(tmp_path: Path) -> None:
    loaded = load_model("tiny-moe-test", cache_dir=tmp_path)
    assert loaded.metrics["perplexity"] < 0.7 * loaded.metrics["unigram_perplexity"], loaded.metrics
    inputs = loaded.example_inputs(2, 9, phase="decode")
    with torch.no_grad():
        assert loaded.model(**inputs).logits.shape == (2, 1, 256)


# --- shapes and meta --------------------------------------------------------------------------------


def _llama_params(v: int, h: int, layers: int, heads: int, kv: int, inter: int, experts: int = 0) -> int:
    """Hand count: embeddings + head, per layer q/o + k/v + MLP (or experts + router) + 2 norms, final norm."""
    head_dim = h // heads
    attn = 2 * h * h + 2 * h * kv * head_dim
    mlp = experts * 3 * h * inter + experts * h if experts else 3 * h * inter
    return 2 * v * h + layers * (attn + mlp + 2 * h) + h


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("llama-7b-shape", _llama_params(32000, 4096, 32, 32, 32, 11008)),
        ("llama-7b-16l-shape", _llama_params(32000, 4096, 16, 32, 32, 11008)),
        ("llama-70b-shape", _llama_params(32000, 8192, 80, 64, 8, 28672)),
        ("mixtral-8x7b-shape", _llama_params(32000, 4096, 32, 32, 8, 14336, experts=8)),
    ],
)
def test_shapes_build_on_meta_with_documented_param_counts(name: str, expected: int) -> None:
    loaded = load_model(name, device="meta")
    params = sum(p.numel() for p in loaded.model.parameters())
    assert params == expected
    assert all(p.device.type == "meta" for p in loaded.model.parameters())
    if name == "llama-7b-shape":
        assert params == pytest.approx(6.74e9, rel=1e-3)  # Llama-2-7B's published size


def test_meta_decode_inputs_run_forward_on_meta() -> None:
    loaded = load_model("mixtral-8x7b-shape", device="meta")
    inputs = loaded.example_inputs(2, 40, phase="decode")
    cache = inputs[cache_argument(loaded.model)]
    assert cache.get_seq_length() == 40 and inputs["input_ids"].device.type == "meta"
    key = cache.layers[0].keys
    assert key.shape == (2, 8, 40, 128)  # (B, kv heads, T, head dim) from the config
    with torch.no_grad():
        assert loaded.model(**inputs).logits.shape == (2, 1, 32000)


def test_trained_names_build_on_meta_without_training(tmp_path: Path) -> None:
    for name in ("tiny-llama", "tiny-moe", "digits-cnn"):
        loaded = load_model(name, device="meta", cache_dir=tmp_path)
        assert all(p.device.type == "meta" for p in loaded.model.parameters())
    assert not any(tmp_path.iterdir())  # nothing was trained or written


def test_shape_on_cpu_refused_when_it_cannot_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shapes, "_free_bytes", lambda device: 2**30)
    with pytest.raises(InvalidArgumentError, match=r"llama-70b-shape .* needs 257\.\d GiB .*device=\"meta\""):
        load_model("llama-70b-shape", device="cpu")


def test_list_models_counts_and_kinds(tmp_path: Path) -> None:
    entries = {e.name: e for e in list_models(cache_dir=tmp_path)}
    assert {"tiny-llama", "tiny-moe", "digits-cnn", "llama-7b-shape", "llama-7b-16l-shape", "llama-70b-shape",
            "mixtral-8x7b-shape"} <= set(entries)
    assert entries["llama-70b-shape"].kind == "shape" and not entries["llama-70b-shape"].trained
    assert entries["tiny-llama"].kind == "trained" and entries["tiny-llama"].source == "shipped"
    assert entries["tiny-llama-test"].kind == "trained" and not entries["tiny-llama-test"].trained
    assert entries["tiny-llama"].params == _llama_params(256, 256, 4, 4, 2, 688)
    assert entries["digits-cnn"].task == "image-classification"


# --- directories and factories ----------------------------------------------------------------------


def test_hf_dir_round_trip(tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(_tiny_llama_config()).eval()
    model.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.source == "hf-dir" and loaded.task == "causal-lm" and loaded.metrics == {}
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)
    meta = load_model(tmp_path, device="meta", dtype=torch.bfloat16)
    assert {p.device.type for p in meta.model.parameters()} == {"meta"}
    assert {p.dtype for p in meta.model.parameters()} == {torch.bfloat16}
    decode_inputs = meta.example_inputs(1, 5, phase="decode")
    assert decode_inputs[cache_argument(meta.model)].layers[0].keys.dtype == torch.bfloat16


def test_dir_missing_config(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelDirectoryError, match="has no config.json"):
        load_model(str(tmp_path))


def test_dir_missing_weights(tmp_path: Path) -> None:
    _tiny_llama_config().save_pretrained(tmp_path)
    with pytest.raises(ModelDirectoryError, match=r"has no \*\.safetensors weights.*device=\"meta\""):
        load_model(str(tmp_path))
    assert load_model(str(tmp_path), device="meta").task == "causal-lm"  # the config alone suffices on meta


def test_file_instead_of_dir(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    with pytest.raises(ModelDirectoryError, match="is a file; pass the directory"):
        load_model(str(path))


def test_factory_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "zoo_factory_mod.py").write_text(textwrap.dedent(
        """
        import torch
        from torch import nn
        from autosurgeon.zoo import LoadedModel

        def mlp():
            return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

        def classifier():
            net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
            return LoadedModel(name="tiny", model=net, task="image-classification", source="mine",
                               image_shape=(3, 2, 2), input_name="input")

        def not_a_model():
            return 42
        """
    ))
    monkeypatch.syspath_prepend(str(tmp_path))
    plain = load_model("zoo_factory_mod:mlp")
    assert plain.source == "factory" and plain.task == "custom" and not plain.model.training
    with pytest.raises(InvalidArgumentError, match="no known input format"):
        plain.example_inputs()
    meta = load_model("zoo_factory_mod:mlp", device="meta")
    assert {p.device.type for p in meta.model.parameters()} == {"meta"}
    rich = load_model("zoo_factory_mod:classifier", dtype=torch.float64)
    assert rich.source == "factory" and rich.name == "tiny"
    inputs = rich.example_inputs(4)
    assert inputs["input"].shape == (4, 3, 2, 2) and inputs["input"].dtype == torch.float64
    assert rich.model(**inputs).shape == (4, 3)
    with pytest.raises(UnknownModelError, match="must return an nn.Module or a LoadedModel"):
        load_model("zoo_factory_mod:not_a_model")
    with pytest.raises(UnknownModelError, match="has no callable 'missing'"):
        load_model("zoo_factory_mod:missing")
    with pytest.raises(UnknownModelError, match="cannot import module 'no_such_mod_xyz'"):
        load_model("no_such_mod_xyz:f")


def test_unknown_name_lists_names_and_forms() -> None:
    with pytest.raises(UnknownModelError, match=r"unknown MODEL 'tiny-lama'.*tiny-llama, tiny-moe, digits-cnn.*"
                       r"Hugging Face model directory.*module:factory"):
        load_model("tiny-lama")


def test_factory_causal_lm_gets_token_inputs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "zoo_factory_lm.py").write_text(textwrap.dedent(
        """
        from transformers import LlamaConfig, LlamaForCausalLM

        def build():
            return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=32))
        """
    ))
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_model("zoo_factory_lm:build")
    assert loaded.task == "causal-lm"
    ids = loaded.example_inputs(2, 7)["input_ids"]
    assert ids.shape == (2, 7) and int(ids.max()) < 50


# --- argument checks, corpus, cache -----------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"batch": 0}, "`batch` must be an integer >= 1, got 0"),
    ({"seq_len": 0}, "`seq_len` must be an integer >= 1, got 0"),
    ({"phase": "train"}, "`phase` must be one of"),
])
def test_example_inputs_validate(kwargs: dict, match: str) -> None:
    loaded = load_model("llama-7b-shape", device="meta")
    with pytest.raises(InvalidArgumentError, match=match):
        loaded.example_inputs(**kwargs)


def test_bad_device_is_a_clear_error() -> None:
    with pytest.raises(InvalidArgumentError, match="`device` must be a torch device"):
        load_model("llama-7b-shape", device="gpu0")


def test_byte_tokenizer_round_trip() -> None:
    text = "def f(x):\n    return 'héllo' + x  # ü\n"
    assert decode(encode(text)) == text
    assert max(encode(text)) < 256 and len(encode(text)) == len(text.encode())


def test_corpus_split_by_file_and_reproducible() -> None:
    a = build_corpus(train_bytes=50_000, heldout_bytes=20_000, seed=3)
    b = build_corpus(train_bytes=50_000, heldout_bytes=20_000, seed=3)
    assert a.fingerprint == b.fingerprint and a.train.numel() == 50_000 and a.heldout.numel() == 20_000
    assert a.train_files >= 2 and a.heldout_files >= 1 and len(stdlib_sources()) > 100
    assert build_corpus(train_bytes=50_000, heldout_bytes=20_000, seed=4).fingerprint != a.fingerprint
    windows = heldout_windows(a.heldout, 99)
    assert windows.shape == (200, 100)


def test_unigram_perplexity_reference() -> None:
    uniform = torch.arange(256, dtype=torch.uint8).repeat(10)
    assert unigram_perplexity(uniform, uniform) == pytest.approx(256.0)
    skewed = torch.zeros(10_000, dtype=torch.uint8)  # all zero bytes: add-one smoothing gives p(0) = 10001/10256
    assert unigram_perplexity(skewed, torch.zeros(5, dtype=torch.uint8)) == pytest.approx(10256 / 10001, rel=1e-9)
    assert math.isfinite(unigram_perplexity(skewed, torch.full((5,), 7, dtype=torch.uint8)))


def test_build_once_builds_once_and_cleans_up_failures(tmp_path: Path) -> None:
    calls = []

    def build(folder: Path) -> None:
        calls.append(folder)
        (folder / "a.txt").write_text("ok")

    target = tmp_path / "m"
    assert build_once(target, ("a.txt",), build) == target
    assert build_once(target, ("a.txt",), build) == target
    assert len(calls) == 1 and (target / "a.txt").read_text() == "ok"

    def broken(folder: Path) -> None:
        (folder / "half.txt").write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        build_once(tmp_path / "n", ("a.txt",), broken)
    assert not (tmp_path / "n").exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == ["m"]  # no temp folder left

    stale = tmp_path / ".k.abc123"  # what a killed build leaves behind
    stale.mkdir()
    build_once(tmp_path / "k", ("a.txt",), build)
    assert not stale.exists() and (tmp_path / "k" / "a.txt").is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700


def test_cache_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOSURGEON_CACHE", str(tmp_path))
    assert zoo.cache_folder("digits-cnn").parent == tmp_path / "zoo"
    with pytest.raises(InvalidArgumentError, match="nothing to train"):
        zoo.cache_folder("llama-7b-shape")


# --- CLI ----------------------------------------------------------------------------------------------


def _cli(argv: list[str]) -> argparse.Namespace:
    from autosurgeon.cli.zoo import register

    parser = argparse.ArgumentParser(prog="autosurgeon")
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_lists_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _cli(["zoo", "--cache-dir", str(tmp_path)])
    assert args.func(args) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["NAME", "TASK", "PARAMS", "FP32", "STATUS", "METRICS"]
    assert "llama-70b-shape" in table and "275.9 GB" in table and "not trained" in table
    args = _cli(["zoo", "--json", "--cache-dir", str(tmp_path)])
    assert args.func(args) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["llama-7b-shape"]["bytes_fp32"] == 4 * rows["llama-7b-shape"]["params"]


def test_cli_train_errors(tmp_path: Path) -> None:
    args = _cli(["zoo", "train", "--cache-dir", str(tmp_path)])
    with pytest.raises(InvalidArgumentError, match="needs a NAME; trainable names: tiny-llama"):
        args.func(args)
    args = _cli(["zoo", "--train", "llama-7b-shape", "--cache-dir", str(tmp_path)])
    with pytest.raises(InvalidArgumentError, match="nothing to train"):
        args.func(args)


def test_cli_train_reports_cached_model(trained_lm: LoadedModel, capsys: pytest.CaptureFixture[str]) -> None:
    args = _cli(["zoo", "train", "tiny-llama-test", "--json", "--cache-dir", str(trained_lm.path.parent.parent)])
    assert args.func(args) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["metrics"]["perplexity"] == pytest.approx(trained_lm.metrics["perplexity"])


def test_bf16_autocast_recipe_trains_and_keeps_float32_weights(tmp_path: Path) -> None:
    import dataclasses

    from autosurgeon.models.registry import ZOO
    from autosurgeon.models.train_lm import LMRecipe, train_lm

    recipe = dataclasses.replace(ZOO["tiny-llama-test"].recipe, steps=60, autocast="bfloat16")
    record = train_lm(recipe, tmp_path)
    metrics = record["metrics"]
    assert metrics["perplexity"] < 0.8 * metrics["unigram_perplexity"]
    model = load_model(str(tmp_path)).model
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    # A float32 recipe's cache folder does not move because the field exists; a bf16 one gets its own.
    plain = ZOO["tiny-llama-test"].recipe
    assert plain.fingerprint() != recipe.fingerprint()
    assert plain.fingerprint() == dataclasses.replace(plain, autocast="float32").fingerprint()
    with pytest.raises(InvalidArgumentError, match="autocast"):
        LMRecipe(autocast="float16")
