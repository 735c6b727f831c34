"""This machine and this checkout: CPU already in use, processes' memory, the commit."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no types-psutil in the venv

from bench.lab.processes import ROOT


def busy_elsewhere(seconds: float = 2.0) -> str:
    """A warning when this machine is already busy: then the numbers mean little."""
    used = float(psutil.cpu_percent(interval=seconds))
    if used < 15:
        return ""
    return (
        f"WARNING: this machine was {used:.0f}% busy (all cores) in the {seconds:g} s "
        "before the benchmark started: another benchmark or test suite? Expect noisy "
        "numbers."
    )


def source_version() -> str:
    """The commit measured, and whether authproxy/ had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "authproxy"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(not a git checkout)"
    return f"at {head}" + (" + uncommitted changes in authproxy/" if dirty else "")


def process_tree_rss(pid: int) -> tuple[int, int, int]:
    """(RSS of pid and its descendants, their peak RSS summed, how many processes) in bytes."""
    root = psutil.Process(pid)
    rss = peak = 0
    procs = [root, *root.children(recursive=True)]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            rss += int(p.memory_info().rss)
            status = Path(f"/proc/{p.pid}/status").read_text()
            match = re.search(r"VmHWM:\s+(\d+) kB", status)
            peak += int(match.group(1)) * 1024 if match else 0
    return rss, peak, len(procs)


def process_trees_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by the pids and their descendants."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = p.cpu_times()
                    total += times.user + times.system
    return total


def pin_process_trees(pids: list[int], cpus: set[int]) -> None:
    """Every thread of the pids and their descendants onto ``cpus`` (sched_setaffinity is
    per thread: pinning a pid alone would leave its other threads where they were)."""
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error, OSError):
                    for thread in p.threads():
                        os.sched_setaffinity(thread.id, cpus)
