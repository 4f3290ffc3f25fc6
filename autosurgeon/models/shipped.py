"""Trained zoo models that ship inside the package, so no first use trains anything.

``autosurgeon/models/weights/<name>/`` holds what ``autosurgeon zoo train NAME --out DIR`` wrote:
``config.json``, ``model.safetensors`` and ``metrics.json``. ``metrics.json`` carries the recipe's
fingerprint (a changed recipe no longer matches, and the zoo trains it instead of serving a stale model),
the sha256 of the weights file (checked when loaded: a damaged file is not used), and the metrics measured
on the shipped weights themselves. Weights may be stored in bfloat16 to keep the package small; they
load as float32, and ``metrics.json`` then holds both the float32 and the stored-dtype metrics.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from autosurgeon._logging import get_logger

logger = get_logger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED_FILES = ("config.json", "model.safetensors", "metrics.json")


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_record(folder: Path) -> dict[str, Any]:
    """The parsed ``metrics.json`` of ``folder`` (data only), or ``{}`` when missing or unreadable."""
    try:
        record = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def shipped_folder(name: str, fingerprint: str, *, verify: bool = True) -> Path | None:
    """The packaged folder of zoo model ``name`` if it exists and was made by the recipe ``fingerprint``.

    Args:
        name: the zoo name.
        fingerprint: the current recipe's fingerprint; a folder from another recipe is not used.
        verify: also check the weights' sha256 against the one recorded (a ~10 ms read for these sizes).
    """
    folder = SHIPPED_DIR / name
    if not all((folder / f).is_file() for f in SHIPPED_FILES):
        return None
    record = read_record(folder)
    provenance = record.get("provenance", {})
    if provenance.get("recipe_fingerprint") != fingerprint:
        logger.info("shipped %s was made by recipe %s, not %s: not used", name,
                    provenance.get("recipe_fingerprint"), fingerprint)
        return None
    if verify:
        expected = record.get("shipped", {}).get("sha256")
        if expected != file_sha256(folder / "model.safetensors"):
            logger.warning("shipped %s: model.safetensors does not match its recorded sha256; not used", name)
            return None
    return folder
