"""Typed errors. Library code raises these; the CLI prints them once as `Error: ...` and exits 1.

Every message names what was wrong, the value seen, and what to do about it.
"""


class StillError(Exception):
    """Base class: an error the user can fix; printed without a traceback."""

    exit_code = 1


class ConfigError(StillError):
    """A recipe, override or flag is unknown, mistyped or out of range."""


class DataError(StillError):
    """A dataset is missing, empty or has a malformed row."""


class ModelError(StillError):
    """A model path or hub id cannot be loaded."""


class BackendError(StillError):
    """A sampling backend is unavailable or failed (vLLM missing, server unreachable)."""
