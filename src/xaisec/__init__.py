"""xaisec: security of deep-learning explanations (explanation backdoors, ADV2 attacks, defenses, audits)."""
from .errors import ConfigError, DataError, ModelError, XaisecError

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataError", "ModelError", "XaisecError", "__version__"]
