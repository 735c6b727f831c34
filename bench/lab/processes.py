"""Processes a benchmark starts: each in its own session with its own log, all stopped
(with everything else the run registered) by Lab.close(). Standard library only."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repo: bench/ and authproxy/ are in it


class BenchError(Exception):
    """Something failed to start or to measure."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def module_argv(module: str, *args: str) -> list[str]:
    """Runs one of the bench modules (`python -m bench....`) in a fresh interpreter."""
    return [sys.executable, "-m", module, *args]


def module_env() -> dict[str, str]:
    """This environment with the repo root first on PYTHONPATH: `-m bench....` then
    resolves from any working directory."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Lab:
    """Owns every process, file and cleanup the run makes; close() removes them."""

    tmp: Path
    procs: list[Proc] = field(default_factory=list)
    cleanups: list[tuple[str, Callable[[], None]]] = field(default_factory=list)

    @classmethod
    def create(cls, prefix: str) -> Lab:
        tmp = Path(tempfile.mkdtemp(prefix=prefix))
        tmp.chmod(0o755)
        (tmp / "logs").mkdir()
        return cls(tmp)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.tmp / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        with log.open("wb") as out:
            # Own session: Ctrl-C reaches only us, and we stop the children in order.
            process = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, process, log)
        self.procs.append(proc)
        return proc

    def spawn_module(self, name: str, module: str, *args: str) -> Proc:
        """A long-running bench module (a helper server), like spawn()."""
        return self.spawn(name, module_argv(module, *args), module_env())

    def run_module(self, name: str, module: str, args: list[str], timeout: float) -> dict[str, Any]:
        """Runs a bench module to its end in a fresh process; its last `RESULT {json}` line."""
        log = self.tmp / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        done = subprocess.run(
            module_argv(module, *args),
            env=module_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        log.write_text(done.stdout + done.stderr)
        results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not results:
            raise BenchError(f"{name} exited with {done.returncode}:\n{done.stderr[-2000:]}")
        return dict(json.loads(results[-1][len("RESULT ") :]))

    def tail(self, proc: Proc, lines: int = 15) -> str:
        try:
            text = proc.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join("    | " + line for line in text)

    def stop(self, proc: Proc) -> None:
        """Stops proc and its process group; the lab forgets it (a second stop is a no-op)."""
        if proc not in self.procs:
            return
        self.procs.remove(proc)
        process = proc.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        # Anything left in the process group we created (nginx or authproxy workers).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)

    def on_close(self, what: str, action: Callable[[], None]) -> None:
        """close() runs action after stopping the processes (last registered, first run)."""
        self.cleanups.append((what, action))

    def close(self, keep_tmp: bool) -> None:
        for proc in reversed(list(self.procs)):
            try:
                self.stop(proc)
            except Exception as exc:  # noqa: BLE001 - cleanup goes on
                print(f"cleanup: stopping {proc.name}: {exc}", file=sys.stderr)
        for what, action in reversed(self.cleanups):
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - cleanup goes on
                print(f"cleanup: {what}: {exc}", file=sys.stderr)
        if keep_tmp:
            print(f"kept {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
