"""``authproxy scan``: our keys in files and folders, reported by prefix, never in full.

Each file gets one compiled search over its bytes (keys/leaks.py): read whole, or mapped
when large. Binary files (a NUL byte in the first 8 KiB, the rule git and grep use) and
``.git`` folders are skipped; so are symbolic links and anything else that is not a
regular file inside a folder (a link may point out of the tree, a FIFO would block).
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Final

from authproxy.errors import InvalidInput
from authproxy.keys.format import ParsedKey
from authproxy.keys.leaks import find_keys

STDIN: Final = "-"
SNIFF_BYTES: Final = 8192
# From this size a file is mapped rather than read: no copy of it in our memory.
MAP_FROM: Final = 1 << 20
SKIPPED_FOLDERS: Final = frozenset({".git"})
PATH_RULE: Final = "must name an existing file or folder, or '-' for standard input"


@dataclass(frozen=True, slots=True)
class Finding:
    path: str
    line: int
    key: ParsedKey  # its secret stays out of repr, and out of as_json

    def as_json(self, status: str | None = None) -> dict[str, Any]:
        found: dict[str, Any] = {
            "path": self.path,
            "line": self.line,
            "prefix": self.key.display_prefix,
        }
        if status is not None:
            found["status"] = status
        return found


@dataclass(slots=True)
class Scan:
    """What a scan found, and the paths it could not read (errors from the OS)."""

    findings: list[Finding] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def check_paths(paths: Sequence[str]) -> None:
    """Raises InvalidInput for a path that does not exist, before anything is scanned."""
    for path in paths:
        if path != STDIN and not os.path.exists(path):
            raise InvalidInput("path", f"{PATH_RULE} (got {path!r})")


def scan(paths: Sequence[str], stdin: IO[bytes]) -> Scan:
    result = Scan()
    for path in paths:
        if path == STDIN:
            data = stdin.read()
            if b"\0" not in data[:SNIFF_BYTES]:  # binary input is skipped like a binary file
                result.findings.extend(_findings(data, STDIN))
        elif os.path.isdir(path):
            for file in _files(path, result):
                _scan_file(file, result, in_folder=True)
        else:
            _scan_file(path, result, in_folder=False)
    return result


def _files(root: str, result: Scan) -> Iterator[str]:
    """Regular files under ``root`` in a stable order, without .git folders."""

    def unreadable(exc: OSError) -> None:
        result.unreadable.append((exc.filename or root, exc.strerror or str(exc)))

    for folder, folders, names in os.walk(root, onerror=unreadable):
        folders[:] = sorted(f for f in folders if f not in SKIPPED_FOLDERS)
        for name in sorted(names):
            yield os.path.join(folder, name)


def _scan_file(path: str, result: Scan, *, in_folder: bool) -> None:
    try:
        if in_folder and not stat.S_ISREG(os.lstat(path).st_mode):
            return
        with open(path, "rb") as file:
            head = file.read(SNIFF_BYTES)
            if b"\0" in head:
                return
            if len(head) < SNIFF_BYTES:
                result.findings.extend(_findings(head, path))
                return
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size < MAP_FROM:
                result.findings.extend(_findings(head + file.read(), path))
                return
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                result.findings.extend(_findings(mapped, path))
    except OSError as exc:
        result.unreadable.append((path, exc.strerror or str(exc)))


def _findings(data: bytes | mmap.mmap, path: str) -> list[Finding]:
    """The keys in ``data``, with line numbers (counted only up to each key found)."""
    found = []
    line, counted_to = 1, 0
    for offset, key in find_keys(data):
        line += data[counted_to:offset].count(b"\n")
        counted_to = offset
        found.append(Finding(path, line, key))
    return found
