"""Streaming: curl downloads `size` bytes to /dev/null and uploads them (a sparse file, no
disk reads) through each path of bench.targets.start_stream_targets: the upstream
directly, a tuned nginx, authproxy with 1 worker. MiB/s = bytes / curl's time_total;
every transfer must move exactly that many bytes. Median of `rounds`."""

from __future__ import annotations

from pathlib import Path

from bench.lab.clients import curl_transfer
from bench.lab.processes import Lab
from bench.report import MIB, fmt_bytes, median
from bench.targets import start_stream_targets

Paths = dict[str, tuple[str, str | None]]  # path name -> (base URL, key or None)


def measure(lab: Lab, db_url: str, key: str, stream_mib: int, rounds: int) -> None:
    size = stream_mib * MIB
    paths = start_stream_targets(lab, db_url, size, key)
    payload = lab.tmp / "upload.bin"
    with payload.open("wb") as f:
        f.truncate(size)  # sparse: reads as zeros, costs no disk
    base, _ = paths["authproxy, 1 worker"]
    curl_transfer(base + "/bytes/1024", key, None, 1024)  # caches the key
    down, up = run_rounds(paths, payload, size, rounds)
    print_medians(down, up)
    print(
        f"(curl, one {fmt_bytes(size)} transfer each way per round, median of "
        f"{rounds}; upstream: aiohttp on uvloop streaming 256 KiB writes / reading "
        "the body; nginx: proxy_request_buffering off, no temp files)"
    )


def run_rounds(
    paths: Paths, payload: Path, size: int, rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """MiB/s of each round's download and upload, per path; prints each round."""
    down: dict[str, list[float]] = {name: [] for name in paths}
    up: dict[str, list[float]] = {name: [] for name in paths}
    for n in range(1, rounds + 1):
        for name, (url, auth) in paths.items():
            seconds = curl_transfer(f"{url}/bytes/{size}", auth, None, size)
            down[name].append(size / seconds / MIB)
            seconds = curl_transfer(f"{url}/upload", auth, payload, size)
            up[name].append(size / seconds / MIB)
        print(
            f"round {n}: "
            + "  ".join(
                f"{name}: down {down[name][-1]:.0f} up {up[name][-1]:.0f}" for name in paths
            )
            + " MiB/s",
            flush=True,
        )
    return down, up


def print_medians(down: dict[str, list[float]], up: dict[str, list[float]]) -> None:
    nginx_down, nginx_up = median(down["nginx proxy_pass"]), median(up["nginx proxy_pass"])
    print(
        f"\n{'path':<22} {'download MiB/s':>15} {'upload MiB/s':>13} "
        f"{'vs nginx down':>14} {'up':>6}"
    )
    for name in down:
        dm, um = median(down[name]), median(up[name])
        print(f"{name:<22} {dm:15.0f} {um:13.0f} {dm / nginx_down:14.2f} {um / nginx_up:6.2f}")
