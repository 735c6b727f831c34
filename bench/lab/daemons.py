"""authproxy daemons (`authproxy serve`), each on a free port with a generated config."""

from __future__ import annotations

import os
import sys

from bench.lab.processes import Lab, Proc, free_port

# The wrk targets run what users get: the embedded defaults (access log on, metrics on,
# the failure limiter on), only drain_delay 0 so that the lab stops quickly.
BASE_CONFIG = ""
# For daemons sent unknown or revoked keys on purpose, all from one address: no throttling.
NO_FAILURE_LIMIT = "limits: {failure_threshold: 0}\n"
# The quiet row: the same daemon without its access log.
NO_ACCESS_LOG = "logging: {access: false}\n"


def start_authproxy(
    lab: Lab,
    name: str,
    db_url: str,
    upstream: str,
    *,
    workers: int = 1,
    server_extra: str = "",
    extra_yaml: str = "",
    extra_env: dict[str, str] | None = None,
) -> tuple[Proc, str]:
    """BASE_CONFIG + `server: {drain_delay: 0<server_extra>}` + extra_yaml; (proc, base URL).

    Not waited for: wait_up(..., base + "/_authproxy/readyz", ...) when it must answer.
    """
    port = free_port()
    config = lab.tmp / f"{name}.yaml"
    config.write_text(BASE_CONFIG + f"server: {{drain_delay: 0{server_extra}}}\n" + extra_yaml)
    env = {
        **os.environ,
        "AUTHPROXY_DATABASE_URL": db_url,
        "AUTHPROXY_UPSTREAM_URL": upstream,
        "AUTHPROXY_LISTEN": f"127.0.0.1:{port}",
        "AUTHPROXY_CONFIG": str(config),
        **(extra_env or {}),
    }
    argv = [sys.executable, "-m", "authproxy", "serve"]
    if workers > 1:
        argv += ["--workers", str(workers)]
    return lab.spawn(name, argv, env), f"http://127.0.0.1:{port}"
