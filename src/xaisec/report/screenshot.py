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


def screenshot(html: str | Path, png: str | Path, width: int = 1280, height: int = 3000, timeout: float = 120.0) -> Path:
    """Render ``html`` in headless Chromium at ``width`` x ``height`` CSS pixels and write the PNG to ``png``.

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
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
               f"--window-size={width},{height}", f"--screenshot={png}", html.as_uri()]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise XaisecError(f"{browser} did not render {html} within {timeout:g} s") from None
    if done.returncode != 0 or not png.is_file():
        raise XaisecError(f"{browser} failed to render {html} (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return png
