"""Screenshot of an HTML report in headless Chromium, to look at a report the way a person's browser shows it."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import XaisecError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_browser() -> str | None:
    """Path of a Chromium-family browser on ``PATH``, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html: str | Path, png: str | Path, width: int = 1280, height: int | None = None,
               timeout: float = 120.0, max_height: int = 16000) -> Path:
    """Render ``html`` in headless Chromium ``width`` CSS pixels wide and write the PNG to ``png``: the whole page
    (rendered ``max_height`` tall, then the blank space below the content trimmed), or ``height`` pixels if given.

    Raises :class:`XaisecError` when no browser is installed or it fails to render the page.
    """
    html, png = Path(html).resolve(), Path(png).resolve()
    if not html.is_file():
        raise XaisecError(f"no HTML file at {html}; build the report first (xaisec report RUN_DIR)")
    browser = find_browser()
    if browser is None:
        raise XaisecError("no Chromium-family browser on PATH (looked for " + ", ".join(BROWSERS) + "); install "
                          "one (Debian: apt-get install chromium) or open the report in any browser yourself")
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:  # a private profile: no state shared with the user's browser
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--window-size={width},{height or max_height}", f"--screenshot={png}",
               html.as_uri()]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise XaisecError(f"{browser} did not render {html} within {timeout:g} s") from None
    if done.returncode != 0 or not png.is_file():
        raise XaisecError(f"{browser} failed to render {html} (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    if height is None:
        _trim_bottom(png)
    return png


def _trim_bottom(png: Path, margin: int = 24) -> None:
    """Cut the uniform rows below the page's content (keeping ``margin`` pixels)."""
    import numpy as np
    from PIL import Image

    img = Image.open(png).convert("RGB")
    rows = np.asarray(img, dtype=np.int16)
    changed = np.nonzero((np.abs(rows - rows[-1:, :, :]) > 2).any(axis=(1, 2)))[0]
    bottom = min(len(rows), (int(changed[-1]) + 1 + margin) if len(changed) else margin)
    img.crop((0, 0, img.width, bottom)).save(png)
