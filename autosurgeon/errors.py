"""Errors AutoSurgeon raises for a user's input: each message names the argument, the value and the fix."""
from __future__ import annotations


class AutoSurgeonError(Exception):
    """Base of the errors meant for the user (the CLI prints them without a traceback)."""


class InvalidArgumentError(AutoSurgeonError, ValueError):
    """An argument's value is out of range or malformed."""


class UnknownModelError(InvalidArgumentError):
    """A MODEL argument is neither a zoo name, a model directory, nor ``module:factory``."""


class ModelDirectoryError(InvalidArgumentError):
    """A Hugging Face model directory lacks its config or weights."""


class UnknownDeviceError(InvalidArgumentError):
    """A device argument is neither ``local``, a preset name, nor a profile JSON path."""


class UnsupportedTransformError(AutoSurgeonError):
    """A surgery decision is valid data but the runtime cannot carry it out here (e.g. DLA placement on paper)."""
