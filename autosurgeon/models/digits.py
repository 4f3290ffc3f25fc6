"""A small residual CNN trained on scikit-learn's bundled 8x8 digits (no download), reproducibly.

The network has the unit kinds model surgery cares about in vision models: Conv-BN-ReLU stems, a
residual block, a strided downsampling conv, global pooling and a linear classifier.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autosurgeon._logging import get_logger
from autosurgeon.models.recipes import DigitsRecipe

logger = get_logger(__name__)

IMAGE_SHAPE = (1, 8, 8)  # (C, H, W)
NUM_CLASSES = 10
ARCH_TAG = "autosurgeon-digits-cnn"  # the config.json marker that tells this folder from a Hugging Face one


class ConvBNReLU(nn.Sequential):
    """Conv2d (no bias: BN follows) -> BatchNorm2d -> ReLU."""

    def __init__(self, c_in: int, c_out: int, *, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=False),
        )


class ResidualBlock(nn.Module):
    """Two 3x3 Conv-BN layers with an identity shortcut: ``relu(x + bn(conv(relu(bn(conv(x))))))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(out)))


class DigitsCNN(nn.Module):
    """``(B, 1, 8, 8)`` images in [0, 1] -> ``(B, 10)`` logits."""

    def __init__(self, *, width: int = 32) -> None:
        super().__init__()
        self.width = width
        self.stem = ConvBNReLU(1, width)  # (B, w, 8, 8)
        self.block = ResidualBlock(width)  # (B, w, 8, 8)
        self.down = ConvBNReLU(width, 2 * width, stride=2)  # (B, 2w, 4, 4)
        self.pool = nn.AdaptiveAvgPool2d(1)  # (B, 2w, 1, 1)
        self.fc = nn.Linear(2 * width, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(self.block(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def load_split(recipe: DigitsRecipe) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(x_train, y_train, x_test, y_test)``: images scaled to [0, 1], a stratified split by ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8), pixels 0..16
    labels = torch.tensor(data.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        list(range(len(labels))), test_size=recipe.test_fraction, random_state=recipe.seed, stratify=data.target
    )
    return images[idx_train], labels[idx_train], images[idx_test], labels[idx_test]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` (switched to eval mode) on ``x``."""
    model.eval()
    return (model(x).argmax(dim=1) == y).float().mean().item()


def train_digits(recipe: DigitsRecipe, out_dir: Path) -> dict[str, Any]:
    """Train, then write ``config.json``, ``model.safetensors`` and ``metrics.json`` to ``out_dir``."""
    from safetensors.torch import save_file

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        x_train, y_train, x_test, y_test = load_split(recipe)
        torch.manual_seed(recipe.seed)
        model = DigitsCNN(width=recipe.width)
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs)
        generator = torch.Generator().manual_seed(recipe.seed + 1)
        started = time.perf_counter()
        for epoch in range(recipe.epochs):
            model.train()
            order = torch.randperm(len(y_train), generator=generator)
            for start in range(0, len(order), recipe.batch_size):
                idx = order[start : start + recipe.batch_size]
                loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            scheduler.step()
            logger.debug("digits epoch %d loss %.4f", epoch + 1, loss.item())
        train_seconds = time.perf_counter() - started
        test_acc = accuracy(model, x_test, y_test)
        train_acc = accuracy(model, x_train, y_train)
    finally:
        torch.set_num_threads(previous_threads)

    config = {"autosurgeon_arch": ARCH_TAG, "width": recipe.width, "image_shape": list(IMAGE_SHAPE),
              "num_classes": NUM_CLASSES}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / "model.safetensors"),
              metadata={"format": "pt"})
    params = sum(p.numel() for p in model.parameters())
    record = {
        "metrics": {"accuracy": test_acc, "train_accuracy": train_acc, "chance_accuracy": 1.0 / NUM_CLASSES,
                    "train_seconds": train_seconds, "test_examples": float(len(y_test)), "params": float(params)},
        "provenance": {"recipe": dataclasses.asdict(recipe), "recipe_fingerprint": recipe.fingerprint(),
                       "data": "sklearn.datasets.load_digits (bundled, 1797 images 8x8), stratified split",
                       "torch": torch.__version__},
    }
    (out_dir / "metrics.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    logger.info("trained digits-cnn in %.1f s: test accuracy %.4f", train_seconds, test_acc)
    return record


def load_digits_dir(folder: Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> nn.Module:
    """Rebuild a ``DigitsCNN`` from a folder ``train_digits`` wrote (``device="meta"``: no weights read)."""
    config = json.loads((folder / "config.json").read_text())
    if torch.device(device).type == "meta":
        with torch.device("meta"):
            model = DigitsCNN(width=int(config["width"]))
    else:
        from safetensors.torch import load_file

        model = DigitsCNN(width=int(config["width"]))
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        model.to(device)
    if dtype is not None:
        model.to(dtype)
    return model.eval()
