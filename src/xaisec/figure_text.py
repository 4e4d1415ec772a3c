"""User-supplied text in matplotlib figures, rendered literally.

Matplotlib parses text between two ``$`` as mathtext, so a class name such as ``$\\foo$`` (from a dataset's
folder names or a model's metadata) crashes the figure, or, worse, is silently typeset as something else.
Every string that did not come from xaisec itself goes through :func:`literal_text` before it reaches a figure.
"""
from __future__ import annotations

from typing import Iterable


def literal_text(text: object) -> str:
    """``str(text)`` with every ``$`` escaped, so matplotlib draws it as typed (no mathtext)."""
    return str(text).replace("$", r"\$")


def literal_texts(texts: Iterable[object]) -> list[str]:
    """:func:`literal_text` of each item."""
    return [literal_text(t) for t in texts]
