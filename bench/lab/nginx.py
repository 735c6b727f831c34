"""nginx instances: a generated config per instance in the lab's temp dir, `daemon off`,
its own pid file and error log, 1 worker, long keep-alive; no access log unless a server
block asks for one (access_log())."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bench.lab.processes import BenchError, Lab, Proc

PROXY_TO_UP = """
            proxy_http_version 1.1;
            proxy_set_header Connection "";"""


# What Debian's /etc/nginx/nginx.conf ships, and so what nginx users run: the combined
# format, one write(2) per request to a file, no buffer= or flush=.
def access_log(lab: Lab, name: str) -> str:
    return f"\n        access_log {lab.tmp}/logs/{name}.access.log combined;"


def nginx_conf(lab: Lab, name: str, http: str, workers: int = 1) -> Path:
    tmp = lab.tmp / f"{name}-temp"
    tmp.mkdir(exist_ok=True)
    # As root, workers would drop to "nobody", which cannot read our 0700 temp dir.
    user = "user root;" if os.geteuid() == 0 else ""
    temps = "\n".join(
        f"    {kind}_temp_path {tmp}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = lab.tmp / f"{name}.conf"
    conf.write_text(f"""\
{user}
worker_processes {workers};
daemon off;
pid {lab.tmp}/{name}.pid;
error_log {lab.tmp}/logs/{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temps}
    keepalive_timeout 75s;
    keepalive_requests 1000000;
{http}
}}
""")
    return conf


def upstream_block(name: str, port: int) -> str:
    return f"""
    upstream {name} {{
        server 127.0.0.1:{port};
        keepalive 32;
        keepalive_requests 1000000;
    }}"""


def start_nginx(lab: Lab, name: str, http: str) -> Proc:
    """nginx with `http` inside its http {} block; its config is tested first."""
    conf = nginx_conf(lab, name, http)
    test = subprocess.run(
        [
            "nginx",
            "-t",
            "-q",
            "-p",
            str(lab.tmp),
            "-e",
            str(lab.tmp / "logs" / f"{name}.error.log"),
            "-c",
            str(conf),
        ],
        capture_output=True,
        text=True,
    )
    if test.returncode != 0:
        raise BenchError(f"nginx {name} config: {test.stderr.strip()}")
    return lab.spawn(
        name,
        [
            "nginx",
            "-p",
            str(lab.tmp),
            "-e",
            str(lab.tmp / "logs" / f"{name}.error.log"),
            "-c",
            str(conf),
        ],
    )
