"""User-facing errors: each says what is wrong and how to fix it.

The CLI turns any :class:`XaisecError` into ``xaisec: error: <message>`` and exit code 2.
"""


class XaisecError(ValueError):
    """Base class of every error caused by the user's input (config, data, model, names)."""


class ConfigError(XaisecError):
    """A config key, type or value is invalid."""


class DataError(XaisecError):
    """A dataset path, format, shape or value range is invalid."""


class ModelError(XaisecError):
    """A model, layer or weights file does not fit what was asked."""
