"""Debian packages a test needs (nginx, chromium), installed with apt-get when missing.

CI runs on a fresh machine as root: the tests install what they drive themselves, with
the benchmarks' installer (never as a system service: a policy-rc.d says no).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench.lab.install import apt_get_install


def debian_binary(name: str, path: str, packages: tuple[str, ...]) -> str:
    """The path of the program ``name`` (on PATH, or at ``path``); apt-get installs
    ``packages`` first when it is missing and we are root."""
    found = shutil.which(name) or (path if Path(path).exists() else None)
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError(
            f"these tests need {name}: apt-get install {' '.join(packages)} (or run as root)"
        )
    apt_get_install(list(packages))
    return shutil.which(name) or path
