"""The model registry: native names plus ``torchvision:<name>``, ``timm:<name>`` and ``module:function`` specs.

``MODELS.get(spec)`` returns a factory ``(in_channels, num_classes, **options) -> nn.Module`` for a registered name
and for each prefixed spec alike, so everything that validates a model name (configs, the CLI) accepts them too.
"""
from __future__ import annotations

from typing import Callable

from ..errors import ModelError, XaisecError
from ..registry import Registry

#: prefixes of models from a library; any other ``a.b:c`` is a user function ``c`` in module ``a.b``
LIBRARY_PREFIXES = ("torchvision", "timm")


class ModelRegistry(Registry):
    """A :class:`~xaisec.registry.Registry` whose :meth:`get` also resolves ``prefix:name`` specs."""

    def get(self, name: str) -> Callable:
        if isinstance(name, str) and ":" in name:
            from .zoo import spec_factory

            return spec_factory(name)
        try:
            return super().get(name)
        except ModelError:
            raise
        except XaisecError as exc:
            raise ModelError(f"{exc} Library and user models: 'torchvision:<name>', 'timm:<name>', "
                             "'module.path:function'.") from None

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and ":" in name:
            try:
                self.get(name)
            except ModelError:
                return False
            return True
        return super().__contains__(name)


MODELS = ModelRegistry("model")
