"""Debian packages a test needs (nginx, chromium), installed with apt-get when missing.

CI runs on a fresh machine as root: the tests install what they drive themselves, never
as a system service (a policy-rc.d keeps a package from starting one).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


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
    policy = Path("/usr/sbin/policy-rc.d")
    created = not policy.exists()
    if created:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
            check=True,
            env=env,
            capture_output=True,
        )
    finally:
        if created:
            policy.unlink()
    return shutil.which(name) or path
