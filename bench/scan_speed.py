#!/usr/bin/env python3
"""Benchmark: `authproxy scan` over a generated tree of text files (issue 18: "a 100 MB
tree in seconds").

Writes a tree to a temporary folder: source-like text files of 4 KiB to 256 KiB
(--max-kib) in nested folders, a few large logs, binary files and a .git folder (both
skipped by the scan), and ten real keys and some checksum look-alikes. Then runs
`python -m authproxy scan` on it as a user would, checks that it found exactly the
planted keys, and prints the time; grep -rIE over the same tree beside it, for scale.
Prints numbers; asserts nothing about time. The page cache is warm (the tree was just
written).

    python bench/scan_speed.py                 # 100 MB, 3 runs
    python bench/scan_speed.py --max-kib 8     # the same in ~16,000 small files
    python bench/scan_speed.py --mb 5 --runs 1 # a short run
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # `python bench/scan_speed.py` puts bench/ on sys.path, not the root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from authproxy.keys.format import KEY_REGEX, generate_key

MB = 1_000_000
WORDS = (
    "def return self import from async await value key token bearer asc_ request config "
    "logger assert None True False for while with class lambda yield dict list"
).split()


def text_block(rng: random.Random, size: int) -> bytes:
    lines, total = [], 0
    while total < size:
        line = " ".join(rng.choices(WORDS, k=rng.randint(3, 14))) + "\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


def build_tree(
    root: Path, total_mb: int, max_kib: int, rng: random.Random
) -> tuple[set[str], int, int]:
    """The tree; returns (the planted keys' prefixes, text files, bytes of text files)."""
    block = text_block(rng, 1 << 20)
    planted: set[str] = set()
    files = size = 0
    target = total_mb * MB
    logs = max(1, total_mb // 25)  # a few large logs: a quarter of the tree
    for n in range(logs):
        path = root / "logs" / f"app-{n}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        length = target // 4 // logs
        path.write_bytes((block * (length // len(block) + 1))[:length])
        files, size = files + 1, size + length
    while size < target:
        folder = root / f"pkg{files % 40}" / f"sub{files % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        length = rng.randint(max(1, max_kib // 64) << 10, max_kib << 10)
        start = rng.randrange(0, len(block) - length)
        data = block[start : start + length]
        if files % 7 == 3 and len(planted) < 10:  # ten real keys, early in the walk
            key = generate_key().full
            planted.add(key[:14])
            data += f"\nAUTH = 'Bearer {key}'\n".encode()
        if files % 5 == 1:  # a look-alike: our format, a wrong checksum
            data += b"\n" + ("asc_" + "x" * 44).encode() + b"\n"
        (folder / f"module{files}.py").write_bytes(data)
        files, size = files + 1, size + len(data)
    secret = generate_key().full.encode()
    for n in range(10):  # skipped: binary, and under .git
        (root / "assets").mkdir(exist_ok=True)
        (root / "assets" / f"img{n}.bin").write_bytes(b"\0" + rng.randbytes(1 << 20) + secret)
    (root / ".git" / "objects").mkdir(parents=True)
    (root / ".git" / "objects" / "pack").write_bytes(block * 8 + secret)
    return planted, files, size


def timed(command: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, check=False)
    return time.perf_counter() - started, done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=100, help="size of the text files (MB)")
    parser.add_argument(
        "--max-kib", type=int, default=256, help="largest source file (smallest: 1/64 of it)"
    )
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(18)  # noqa: S311 - a reproducible tree, not a secret
    with tempfile.TemporaryDirectory(prefix="authproxy-scan-") as tmp:
        root = Path(tmp)
        planted, files, size = build_tree(root, args.mb, args.max_kib, rng)
        print(f"tree: {files} text files, {size / MB:.1f} MB, {len(planted)} keys planted")
        times = []
        for _ in range(args.runs):
            seconds, done = timed([sys.executable, "-m", "authproxy", "scan", "."], root)
            found = {json.loads(line)["prefix"] for line in done.stdout.splitlines()}
            if done.returncode != (1 if planted else 0) or found != planted:
                print(f"WRONG: exit {done.returncode}, found {len(found)} of {len(planted)}")
                print(done.stderr.decode(errors="replace"))
                return 1
            times.append(seconds)
        best, mid = min(times), statistics.median(times)
        print(f"authproxy scan: median {mid:.2f} s, best {best:.2f} s ({size / MB / mid:.0f} MB/s)")
        grep = shutil.which("grep")
        if grep:
            seconds, _ = timed([grep, "-rIEc", "--exclude-dir=.git", KEY_REGEX, "."], root)
            print(f"grep -rIE (no checksum, for scale): {seconds:.2f} s")
        start, _ = timed([sys.executable, "-m", "authproxy", "--version"], root)
        print(f"of which start-up (authproxy --version): {start:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
