"""Installs what speed.py runs when it is missing. Standard library only: it runs before
the packages it installs are imported."""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.lab.processes import BenchError

DEBIAN_TOOLS = {"nginx": "nginx", "wrk": "wrk", "curl": "curl"}  # command -> package
PYPI = {"aiohttp": "aiohttp", "asyncpg": "asyncpg", "uvloop": "uvloop", "psutil": "psutil"}


def ensure_debian_tools() -> None:
    """apt-get install nginx, wrk (and curl) when missing; never starts their services."""
    missing = sorted({pkg for cmd, pkg in DEBIAN_TOOLS.items() if shutil.which(cmd) is None})
    if missing:
        if os.geteuid() != 0:
            raise BenchError(f"missing {', '.join(missing)}: run as root, or install them")
        print(f"installing Debian packages: {' '.join(missing)}", flush=True)
        apt_get_install(missing)
    modules = subprocess.run(["nginx", "-V"], capture_output=True, text=True).stderr
    if "http_auth_request_module" not in modules:
        raise BenchError("this nginx lacks the auth_request module")


def apt_get_install(packages: list[str]) -> None:
    # The nginx package would start a system nginx on port 80; policy-rc.d says no.
    policy = Path("/usr/sbin/policy-rc.d")
    created = not policy.exists()
    if created:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    finally:
        if created:
            policy.unlink()


def ensure_python_packages() -> None:
    missing = [pkg for module, pkg in PYPI.items() if importlib.util.find_spec(module) is None]
    if missing:
        print(f"installing into {sys.executable}: {' '.join(missing)}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
        importlib.invalidate_caches()
