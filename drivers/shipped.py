"""Data files shipped with curtaild (register maps, the demo farms): found in the source
tree when run from a checkout, else where the wheel installs them (<prefix>/share/curtaild,
pyproject's data-files), so an installed copy under /opt finds them too."""

from __future__ import annotations

import sys
from pathlib import Path

_SOURCE = Path(__file__).resolve().parent.parent / "config"


def shipped(*parts: str) -> Path:
    """The path of a shipped file or directory under config/ (e.g. "modbus")."""
    root = _SOURCE if _SOURCE.is_dir() else Path(sys.prefix, "share", "curtaild", "config")
    return root.joinpath(*parts)
