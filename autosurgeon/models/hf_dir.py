"""Load a local Hugging Face model directory (``config.json`` + ``*.safetensors``), never touching the hub."""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autosurgeon.errors import ModelDirectoryError
from autosurgeon.models.digits import ARCH_TAG as DIGITS_TAG
from autosurgeon.models.shapes import meta_build_kwargs


def check_model_dir(folder: Path) -> dict[str, Any]:
    """Return the parsed ``config.json`` of ``folder`` after checking that config and weights are there.

    Raises:
        ModelDirectoryError: naming the missing file (or the unreadable config) and what a directory needs.
    """
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelDirectoryError(
            f"model directory {str(folder)!r} has no config.json; a Hugging Face model directory needs "
            "config.json and *.safetensors weights (save one with model.save_pretrained(path))."
        )
    if not any(folder.glob("*.safetensors")):
        found = sorted(p.name for p in folder.iterdir())[:10]
        raise ModelDirectoryError(
            f"model directory {str(folder)!r} has no *.safetensors weights (found {found}); save them with "
            "model.save_pretrained(path), or pass device=\"meta\" to build the architecture alone."
        )
    return read_config(folder)


def read_config(folder: Path) -> dict[str, Any]:
    """``folder/config.json`` as a dict; ModelDirectoryError in one line when it is unreadable or not an object."""
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ModelDirectoryError(f"cannot read {str(config_path)!r} as JSON ({reason}); re-save the model with "
                                  "model.save_pretrained(path).") from None
    if not isinstance(config, dict):
        raise ModelDirectoryError(f"{str(config_path)!r} must hold a JSON object, got {type(config).__name__}; "
                                  "re-save the model with model.save_pretrained(path).")
    return config


def is_digits_dir(config: dict[str, Any]) -> bool:
    """Whether a directory's config marks it as a zoo ``DigitsCNN`` folder rather than a Hugging Face one."""
    return config.get("autosurgeon_arch") == DIGITS_TAG


def _model_class(config: Any) -> tuple[Any, str]:
    """The class to instantiate for ``config`` and the task it serves."""
    import transformers
    from transformers import AutoModel, AutoModelForCausalLM

    for arch in config.architectures or ():
        cls = getattr(transformers, arch, None)
        if cls is not None:
            # GPT-2's causal LM class is "GPT2LMHeadModel": ask transformers' own mapping, not the name's suffix.
            causal = arch.endswith("ForCausalLM") or AutoModelForCausalLM._model_mapping.get(type(config), None) is cls
            if arch.endswith("ForImageClassification"):
                return cls, "image-classification"
            return cls, "causal-lm" if causal else "feature-extraction"

    try:
        AutoModelForCausalLM._model_mapping[type(config)]
    except KeyError:
        return AutoModel, "feature-extraction"
    return AutoModelForCausalLM, "causal-lm"


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    # from_pretrained draws a "Loading weights" bar; library code leaves the terminal to the CLI.
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_hf_dir(
    folder: Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None, check: bool = True
) -> tuple[nn.Module, str]:
    """Load ``folder`` with transformers from local files only; return ``(model in eval mode, task)``.

    ``device="meta"`` builds the architecture from ``config.json`` and reads no weights (so a directory
    with a config alone is enough there).
    """
    device = torch.device(device)
    if check and device.type != "meta":
        check_model_dir(folder)
    elif not (folder / "config.json").is_file():
        check_model_dir(folder)  # raises the missing-config error
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # a torn or foreign config.json (transformers and hf_hub raise many kinds)
        raise ModelDirectoryError(f"model directory {str(folder)!r}: config.json is not a readable model config "
                                  f"({_first_line(exc)}); re-save it with model.save_pretrained(path).") from None
    cls, task = _model_class(config)
    if device.type == "meta":

        kwargs = meta_build_kwargs(config)
        if dtype is not None:
            kwargs["dtype"] = dtype
        build = cls.from_config if hasattr(cls, "from_config") else cls._from_config
        with torch.device("meta"):
            model = build(config, **kwargs)
        return model.eval(), task
    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        with _no_progress_bar():
            model = cls.from_pretrained(str(folder), **kwargs)
    except Exception as exc:  # truncated/garbage safetensors, shapes that do not fit the config ...
        raise ModelDirectoryError(f"model directory {str(folder)!r}: its weights do not load ({type(exc).__name__}: "
                                  f"{_first_line(exc)}); the *.safetensors files are truncated or do not belong to "
                                  "config.json: re-save the model with model.save_pretrained(path).") from None
    return model.to(device).eval(), task


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
