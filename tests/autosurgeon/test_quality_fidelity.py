"""Model-agnostic quality: fidelity in the model's own vocabulary, data files, encoders at any sample count."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.quality.data_file import data_windows
from autosurgeon.quality.fidelity import bootstrap_ci, compare
from autosurgeon.quality.measure import QualityEvaluator, wilson
from autosurgeon.quality.precision_swap import precision_units, swapped
from autosurgeon.zoo import load_model


def _save_gpt2(folder, *, vocab=300, with_tokenizer=False):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab, n_positions=160, n_embd=32, n_layer=1, n_head=2, bos_token_id=0,
                        eos_token_id=0, architectures=["GPT2LMHeadModel"])
    GPT2LMHeadModel(config).save_pretrained(str(folder))
    if with_tokenizer:
        from experiments.benchmarks.unseen import build_tokenizer

        build_tokenizer("def f(x):\n    return x + 1\n" * 200).save_pretrained(str(folder))
    return folder


def test_compare_hand_checked_kl_and_agreement():
    ref = torch.log_softmax(torch.tensor([[[2.0, 0.0], [0.0, 1.0]]]), -1)  # (1, 2, 2)
    cand = torch.log_softmax(torch.tensor([[[2.0, 0.0], [1.0, 0.0]]]), -1)
    stats = compare(ref, cand)
    p = torch.softmax(torch.tensor([0.0, 1.0]), -1)
    kl_second = float((p * (p.log() - torch.log_softmax(torch.tensor([1.0, 0.0]), -1))).sum())
    assert stats["kl"] == pytest.approx(kl_second / 2)
    assert stats["top1_agreement"] == 0.5 and stats["positions"] == 2


def test_intervals_contain_the_estimate():
    lo, hi = bootstrap_ci([0.1, 0.2, 0.3, 0.4])
    assert lo <= 0.25 <= hi
    lo, hi = wilson(50, 100)
    assert lo < 0.5 < hi and hi - lo < 0.25


def test_hf_dir_without_tokenizer_defaults_to_fidelity_on_sampled_sequences(tmp_path):
    loaded = load_model(str(_save_gpt2(tmp_path / "m")))
    ev = QualityEvaluator(loaded, max_samples=2)
    assert ev.method == "fidelity" and "sampled from the unmodified model" in ev.reference.method
    assert ev.reference.value == pytest.approx(0.0, abs=1e-6) and ev.loss(loaded.model) == pytest.approx(0, abs=1e-6)
    assert int(ev.data.max()) < 300 and ev.data.shape == (2, 128)
    units = {n: "int4" for n in precision_units(loaded.model)}
    with swapped(loaded.model, units, group_size=32):
        loss = ev.loss(loaded.model)
        agree = ev.last.details["top1_agreement"]
    assert loss > 0 and 0 <= agree <= 1
    lo, hi = ev.loss_interval()
    assert lo <= loss <= hi
    assert math.isclose(loss, math.expm1(ev.last.value))


def test_hf_dir_with_tokenizer_uses_tokenized_text(tmp_path):
    loaded = load_model(str(_save_gpt2(tmp_path / "m", vocab=512, with_tokenizer=True)))
    ev = QualityEvaluator(loaded, max_samples=2)
    assert "encoded with the model's tokenizer" in ev.reference.method


def test_zoo_style_perplexity_needs_data_outside_the_zoo(tmp_path):
    loaded = load_model(str(_save_gpt2(tmp_path / "m")))
    with pytest.raises(InvalidArgumentError, match="needs data this model understands; pass `--data FILE`"):
        QualityEvaluator(loaded, method="perplexity")
    with pytest.raises(InvalidArgumentError, match="`--quality-method` must be one of"):
        QualityEvaluator(loaded, method="bleu")


def test_data_file_text_json_and_errors(tmp_path):
    text = tmp_path / "d.txt"
    text.write_text("hello world " * 40)
    w = data_windows(text, vocab_size=256, seq_len=16)
    assert w.shape[1] == 17 and int(w.max()) < 256
    ids = tmp_path / "d.json"
    ids.write_text(json.dumps([[1, 2, 3], [4, 5]]))
    assert data_windows(ids, vocab_size=10, seq_len=16).tolist() == [[1, 2, 3, 4, 5]]
    with pytest.raises(InvalidArgumentError, match=r"`--data` .*outside the model's vocabulary \[0, 4\)"):
        data_windows(ids, vocab_size=4, seq_len=16)
    with pytest.raises(InvalidArgumentError, match="`--data` .*cannot be read"):
        data_windows(tmp_path / "missing.txt", vocab_size=10, seq_len=16)
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(InvalidArgumentError, match="`--data` .*is empty"):
        data_windows(tmp_path / "e.txt", vocab_size=256, seq_len=16)
    (tmp_path / "b.json").write_text("[1, 2.5]")
    with pytest.raises(InvalidArgumentError, match="other than integer token ids"):
        data_windows(tmp_path / "b.json", vocab_size=256, seq_len=16)


def test_data_file_gives_perplexity(tmp_path):
    loaded = load_model(str(_save_gpt2(tmp_path / "m")))
    f = tmp_path / "d.txt"
    f.write_text("some text to score " * 30)
    ev = QualityEvaluator(loaded, data=str(f), max_samples=2)
    assert ev.method == "perplexity" and ev.reference.metric == "perplexity" and ev.reference.chance == 300


def _tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=48, max_position_embeddings=64)).eval()


@pytest.mark.parametrize("samples", [2, 4, 5])
def test_encoder_any_sample_count_works(samples):
    ev = QualityEvaluator(_tiny_bert(), task="feature-extraction", max_samples=samples)
    assert ev.top_k == min(5, samples - 1)
    assert ev.reference.n_samples == samples and ev.reference.interval is not None
    with pytest.raises(InvalidArgumentError, match="must be >= 2 for an encoder"):
        QualityEvaluator(_tiny_bert(), task="feature-extraction", max_samples=1)


def test_classifier_reports_agreement_interval_and_chance():
    class Sign(nn.Module):
        def forward(self, x):
            return torch.stack([-x.sum(1), x.sum(1)], dim=1)

    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    y = (x.sum(1) > 0).long()
    ev = QualityEvaluator(Sign(), task="image-classification", data=(x, y))
    r = ev.reference
    assert r.value == 1.0 and r.details["top1_agreement"] == 1.0 and r.chance == 0.5 and not r.at_chance
    y_random = torch.randint(0, 2, (40,), generator=torch.Generator().manual_seed(1))
    weak = QualityEvaluator(Sign(), task="image-classification", data=(x, y_random)).reference
    assert weak.at_chance == (weak.interval[0] <= 0.5) and "AT CHANCE" in weak.summary() or not weak.at_chance
