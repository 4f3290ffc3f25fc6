"""The unseen set: small models of architectures the project was never tuned on, for benchmarks and tests ONLY.

Nothing here may be used to choose or tune a default anywhere in ``autosurgeon/`` or ``runtime/``: these models
exist to check that the evaluators, the quality measures and the commands hold on models nobody looked at while
writing them (issue 13). Each is built from a transformers config installed here (no hub access), initialised
with a fixed seed and, for the causal LMs, trained for a few seconds on local text (the Python standard
library's sources, ``models.text_corpus``) so that its next-token distributions are not flat. Each is saved as
a Hugging Face directory (``config.json`` + ``model.safetensors``) under ``<cache>/unseen/<name>-<hash>/``;
some directories carry a tokenizer (a byte-level BPE trained here on the same local text) and some do not, on
purpose: quality must work both ways.

| name | architecture | task | tokenizer in the directory |
| --- | --- | --- | --- |
| unseen-gpt2 | GPT-2 (learned positions, Conv1D) | causal-lm | yes |
| unseen-opt | OPT (ReLU MLP, learned positions) | causal-lm | no |
| unseen-qwen2 | Qwen2 (GQA, RoPE, SwiGLU) | causal-lm | yes |
| unseen-neox | GPT-NeoX (parallel residual, fused QKV) | causal-lm | no |
| unseen-phi | Phi (partial rotary, dense MLP) | causal-lm | no |
| unseen-gemma | Gemma (MQA, GeGLU, scaled embeddings, (1 + w) RMSNorm) | causal-lm | yes |
| unseen-bert | BERT encoder (post-LN) | feature-extraction | yes |
| unseen-vit | ViT image classifier (patch conv, pre-LN), random init, 3x32x32 | image-classification | no |

Usage: ``build_unseen("unseen-opt")`` -> the directory (built once, then cached; concurrent callers build it
once); ``python -m experiments.benchmarks.unseen`` builds all and prints their folders.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.models.cache import build_once, cache_root

VOCAB = 512
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
REQUIRED = ("config.json", "model.safetensors", "unseen.json")
_VERSION = 1


@dataclass(frozen=True)
class UnseenSpec:
    """One unseen model: its transformers config, task, whether its directory keeps the tokenizer, training."""

    name: str
    config: Callable[[], Any]
    task: str
    with_tokenizer: bool
    train_steps: int = 60
    seed: int = 0

    def fingerprint(self) -> str:
        cfg = self.config().to_dict()
        cfg.pop("transformers_version", None)
        blob = json.dumps({"v": _VERSION, "cfg": cfg, "task": self.task, "tok": self.with_tokenizer,
                           "steps": self.train_steps, "seed": self.seed}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _gpt2() -> Any:
    from transformers import GPT2Config

    return GPT2Config(vocab_size=VOCAB, n_positions=256, n_embd=128, n_layer=4, n_head=4, bos_token_id=0, eos_token_id=0,
                      architectures=["GPT2LMHeadModel"])


def _opt() -> Any:
    from transformers import OPTConfig

    return OPTConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=4, ffn_dim=384, num_attention_heads=4,
                     max_position_embeddings=256, word_embed_proj_dim=128, architectures=["OPTForCausalLM"],
                     pad_token_id=1, bos_token_id=0, eos_token_id=0)


def _qwen2() -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=VOCAB, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       tie_word_embeddings=False, architectures=["Qwen2ForCausalLM"])


def _neox() -> Any:
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=512, max_position_embeddings=256, rotary_pct=0.25,
                         architectures=["GPTNeoXForCausalLM"])


def _phi() -> Any:
    from transformers import PhiConfig

    return PhiConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=384, num_hidden_layers=3,
                     num_attention_heads=4, max_position_embeddings=256, partial_rotary_factor=0.5,
                     architectures=["PhiForCausalLM"])


def _gemma() -> Any:
    from transformers import GemmaConfig

    return GemmaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=384, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=1, head_dim=32, max_position_embeddings=256,
                       architectures=["GemmaForCausalLM"])


def _bert() -> Any:
    from transformers import BertConfig

    return BertConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=3, num_attention_heads=4,
                      intermediate_size=384, max_position_embeddings=256, architectures=["BertModel"])


def _vit() -> Any:
    from transformers import ViTConfig

    return ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=128, num_hidden_layers=3,
                     num_attention_heads=4, intermediate_size=384, num_labels=10,
                     architectures=["ViTForImageClassification"])


UNSEEN: dict[str, UnseenSpec] = {
    s.name: s for s in (
        UnseenSpec("unseen-gpt2", _gpt2, "causal-lm", with_tokenizer=True),
        UnseenSpec("unseen-opt", _opt, "causal-lm", with_tokenizer=False),
        UnseenSpec("unseen-qwen2", _qwen2, "causal-lm", with_tokenizer=True),
        UnseenSpec("unseen-neox", _neox, "causal-lm", with_tokenizer=False),
        UnseenSpec("unseen-phi", _phi, "causal-lm", with_tokenizer=False),
        UnseenSpec("unseen-gemma", _gemma, "causal-lm", with_tokenizer=True),
        UnseenSpec("unseen-bert", _bert, "feature-extraction", with_tokenizer=True, train_steps=0),
        # quality: top-1 agreement with the unmodified model on seeded images (quality/model_images.py)
        UnseenSpec("unseen-vit", _vit, "image-classification", with_tokenizer=False, train_steps=0),
    )
}


def unseen_names() -> list[str]:
    return list(UNSEEN)


def _training_text(n_bytes: int = 262_144) -> str:
    from autosurgeon.models.text_corpus import build_corpus, decode

    return decode(build_corpus(train_bytes=n_bytes, heldout_bytes=0, seed=0).train)


def build_tokenizer(text: str | None = None) -> Any:
    """A byte-level BPE of ``VOCAB`` ids trained on local text (deterministic), as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = text if text is not None else _training_text()
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = text.splitlines()
    tok.train_from_iterator((lines[i : i + 256] for i in range(0, len(lines), 256)), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")


def _train(model: Any, ids: torch.Tensor, *, steps: int, seed: int, seq_len: int = 64, batch: int = 8) -> float:
    """``steps`` AdamW steps of next-token loss on random windows of ``ids``; returns the last loss."""
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    loss_value = float("nan")
    for _ in range(steps):
        starts = torch.randint(0, ids.numel() - seq_len - 1, (batch,), generator=generator)
        window = ids[starts[:, None] + torch.arange(seq_len + 1)]  # (B, T + 1)
        out = model(input_ids=window[:, :-1], labels=window[:, :-1])
        loss = out.loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss_value = float(loss.detach())
    model.eval()
    return loss_value


def _build(spec: UnseenSpec, tmp: Path) -> None:
    import transformers

    started = time.perf_counter()
    torch.manual_seed(spec.seed)
    config = spec.config()
    cls = getattr(transformers, config.architectures[0])
    model = cls(config).float()
    record: dict[str, Any] = {"name": spec.name, "task": spec.task, "seed": spec.seed,
                              "train_steps": spec.train_steps, "tokenizer": spec.with_tokenizer,
                              "params": sum(p.numel() for p in model.parameters()),
                              "note": "unseen set: benchmarks and tests only, never used to tune defaults"}
    text = _training_text() if spec.task != "image-classification" else ""
    tokenizer = build_tokenizer(text) if text else None
    if spec.train_steps:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            ids = torch.tensor(tokenizer(text[:131_072])["input_ids"], dtype=torch.long)
            record["final_train_loss"] = _train(model, ids, steps=spec.train_steps, seed=spec.seed)
        finally:
            torch.set_num_threads(threads)
    model.save_pretrained(str(tmp))
    if spec.with_tokenizer:
        tokenizer.save_pretrained(str(tmp))
    record["build_seconds"] = time.perf_counter() - started
    (tmp / "unseen.json").write_text(json.dumps(record, indent=1))


def unseen_folder(name: str, *, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    spec = _spec(name)
    return cache_root(cache_dir) / "unseen" / f"{name}-{spec.fingerprint()}"


def build_unseen(name: str, *, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The directory of unseen model ``name``, built on first use (a few seconds) and cached."""
    spec = _spec(name)
    return build_once(unseen_folder(name, cache_dir=cache_dir), REQUIRED, lambda tmp: _build(spec, tmp))


def _spec(name: str) -> UnseenSpec:
    if name not in UNSEEN:
        raise InvalidArgumentError(f"unknown unseen model {name!r}; choose one of {', '.join(UNSEEN)}.")
    return UNSEEN[name]


def main() -> int:
    for name in UNSEEN:
        folder = build_unseen(name)
        info = json.loads((folder / "unseen.json").read_text())
        print(f"{name}: {folder} ({info['params'] / 1e6:.2f} M params, tokenizer {info['tokenizer']}, "
              f"loss {info.get('final_train_loss', float('nan')):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
