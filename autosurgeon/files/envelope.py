"""The versioned envelope every AutoSurgeon file is written in: ``{"_type", "_version", "_data"}``.

Plans, metrics, search spaces, sensitivity and profiled tables all persist this way, so a reader can
tell which kind of file it holds and whether it can read that version, and say so in one clear sentence
instead of failing on a missing key (torchao serialises its configs the same way).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from autosurgeon.errors import InvalidArgumentError


def wrap(type_name: str, version: int, data: Mapping[str, Any]) -> dict[str, Any]:
    """The envelope around ``data``."""
    return {"_type": type_name, "_version": version, "_data": dict(data)}


def unwrap(obj: Any, *, type_name: str, version: int, what: str, fix: str = "write it again",
           source: str | None = None, error: type[Exception] = InvalidArgumentError) -> dict[str, Any]:
    """Check ``obj`` is a ``type_name`` envelope this reader can read and return its ``_data``.

    Args:
        obj: the parsed JSON object (or a JSON string).
        type_name: the expected ``_type``.
        version: the newest ``_version`` this reader knows; older ones are the caller's to upgrade, so
            anything else is refused.
        what: the kind of file, for messages ("plan", "profiled table" …).
        fix: what the user should do about an unreadable version.
        source: where it came from (a path), prefixed to every message.
        error: the exception class to raise (a subclass of ``ValueError`` in practice).
    """
    at = f"{source}: " if source else f"{what}: "
    named = f"{source}: {what}" if source else what  # "plan.json: plan `_version` 9 …" / "plan `_version` 9 …"
    if isinstance(obj, str):
        try:
            obj = json.loads(obj)
        except json.JSONDecodeError as exc:
            raise error(f"{at}not valid JSON ({exc}).") from None
    if not isinstance(obj, Mapping):
        raise error(f"{at}expected a JSON object, got {type(obj).__name__}.")
    if obj.get("_type") != type_name:
        raise error(f"{at}`_type` must be {type_name!r}, got {obj.get('_type')!r}; is this the right file?")
    found = obj.get("_version")
    if not isinstance(found, int) or isinstance(found, bool) or found < 1:
        raise error(f"{at}`_version` must be a positive integer, got {found!r}.")
    if found > version:
        raise error(f"{named} `_version` {found} is newer than this AutoSurgeon reads (up to {version}); "
                    "upgrade autosurgeon to read it.")
    if found != version:
        raise error(f"{named} `_version` {found} is not supported (this reader knows {version}); {fix}.")
    data = obj.get("_data")
    if not isinstance(data, Mapping):
        raise error(f"{at}`_data` must be an object, got {type(data).__name__}.")
    return dict(data)
