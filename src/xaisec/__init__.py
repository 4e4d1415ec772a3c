"""xaisec: security of deep-learning explanations (explanation backdoors, ADV2 attacks, defenses, audits)."""
import os

# Idle OpenMP worker threads sleep instead of spinning (set before torch loads its OpenMP runtime; a value the user
# set wins). Spinning workers took 115 s of CPU for a 2-thread run that needs 18 s when they sleep, on a busy
# 2-core machine; with 1 thread both take the same (docs/performance.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .errors import ConfigError, DataError, ModelError, XaisecError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataError", "ModelError", "XaisecError", "__version__"]
