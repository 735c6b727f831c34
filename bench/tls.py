#!/usr/bin/env python3
"""Benchmark: HTTPS through authproxy vs nginx terminating TLS with auth_request.

One run, the same machine, the same certificate (ECDSA P-256, made by openssl here) and
the same negotiated protocol and cipher suite (checked, printed):

  authproxy https   authproxy terminating TLS itself, 1 worker, as installed
  nginx https       nginx terminating TLS, auth_request to target c's minimal verifier,
                    proxy_pass to the upstream (speed.py's row c, over HTTPS), 1 worker
  authproxy http    the same authproxy without TLS: what TLS costs it

Rows 1: requests/s with keep-alive (wrk, 32 connections), rounds interleaved; the bar is
authproxy ≥ 0.8 × nginx. Rows 2: handshakes/s, every request on a new connection
(`Connection: close`, no session resumption: wrk makes a full handshake each time),
which is what a fleet of integrations reconnecting after a network blip does.

    python bench/tls.py              # 3 rounds of 5 s
    python bench/tls.py --short      # CI: 1 round of 1 s

Prints numbers; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import statistics
import subprocess
import sys
import time
from pathlib import Path

if not __package__:  # `python bench/tls.py` puts bench/ on sys.path, not the root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.lab.clients import WrkResult, run_wrk
from bench.lab.daemons import start_authproxy
from bench.lab.database import run_in_lab
from bench.lab.host import process_trees_cpu
from bench.lab.install import ensure_debian_tools
from bench.lab.keys import create_key
from bench.lab.probes import any_answer, ok, wait_up
from bench.lab.processes import BenchError, Lab, Proc
from bench.targets import start_auth_request, start_upstream, start_verifier

CLOSE_LUA = 'wrk.headers["Connection"] = "close"\n'


def make_certificate(lab: Lab) -> tuple[Path, Path]:
    cert, key = lab.tmp / "tls.crt", lab.tmp / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


def wait_tls(lab: Lab, proc: Proc, port: int, timeout: float = 30.0) -> tuple[str, str]:
    """Until a TLS handshake on port succeeds; (protocol version, cipher suite)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # our own, just made
    deadline = time.monotonic() + timeout
    while True:
        if proc.process.poll() is not None:
            raise BenchError(f"{proc.name} exited at start:\n{lab.tail(proc)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    cipher = tls.cipher()
                    return str(tls.version()), cipher[0] if cipher else "?"
        except OSError as exc:
            if time.monotonic() > deadline:
                raise BenchError(f"{proc.name}: no TLS on {port}: {exc}\n{lab.tail(proc)}") from exc
            time.sleep(0.1)


def row(name: str, runs: list[WrkResult], unit: str) -> str:
    rps = statistics.median(r.rps for r in runs)
    cpu = statistics.median(r.cpu_us for r in runs)
    p50 = statistics.median(r.p50_ms for r in runs)
    p99 = statistics.median(r.p99_ms for r in runs)
    spread = f"{min(r.rps for r in runs):,.0f}-{max(r.rps for r in runs):,.0f}"
    errors = "; ".join(sorted({r.errors for r in runs if r.errors}))
    latency = f"p50 {p50:.2f} ms  p99 {p99:.2f} ms"
    return f"  {name:<16} {rps:>9,.0f} {unit}  ({spread})  {latency}  {cpu:.0f} CPU µs  {errors}"


def measure(lab: Lab, db_url: str, rounds: int, seconds: float) -> None:
    key = create_key(db_url, "bench tls")
    cert, tls_key = make_certificate(lab)
    upstream, port_a = start_upstream(lab)
    verifier, port_v = start_verifier(lab, key)
    nginx, port_n = start_auth_request(
        lab, "nginx-tls", port_a, port_v, logged=True, tls=(cert, tls_key)
    )
    tls_server = f", tls_cert_file: {cert}, tls_key_file: {tls_key}"
    ap_tls, base_tls = start_authproxy(lab, "authproxy-tls", db_url, f"http://127.0.0.1:{port_a}",
                                       server_extra=tls_server)  # fmt: skip
    ap_plain, base_plain = start_authproxy(
        lab, "authproxy-plain", db_url, f"http://127.0.0.1:{port_a}"
    )
    wait_up(lab, upstream, f"http://127.0.0.1:{port_a}/", any_answer)
    wait_up(lab, verifier, f"http://127.0.0.1:{port_v}/verify", any_answer)
    wait_up(lab, ap_plain, base_plain + "/_authproxy/readyz", ok)
    port_t = int(base_tls.rpartition(":")[2])
    negotiated = {
        "authproxy https": wait_tls(lab, ap_tls, port_t),
        "nginx https": wait_tls(lab, nginx, port_n),
    }
    print("negotiated (Python client, OpenSSL defaults, as wrk's):")
    for name, (version, cipher) in negotiated.items():
        print(f"  {name:<16} {version} {cipher}")
    if len(set(negotiated.values())) != 1:
        raise BenchError(f"not the same protocol and cipher suite: {negotiated}")
    urls = {
        "authproxy https": f"https://127.0.0.1:{port_t}/api/points",
        "nginx https": f"https://127.0.0.1:{port_n}/api/points",
        "authproxy http": base_plain + "/api/points",
    }
    close_script = lab.tmp / "close.lua"
    close_script.write_text(CLOSE_LUA)
    # The processes serving each target (the shared upstream left out): their CPU per
    # request barely moves when something else runs on the machine, unlike req/s.
    serving = {
        "authproxy https": [ap_tls.process.pid],
        "nginx https": [nginx.process.pid, verifier.process.pid],
        "authproxy http": [ap_plain.process.pid],
    }

    def run(name: str, script: Path | None = None) -> WrkResult:
        before = process_trees_cpu(serving[name])
        result = run_wrk(urls[name], key.key, seconds, script=script)
        used = process_trees_cpu(serving[name]) - before
        result.cpu_us = used * 1e6 / max(1, result.requests)
        return result

    kept: dict[str, list[WrkResult]] = {name: [] for name in urls}
    fresh: dict[str, list[WrkResult]] = {name: [] for name in urls if "https" in name}
    for _ in range(rounds):
        for name in urls:
            kept[name].append(run(name))
        for name in fresh:
            fresh[name].append(run(name, close_script))
    print(f"\nkeep-alive, 32 connections, median of {rounds} x {seconds:g} s:")
    for name, runs in kept.items():
        print(row(name, runs, "req/s"))
    ratio = statistics.median(r.rps for r in kept["authproxy https"]) / statistics.median(
        r.rps for r in kept["nginx https"]
    )
    cpu = {name: statistics.median(r.cpu_us for r in runs) for name, runs in kept.items()}
    print(f"  authproxy https / nginx https: {ratio:.2f}x (bar: 0.8x)", end="")
    print(f"; CPU per request {cpu['authproxy https'] / cpu['nginx https']:.2f}x nginx's")
    print("\na new TLS connection per request (full handshakes), 32 at a time:")
    for name, runs in fresh.items():
        print(row(name, runs, "hs/s "))
    hs_ratio = statistics.median(r.rps for r in fresh["authproxy https"]) / statistics.median(
        r.rps for r in fresh["nginx https"]
    )
    print(f"  authproxy / nginx: {hs_ratio:.2f}x")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--short", action="store_true", help="CI: 1 round of 1 s")
    parser.add_argument("--keep-tmp", action="store_true", help="keep configs and logs")
    args = parser.parse_args(argv)
    if args.short:
        args.rounds, args.seconds = 1, 1.0
    ensure_debian_tools()
    return run_in_lab(
        "bench-tls-", args.keep_tmp, lambda lab, db: measure(lab, db, args.rounds, args.seconds)
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
