"""Exception types shared across bigseer: every user-facing failure is one clear line."""

from __future__ import annotations


class BigseerError(Exception):
    """Base class for errors caused by user input (configs, files, flags)."""


class ConfigError(BigseerError, ValueError):
    """A configuration value is invalid; the message names the field and the allowed values."""


class CheckpointError(BigseerError):
    """A checkpoint or weights file is missing, truncated, foreign, or for another architecture."""


class DataError(BigseerError):
    """A data source cannot be read at all (individual bad images are skipped, not raised)."""
