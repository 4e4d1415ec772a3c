"""Backdoor triggers: batched ``nn.Module`` s, ``(B,C,H,W) -> (B,C,H,W)`` in [0,1], a registry and a builder.

>>> trigger = build_trigger("patch", size=4, position="bottom_right")
>>> x_trig = trigger(x)              # same shape and dtype, in [0,1]
>>> region = trigger.mask(x.shape)   # bool (1,1,H,W): where the trigger is

Registered: ``patch`` (BadNets), ``rectangle`` (Noppel et al.), ``pixel``, ``blend``, ``nashville`` and ``moire``
(Fang & Choromanska), ``image`` (a user's picture), ``features`` (tabular ``(B,F)`` inputs: chosen features set to
chosen values, Fang & Choromanska's credit-default example).
"""
from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from ..errors import ConfigError, XaisecError
from .base import LUMA, TRIGGERS, Trigger
from .features import FeatureTrigger
from .image import Blend, ImageTrigger, load_image_file
from .moire import Moire
from .nashville import Nashville, nashville_8bit, nashville_smooth
from .regions import Patch, Pixel, Rectangle



def build_trigger(name_or_module: str | nn.Module, **options: Any) -> nn.Module:
    """The trigger registered as ``name_or_module`` built with ``options``, or a given module unchanged.

    Unknown options raise a :class:`~xaisec.errors.ConfigError` that lists the accepted ones.
    """
    if isinstance(name_or_module, nn.Module):
        if options:
            raise ConfigError(f"options {sorted(options)} only apply when a trigger is built by name; "
                              f"configure the {type(name_or_module).__name__} module directly")
        return name_or_module
    if not isinstance(name_or_module, str):
        raise ConfigError(f"a trigger must be a registered name ({', '.join(TRIGGERS.names())}) or an nn.Module, "
                          f"got {type(name_or_module).__name__}")
    cls = TRIGGERS.get(name_or_module)
    try:
        TRIGGERS.check_options(name_or_module, options)
    except XaisecError as exc:
        raise ConfigError(str(exc)) from None
    params = inspect.signature(cls.__init__).parameters
    missing = [p for p, v in params.items() if p != "self" and v.default is inspect.Parameter.empty and p not in options]
    if missing:
        raise ConfigError(f"trigger {name_or_module!r} needs option(s) {', '.join(missing)}")
    return cls(**options)


__all__ = ["Blend", "FeatureTrigger", "ImageTrigger", "LUMA", "Moire", "Nashville", "Patch", "Pixel", "Rectangle", "TRIGGERS",
           "Trigger", "build_trigger", "load_image_file", "nashville_8bit", "nashville_smooth"]
