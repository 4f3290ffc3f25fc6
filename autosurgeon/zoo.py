"""The model zoo: named models, Hugging Face directories and ``module:factory`` specs behind one call.

``load_model(spec)`` resolves ``spec`` in this order:

1. a zoo name (``list_models()``): small models trained reproducibly on local data and cached
   (``tiny-llama``, ``tiny-moe``, ``digits-cnn``, and ``*-test`` recipes that train in seconds), and
   large architectures by shape (``llama-7b-shape``, ``llama-7b-16l-shape``, ``llama-70b-shape``,
   ``mixtral-8x7b-shape``) with random weights;
2. a local directory: a Hugging Face model directory (``config.json`` + ``*.safetensors``), loaded with
   transformers from local files only (zoo cache folders load this way too);
3. ``"package.module:factory"``: ``factory()`` returns an ``nn.Module`` or a ``LoadedModel``.

``device="meta"`` builds every spec's architecture without weights, instantly and without training:
the form for analysis. On a real device the shapes allocate every weight (Llama-70B is 276 GB in
float32); ``load_model`` refuses when the bytes exceed the free memory, naming the size.

Trained models are cached under ``cache_dir``, else ``$AUTOSURGEON_CACHE``, else ``~/.cache/autosurgeon``,
in ``zoo/<name>-<recipe hash>/`` (a Hugging Face directory plus ``metrics.json``).
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autosurgeon._logging import get_logger
from autosurgeon.errors import (
    InvalidArgumentError,
    ModelDirectoryError,
    UnknownModelError,
)
from autosurgeon.files.runfolder import check_out_path
from autosurgeon.models import listing as _listing
from autosurgeon.models.cache import build_once, is_complete
from autosurgeon.models.digits import (
    IMAGE_SHAPE,
    DigitsCNN,
    DigitsRecipe,
    load_digits_dir,
    train_digits,
)
from autosurgeon.models.hf_dir import check_model_dir, is_digits_dir, load_hf_dir, read_config
from autosurgeon.models.inputs import (
    TokenSource,
    causal_lm_inputs,
    check_sizes,
    image_inputs,
    model_device_dtype,
    random_tokens,
)
from autosurgeon.models.listing import ZooEntry
from autosurgeon.models.registry import ZOO as _ZOO
from autosurgeon.models.registry import ZooRecipe
from autosurgeon.models.shapes import SHAPES, build_config_model
from autosurgeon.models.ship_export import export_folder
from autosurgeon.models.shipped import shipped_folder
from autosurgeon.models.text_corpus import HeldoutTokens
from autosurgeon.models.train_lm import LMRecipe, train_lm

logger = get_logger(__name__)

CACHED_FILES = ("config.json", "model.safetensors", "metrics.json")


@dataclass
class LoadedModel:
    """A model in eval mode plus what the rest of AutoSurgeon needs to know about it.

    Attributes:
        name: the spec it was loaded from (zoo name, directory, or ``module:factory``).
        model: the ``nn.Module``, in eval mode.
        task: ``"causal-lm"``, ``"image-classification"``, ``"feature-extraction"`` or ``"custom"``
            (a factory module of unknown inputs: ``example_inputs`` then says what to do).
        source: ``"zoo"``, ``"hf-dir"`` or ``"factory"``.
        metrics: measured quality of a trained model (``perplexity``, ``unigram_perplexity``,
            ``accuracy``, ``train_seconds`` ...); empty for untrained ones.
        path: the folder the weights came from, if any.
        image_shape: ``(C, H, W)`` for image classifiers.
        input_name: the forward argument that takes images.
        token_source: draws prompt token ids; trained byte LMs use held-out text, others random ids.
    """

    name: str
    model: nn.Module
    task: str
    source: str
    metrics: dict[str, float] = field(default_factory=dict)
    path: Path | None = None
    image_shape: tuple[int, int, int] | None = None
    input_name: str = "x"
    token_source: TokenSource | None = None

    def example_inputs(
        self,
        batch: int = 1,
        seq_len: int = 128,
        *,
        phase: str = "prefill",
        device: str | torch.device | None = None,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Keyword arguments for ``model(**inputs)``, on ``device`` (default: the model's device).

        Causal LMs: prefill -> ``{"input_ids": (B, T)}``; decode -> ``{"input_ids": (B, 1), "cache": DynamicCache
        holding seq_len positions, "use_cache": True}`` (``"past_key_values"`` where the model's forward still
        takes that name: ``models.inputs.cache_argument``; cache keys and values are seeded random numbers, or
        empty on meta; see ``models.inputs``). Image classifiers:
        ``{input_name: (B, C, H, W)}``; ``seq_len`` is ignored and ``phase`` must be ``"prefill"``.
        """
        check_sizes(batch, seq_len, phase)
        model_device, dtype = model_device_dtype(self.model)
        target = torch.device(device) if device is not None else model_device
        if self.task in ("causal-lm", "feature-extraction"):
            if phase == "decode" and self.task != "causal-lm":
                raise InvalidArgumentError(f"`phase`='decode' needs a causal LM; {self.name!r} is {self.task}.")
            tokens = self.token_source or random_tokens(_vocab_size(self.model))
            return causal_lm_inputs(self.model, batch, seq_len, phase=phase, device=target, tokens=tokens, seed=seed)
        if self.task == "image-classification" and self.image_shape is not None:
            if phase != "prefill":
                raise InvalidArgumentError(
                    f"`phase` must be 'prefill' for the image classifier {self.name!r}, got {phase!r}."
                )
            return image_inputs(batch, self.image_shape, name=self.input_name, device=target, dtype=dtype, seed=seed)
        raise InvalidArgumentError(
            f"{self.name!r} has task {self.task!r} and no known input format; have its factory return a "
            "LoadedModel with task='causal-lm', or task='image-classification' and image_shape=(C, H, W)."
        )


ACCEPTED_FORMS = (
    "a zoo name, a Hugging Face model directory (config.json + *.safetensors), "
    "or 'package.module:factory' (factory() returns an nn.Module or a LoadedModel)"
)


def model_names() -> list[str]:
    """The zoo's names, in listing order."""
    return list(_ZOO)


def trainable_names() -> list[str]:
    """The zoo's names that are trained (and cached) rather than built by shape."""
    return [name for name, entry in _ZOO.items() if entry.recipe is not None]


def cache_folder(name: str, *, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder of the trained zoo model ``name`` (which may not exist yet)."""
    entry = _zoo_entry(name)
    if entry.recipe is None:
        raise InvalidArgumentError(f"{name!r} is an architecture shape with random weights; there is nothing to train.")
    return _listing.cache_folder(name, cache_dir)


def shipped_path(name: str) -> Path | None:
    """The packaged folder of the trained zoo model ``name``, if one ships for its current recipe (else None)."""
    entry = _zoo_entry(name)
    if entry.recipe is None:
        return None
    return shipped_folder(name, entry.recipe.fingerprint())


def ensure_trained(name: str, *, cache_dir: str | os.PathLike[str] | None = None, shipped: bool = True) -> Path:
    """Return the folder of the trained zoo model ``name``: the shipped one, else the cache, training it first.

    With ``shipped=True`` (the default) the weights packaged with AutoSurgeon are used when they were made
    by the current recipe (see ``models.shipped``); ``shipped=False`` uses the cache (``zoo train``).
    Concurrent callers train it once (a file lock), and readers never see a half-written folder.
    """
    entry = _zoo_entry(name)
    recipe = entry.recipe
    if recipe is None:
        raise InvalidArgumentError(f"{name!r} is an architecture shape with random weights; there is nothing to train.")
    if shipped:
        packaged = shipped_folder(name, recipe.fingerprint())
        if packaged is not None:
            return packaged
    folder = cache_folder(name, cache_dir=cache_dir)
    if not is_complete(folder, CACHED_FILES):
        logger.warning("training %s into %s (no shipped weights for this recipe; progress with -v)", name, folder)
    return build_once(folder, CACHED_FILES, lambda tmp: _train(recipe, tmp))


def train_to(name: str, out_dir: str | os.PathLike[str], *, dtype: str = "bfloat16", tolerance: float = 0.01) -> Path:
    """Train zoo model ``name`` by its recipe and write it to ``out_dir`` as shippable weights (see ``ship_export``).

    This is how the weights under ``autosurgeon/models/weights/`` are made: ``autosurgeon zoo train NAME --out
    autosurgeon/models/weights/NAME``.
    """
    import tempfile


    entry = _zoo_entry(name)
    if entry.recipe is None:
        raise InvalidArgumentError(f"{name!r} is an architecture shape with random weights; there is nothing to train.")

    out = check_out_path(out_dir, argument="out_dir")  # before training, not after
    with tempfile.TemporaryDirectory(prefix=f"autosurgeon-train-{name}-") as tmp:
        _train(entry.recipe, Path(tmp))
        export_folder(Path(tmp), out, entry.recipe, dtype=dtype, tolerance=tolerance)
    return out


def _train(recipe: LMRecipe | DigitsRecipe, out: Path) -> None:
    if isinstance(recipe, LMRecipe):
        train_lm(recipe, out)
    else:
        train_digits(recipe, out)


def load_model(
    spec: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Load ``spec`` (zoo name | model directory | ``module:factory``) in eval mode on ``device``.

    Args:
        spec: what to load; see the module docstring for the resolution order.
        device: where the weights go; ``"meta"`` builds the architecture alone (no training, no reads).
        dtype: floating dtype of the weights (default: as saved; float32 for zoo models).
        cache_dir: cache folder for trained zoo models (default ``$AUTOSURGEON_CACHE`` or ``~/.cache/autosurgeon``).

    Raises:
        UnknownModelError: ``spec`` is none of the accepted forms (the message lists the zoo's names).
        ModelDirectoryError: a directory lacks ``config.json`` or ``*.safetensors`` (the message says which).
        InvalidArgumentError: a shape's weights do not fit the device's free memory.
    """
    device = _check_device(device)
    text = os.fspath(spec)
    if not text.strip():  # Path("") is the current directory: never load it by accident
        raise UnknownModelError(f"MODEL must not be empty, got {text!r}; MODEL may be {ACCEPTED_FORMS}.")
    if text in _ZOO:
        return _load_zoo(text, device=device, dtype=dtype, cache_dir=cache_dir)
    path = Path(text).expanduser()
    if path.is_dir():
        return _load_dir(text, path, device=device, dtype=dtype)
    if path.exists():
        raise ModelDirectoryError(f"MODEL {text!r} is a file; pass the directory that holds config.json and the "
                                  "*.safetensors weights.")
    if ":" in text:
        return _load_factory(text, device=device, dtype=dtype)
    raise UnknownModelError(
        f"unknown MODEL {text!r}: not a zoo name and no such directory. Zoo names: {', '.join(_ZOO)}. "
        f"MODEL may be {ACCEPTED_FORMS}."
    )


def list_models(*, cache_dir: str | os.PathLike[str] | None = None) -> list[ZooEntry]:
    """Every zoo name with its task, description, parameter count (by formula: nothing is built), and metrics."""
    return _listing.list_entries(cache_dir)


# --- resolution helpers -------------------------------------------------------------------------


def _zoo_entry(name: str) -> ZooRecipe:
    try:
        return _ZOO[name]
    except KeyError:
        raise UnknownModelError(f"unknown zoo name {name!r}; zoo names: {', '.join(_ZOO)}.") from None


def _check_device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidArgumentError(
            f"`device` must be a torch device such as 'cpu', 'cuda:0' or 'meta', got {device!r}."
        ) from exc


def _read_metrics(folder: Path) -> dict[str, float]:
    return _listing.read_metrics(folder)


def _trained_folder(name: str, cache_dir: Any, *, verify: bool = True) -> Path | None:
    """Where trained ``name`` is already (shipped first, then the cache), without training; None if nowhere."""
    found = _listing.trained_folder(name, cache_dir, verify=verify)
    return found[0] if found is not None else None


def _meta_model(name: str, dtype: torch.dtype | None = None) -> nn.Module:
    """The architecture of zoo model ``name`` on meta: no weights, no training."""
    recipe = _ZOO[name].recipe
    if recipe is None:
        return build_config_model(SHAPES[name].hf_config(), device="meta", dtype=dtype, name=name)
    if isinstance(recipe, LMRecipe):
        return build_config_model(recipe.hf_config(), device="meta", dtype=dtype, name=name)
    with torch.device("meta"):
        model = DigitsCNN(width=recipe.width)
    return (model.to(dtype) if dtype is not None else model).eval()


def _load_zoo(name: str, *, device: torch.device, dtype: torch.dtype | None, cache_dir: Any) -> LoadedModel:
    entry = _ZOO[name]
    recipe = entry.recipe
    image = (IMAGE_SHAPE, "x") if entry.task == "image-classification" else (None, "x")
    tokens = None
    if isinstance(recipe, LMRecipe):
        tokens = HeldoutTokens(heldout_bytes=recipe.heldout_bytes, seed=recipe.seed)
    if recipe is None:
        model = build_config_model(SHAPES[name].hf_config(), device=device, dtype=dtype, name=name)
        return LoadedModel(name=name, model=model, task=entry.task, source="zoo")
    if device.type == "meta":
        folder = _trained_folder(name, cache_dir)
        metrics = _read_metrics(folder) if folder is not None else {}
        return LoadedModel(name=name, model=_meta_model(name, dtype), task=entry.task, source="zoo", metrics=metrics,
                           image_shape=image[0], input_name=image[1], token_source=tokens)
    folder = ensure_trained(name, cache_dir=cache_dir)
    dtype = dtype or torch.float32  # shipped weights may be stored in bfloat16; zoo models load as float32
    if isinstance(recipe, DigitsRecipe):
        model = load_digits_dir(folder, device=device, dtype=dtype)
    else:
        model, _task = load_hf_dir(folder, device=device, dtype=dtype)
    return LoadedModel(name=name, model=model, task=entry.task, source="zoo", metrics=_read_metrics(folder),
                       path=folder, image_shape=image[0], input_name=image[1], token_source=tokens)


def _load_dir(spec: str, folder: Path, *, device: torch.device, dtype: torch.dtype | None) -> LoadedModel:
    if device.type == "meta":
        if not (folder / "config.json").is_file():
            check_model_dir(folder)  # raises, naming config.json
        config = read_config(folder)
    else:
        config = check_model_dir(folder)
    metrics = _read_metrics(folder) if (folder / "metrics.json").is_file() else {}
    if is_digits_dir(config):
        model = load_digits_dir(folder, device=device, dtype=dtype)
        return LoadedModel(name=spec, model=model, task="image-classification", source="hf-dir", metrics=metrics,
                           path=folder, image_shape=tuple(config.get("image_shape", IMAGE_SHAPE)), input_name="x")
    try:
        model, task = load_hf_dir(folder, device=device, dtype=dtype, check=False)
    except (ValueError, KeyError, OSError) as exc:
        if isinstance(exc, ModelDirectoryError):
            raise
        raise ModelDirectoryError(f"transformers could not load {spec!r}: {exc}") from exc
    if task == "image-classification":  # a Hugging Face classifier: pixel_values at its config's shape
        size = getattr(model.config, "image_size", 224)
        h, w = (size, size) if isinstance(size, int) else tuple(size)[:2]
        shape = (int(getattr(model.config, "num_channels", 3)), int(h), int(w))
        return LoadedModel(name=spec, model=model, task=task, source="hf-dir", metrics=metrics, path=folder,
                           image_shape=shape, input_name="pixel_values")
    return LoadedModel(name=spec, model=model, task=task, source="hf-dir", metrics=metrics, path=folder)


def _load_factory(spec: str, *, device: torch.device, dtype: torch.dtype | None) -> LoadedModel:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UnknownModelError(f"MODEL {spec!r} is not 'package.module:factory'. MODEL may be {ACCEPTED_FORMS}.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownModelError(
            f"MODEL {spec!r}: cannot import module {module_name!r} ({exc}). Zoo names: {', '.join(_ZOO)}. "
            f"MODEL may be {ACCEPTED_FORMS}."
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UnknownModelError(f"MODEL {spec!r}: module {module_name!r} has no callable {attr!r}.")
    try:
        if device.type == "meta":
            with torch.device("meta"):
                built = factory()
        else:
            built = factory()
    except Exception as exc:  # the user's code failed: say so in one line, not a traceback
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UnknownModelError(f"MODEL {spec!r}: the factory raised {type(exc).__name__}: {first}; fix the factory "
                                "or pass another MODEL.") from None
    if isinstance(built, LoadedModel):
        loaded = built
    elif isinstance(built, nn.Module):
        loaded = LoadedModel(name=spec, model=built, task=_guess_task(built), source="factory")
    else:
        raise UnknownModelError(
            f"MODEL {spec!r}: factory returned {type(built).__name__}; it must return an nn.Module or a LoadedModel."
        )
    if device.type != "meta":
        loaded.model.to(device)
    if dtype is not None:
        loaded.model.to(dtype)
    loaded.model.eval()
    loaded.source = "factory"
    return loaded


def _guess_task(model: nn.Module) -> str:
    # Only transformers' own naming is trusted; anything else is "custom" and says so when asked for inputs.
    if hasattr(model, "config") and type(model).__name__.endswith("ForCausalLM"):
        return "causal-lm"
    return "custom"


def _vocab_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    if config is None:
        raise InvalidArgumentError(f"cannot draw token ids for {type(model).__name__}: it has no `config.vocab_size`.")
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.vocab_size)
