"""Quality metrics against hand-computed values; quality loss signs; the evaluator's cached reference."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.models.digits import accuracy as digits_accuracy
from autosurgeon.models.train_lm import heldout_perplexity
from autosurgeon.quality.precision_swap import swapped
from autosurgeon.quality.measure import (
    QualityEvaluator,
    QualityResult,
    embedding_fidelity,
    evaluate_quality,
    lm_heldout_windows,
    quality_loss,
)


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny matrices gain nothing from two threads, and on a shared 2-core box OpenMP spin-waits make them slow.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class TableLM(nn.Module):
    """Logits of the next token depend only on the current token: ``logits[b, t] = table[ids[b, t]]``."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table)
        self.calls = 0

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        self.calls += 1
        return SimpleNamespace(logits=self.table[input_ids])  # (B, T, V)


def test_perplexity_is_exp_mean_nll_hand_computed():
    table = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, -1.0], [0.5, 0.5, 3.0]])
    windows = torch.tensor([[0, 1, 2, 2], [2, 0, 0, 1]])  # (N, T + 1)
    nll = []
    for row in windows.tolist():
        for cur, nxt in zip(row[:-1], row[1:]):
            logits = table[cur].tolist()
            log_z = math.log(sum(math.exp(v) for v in logits))
            nll.append(log_z - logits[nxt])
    expected = math.exp(sum(nll) / len(nll))
    result = evaluate_quality(TableLM(table), task="causal-lm", data=windows)
    assert result.metric == "perplexity" and not result.higher_is_better
    assert result.n_samples == 6
    assert result.value == pytest.approx(expected, rel=1e-6)


def test_uniform_logits_give_vocab_size_perplexity():
    windows = torch.randint(0, 7, (3, 9), generator=torch.Generator().manual_seed(0))
    result = evaluate_quality(TableLM(torch.zeros(7, 7)), task="causal-lm", data=windows)
    assert result.value == pytest.approx(7.0, rel=1e-6)


class SignClassifier(nn.Module):
    """Class 1 when the image's pixel sum is positive, else class 0 (10 classes of logits)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 10)
        logits[torch.arange(x.shape[0]), (x.flatten(1).sum(1) > 0).long()] = 1.0
        return logits


def test_accuracy_hand_computed():
    x = torch.tensor([1.0, -1.0, 2.0, -3.0, 0.5]).view(5, 1, 1, 1)
    y = torch.tensor([1, 0, 0, 0, 1])  # the third is wrong
    result = evaluate_quality(SignClassifier(), task="image-classification", data=(x, y))
    assert (result.metric, result.value, result.n_samples) == ("accuracy", pytest.approx(0.8), 5)
    assert evaluate_quality(SignClassifier(), task="image-classification", data=(x, y), max_samples=2).value == 1.0


def test_classifier_default_data_is_the_digits_test_split():
    from autosurgeon.models.digits import DigitsRecipe, load_split

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    result = QualityEvaluator(model, task="image-classification").reference
    _, _, x_test, y_test = load_split(DigitsRecipe())
    assert result.n_samples == len(y_test)
    assert result.value == pytest.approx(digits_accuracy(model, x_test, y_test))


def test_quality_loss_signs_and_definitions():
    ppl = QualityResult("perplexity", 10.0, 100, higher_is_better=False)
    assert quality_loss(ppl, QualityResult("perplexity", 10.5, 100, False)) == pytest.approx(0.05)
    assert quality_loss(ppl, QualityResult("perplexity", 9.0, 100, False)) == pytest.approx(-0.1)
    acc = QualityResult("accuracy", 0.95, 100, higher_is_better=True)
    assert quality_loss(acc, QualityResult("accuracy", 0.94, 100, True)) == pytest.approx(0.01)  # 1 point
    assert quality_loss(acc, acc) == 0.0
    cos = QualityResult("embedding_cosine", 1.0, 10, True)
    assert quality_loss(cos, QualityResult("embedding_cosine", 0.97, 10, True)) == pytest.approx(0.03)
    with pytest.raises(InvalidArgumentError, match="cannot compare a 'accuracy' result with a 'perplexity'"):
        quality_loss(ppl, acc)


def test_embedding_fidelity_hand_computed():
    ref = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    cand = ref.clone()
    cand[0] = torch.tensor([0.0, 1.0])  # item 0 now points where items 2, 3 are: cosine 0 with its reference
    result = embedding_fidelity(ref, cand, top_k=1)
    cos1 = float(torch.nn.functional.cosine_similarity(ref[1:], cand[1:], dim=1).sum())
    assert result.value == pytest.approx((0.0 + cos1) / 4)
    # Nearest neighbours: ref 0->1, 1->0, 2->3, 3->2. Candidate: 0->2 (tie with 3 broken by topk), 1->3?, ...
    # computed independently here to avoid restating topk's tie rule:
    def nn1(e):
        u = torch.nn.functional.normalize(e, dim=1)
        s = u @ u.T
        s.fill_diagonal_(-float("inf"))
        return s.argmax(1)

    expected = float((nn1(ref) == nn1(cand)).double().mean())
    assert result.details["top1_agreement"] == pytest.approx(expected)
    assert expected < 1.0  # item 0's neighbour changed: agreement must drop
    with pytest.raises(InvalidArgumentError, match="`top_k` must be in"):
        embedding_fidelity(ref, cand, top_k=4)


def _tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=64)
    return BertModel(config).eval()


def test_encoder_fidelity_bert_reference_is_perfect_and_int4_is_not():
    model = _tiny_bert()
    evaluator = QualityEvaluator(model, task="feature-extraction", max_samples=24)
    ref = evaluator.reference
    assert (ref.metric, ref.value, ref.n_samples) == ("embedding_cosine", pytest.approx(1.0), 24)
    assert ref.details["top5_agreement"] == 1.0
    assert evaluator.loss(model) == pytest.approx(0.0, abs=1e-9)
    units = {n: "int4" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    with swapped(model, units, group_size=32):
        loss = evaluator.loss(model)
        agreement = evaluator.evaluate(model).details["top5_agreement"]
    assert 0.0 < loss < 0.5
    assert 0.0 <= agreement <= 1.0


def test_encoder_fidelity_llama_mean_pooled_hidden_state():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=1, intermediate_size=64)).eval()
    evaluator = QualityEvaluator(model, task="feature-extraction", max_samples=16)
    with swapped(model, {"model.layers.0.mlp.down_proj": "int4"}, group_size=32):
        # The reference was taken at construction: the same module changed in place is scored against it.
        assert evaluator.reference.value == pytest.approx(1.0)
        assert evaluator.loss(model) > 0.0


def test_lm_reference_cached_once_and_perplexity_when_data_is_given():
    table = torch.randn(256, 256, generator=torch.Generator().manual_seed(1))
    model = TableLM(table)
    windows = lm_heldout_windows(seq_len=256, max_windows=2)
    evaluator = QualityEvaluator(model, task="causal-lm", data=windows, batch_size=1)
    assert evaluator.method == "perplexity"  # data given: perplexity, whatever the model
    calls = model.calls
    first = evaluator.reference
    assert evaluator.reference is first and model.calls == calls  # computed once, at construction
    assert first.n_samples == 2 * 256
    lo, hi = first.interval
    assert lo <= first.value <= hi and first.chance == 256.0
    assert first.value == pytest.approx(heldout_perplexity(model, windows))
    assert evaluator.loss(model) == pytest.approx(0.0)


def test_bad_arguments_are_named():
    with pytest.raises(InvalidArgumentError, match="`task` must be one of"):
        evaluate_quality(nn.Linear(2, 2))
    with pytest.raises(InvalidArgumentError, match=r"`max_samples` \(`--quality-samples`\) must be >= 1"):
        QualityEvaluator(SignClassifier(), task="image-classification", max_samples=0)
    with pytest.raises(InvalidArgumentError, match="use QualityEvaluator"):
        evaluate_quality(_tiny_bert(), task="feature-extraction")
    with pytest.raises(InvalidArgumentError, match="must be a pair"):
        QualityEvaluator(SignClassifier(), task="image-classification", data=torch.zeros(3))
