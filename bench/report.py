"""speed.py's report: sections that fail on their own, and the number formats.
Standard library only (speed.py imports it before it may install packages)."""

from __future__ import annotations

import contextlib
import statistics
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field

from bench.lab.processes import BenchError, Lab

MIB = 1 << 20


def fmt_bytes(n: float) -> str:
    return f"{n / MIB:.1f} MiB"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Report:
    lab: Lab
    failures: list[str] = field(default_factory=list)
    reported_dead: set[str] = field(default_factory=set)

    def fail(self, message: str) -> None:
        self.failures.append(message)
        print(f"FAILED: {message}", flush=True)

    @contextlib.contextmanager
    def section(self, title: str) -> Iterator[None]:
        """Prints the title; a failure inside is reported and the run goes on."""
        print(f"\n== {title}", flush=True)
        try:
            yield
        except BenchError as exc:
            self.fail(f"{title}: {exc}")
        except Exception as exc:  # noqa: BLE001 - report, go on with the other sections
            self.fail(f"{title}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        self.check_processes(title)

    def check_processes(self, title: str) -> None:
        """Every process the lab started must live until the end: a death is a failure."""
        for proc in self.lab.procs:
            code = proc.process.poll()
            if code is not None and proc.name not in self.reported_dead:
                self.reported_dead.add(proc.name)
                self.fail(
                    f"{proc.name} died (exit {code}) during '{title}':\n{self.lab.tail(proc)}"
                )
