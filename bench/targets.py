"""What speed.py measures against, each on its own free loopback port:

  a  nginx upstream answering a small JSON body: the thing being protected
  b  nginx proxy_pass to (a), keep-alive upstream: the floor of any proxy hop
  c  nginx + auth_request to a minimal Python verifier (bench.servers.verifier), nginx's
     access log on as Debian ships it: what a user would write in an afternoon, the
     comparison row
  d  authproxy as installed (embedded defaults: access log on), 1 worker
  e  d with 2 workers (serve --workers 2)
  f  d with server.fast_path off: aiohttp's server answers everything
  g, h  c and d again, with a new header value on every request (wrk Lua script)
  m  c with nginx's access log off      q  d with logging.access off (the quiet rows)
  v  c's nginx config with authproxy d's /_authproxy/v1/verify as the verifier (forward-auth)
  w, x  wrk straight at authproxy d's verify endpoint, and at c's verifier

and, for the streaming and daemon-memory measures, a Python streaming upstream
(bench.servers.stream_upstream) reached directly, through a tuned nginx and through
authproxy.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from authproxy.http.reserved import VERIFY_PATH
from bench.lab.daemons import NO_ACCESS_LOG, start_authproxy
from bench.lab.keys import CreatedKey
from bench.lab.nginx import PROXY_TO_UP, access_log, start_nginx, upstream_block
from bench.lab.probes import any_answer, http_get, ok, wait_up
from bench.lab.processes import BenchError, Lab, Proc, free_port
from bench.servers.stream_upstream import BODY

TARGETS = {  # wrk targets, in the order of every round
    "b": "nginx proxy_pass",
    "c": "nginx + auth_request, log on",
    "d": "authproxy, 1 worker",
    "e": "authproxy, 2 workers",
    "f": "authproxy, 1 w, no fast path",
    "g": "c, every head new",
    "h": "d, every head new",
    "m": "c, nginx access log off",
    "q": "d, access log off",
    "v": "c, verifier: authproxy verify",
    "w": "authproxy verify alone",
    "x": "c's verifier alone",
}
VERIFIERS = frozenset({"w", "x"})  # forward-auth verifiers asked directly: 2xx, no body
# g and h: wrk sends a new X-Bench-Seq value with every request, so no two heads on a
# connection repeat (authproxy reuses the parse of a repeated header block).
NEW_HEADS = {"g": "c", "h": "d"}
NEW_HEAD_LUA = """
local n = 0
request = function()
  n = n + 1
  local headers = {}
  for name, value in pairs(wrk.headers) do headers[name] = value end
  headers["X-Bench-Seq"] = tostring(n)
  return wrk.format(nil, nil, headers)
end
"""


@dataclass
class WrkTargets:
    urls: dict[str, str]  # target -> URL, in TARGETS' order
    scripts: dict[str, Path]  # target -> wrk Lua script, for those that run one (g, h)
    daemons: dict[str, tuple[Proc, str]]  # authproxy d, e, f, q: (process, base URL)
    # target -> the pids serving it, the upstream a left out (every target shares it):
    # their CPU per request is what the proxy layer costs, whatever else runs meanwhile.
    serving: dict[str, list[int]]
    upstream: int = 0  # (a)'s pid: pinned with wrk in the one-core rounds


def start_upstream(lab: Lab) -> tuple[Proc, int]:
    """(a): nginx answering BODY to everything."""
    port = free_port()
    return start_nginx(
        lab,
        "a-upstream",
        f"""
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{BODY}';
        }}
    }}""",
    ), port


def start_nginx_proxy(lab: Lab, port_a: int) -> tuple[Proc, int]:
    """(b): nginx proxy_pass, keep-alive to (a)."""
    port = free_port()
    return start_nginx(
        lab,
        "b-nginx-proxy",
        upstream_block("up", port_a)
        + f"""
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://up;{PROXY_TO_UP}
        }}
    }}""",
    ), port


def start_verifier(lab: Lab, key: CreatedKey) -> tuple[Proc, int]:
    """(c)'s verifier, knowing the one key."""
    digests = lab.tmp / "digests.json"
    digests.write_text(
        json.dumps(
            {hashlib.sha256(key.key.encode()).hexdigest(): {"space_id": key.space_id, "id": key.id}}
        )
    )
    port = free_port()
    return lab.spawn_module("c-verifier", "bench.servers.verifier", str(port), str(digests)), port


def start_auth_request(
    lab: Lab,
    name: str,
    port_a: int,
    port_v: int,
    *,
    logged: bool,
    verify_path: str = "/verify",
    tls: tuple[Path, Path] | None = None,
) -> tuple[Proc, int]:
    """(c, m, v): nginx + auth_request to a verifier (port_v, verify_path), then proxy_pass
    to (a); both keep-alive. Passes the verifier's identity headers on and drops
    Authorization, as authproxy does. With ``tls`` (certificate, key): HTTPS only."""
    port = free_port()
    log = access_log(lab, name) if logged else ""
    listen = f"listen 127.0.0.1:{port};"
    if tls is not None:
        listen = (
            f"listen 127.0.0.1:{port} ssl;\n        ssl_certificate {tls[0]};"
            f"\n        ssl_certificate_key {tls[1]};"
            # authproxy's protocols (older nginx leaves TLS 1.3 out by default).
            "\n        ssl_protocols TLSv1.2 TLSv1.3;"
        )
    return start_nginx(
        lab,
        name,
        upstream_block("up", port_a)
        + upstream_block("verifier", port_v)
        + f"""
    server {{
        {listen}{log}
        location = /_verify {{
            internal;
            proxy_pass http://verifier{verify_path};
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";{PROXY_TO_UP}
        }}
        location / {{
            auth_request /_verify;
            auth_request_set $space_id $upstream_http_x_space_id;
            auth_request_set $key_id $upstream_http_x_api_key_id;
            proxy_pass http://up;{PROXY_TO_UP}
            proxy_set_header Authorization "";
            proxy_set_header X-Space-Id $space_id;
            proxy_set_header X-Api-Key-Id $key_id;
        }}
    }}""",
    ), port


def start_wrk_targets(lab: Lab, db_url: str, key: CreatedKey) -> WrkTargets:
    """a to q, all started before any is waited for; each answers when this returns."""
    a, port_a = start_upstream(lab)
    b, port_b = start_nginx_proxy(lab, port_a)
    verifier, port_v = start_verifier(lab, key)
    c, port_c = start_auth_request(lab, "c-nginx-auth", port_a, port_v, logged=True)
    m, port_m = start_auth_request(lab, "m-nginx-auth-quiet", port_a, port_v, logged=False)
    upstream = f"http://127.0.0.1:{port_a}"
    d, url_d = start_authproxy(lab, "d-authproxy-1", db_url, upstream)
    e, url_e = start_authproxy(lab, "e-authproxy-2", db_url, upstream, workers=2)
    # (f): aiohttp's server for everything (server.fast_path: false), to show what the lean
    # front end buys in the same run.
    f, url_f = start_authproxy(
        lab, "f-authproxy-aiohttp", db_url, upstream, server_extra=", fast_path: false"
    )
    q, url_q = start_authproxy(lab, "q-authproxy-quiet", db_url, upstream, extra_yaml=NO_ACCESS_LOG)
    # (v): c's nginx config, with authproxy d's verify endpoint as the verifier.
    fa, port_fa = start_auth_request(
        lab,
        "v-nginx-authproxy-verify",
        port_a,
        int(url_d.rsplit(":", 1)[1]),
        logged=True,
        verify_path=VERIFY_PATH,
    )
    wait_up(lab, a, f"http://127.0.0.1:{port_a}/", any_answer)
    wait_up(lab, b, f"http://127.0.0.1:{port_b}/", any_answer)
    wait_up(lab, verifier, f"http://127.0.0.1:{port_v}/verify", any_answer)
    wait_up(lab, c, f"http://127.0.0.1:{port_c}/", any_answer)
    wait_up(lab, m, f"http://127.0.0.1:{port_m}/", any_answer)
    wait_up(lab, fa, f"http://127.0.0.1:{port_fa}/", any_answer)
    daemons = {"d": (d, url_d), "e": (e, url_e), "f": (f, url_f), "q": (q, url_q)}
    for proc, base in daemons.values():
        wait_up(lab, proc, base + "/_authproxy/readyz", ok)
    urls = {
        "b": f"http://127.0.0.1:{port_b}/api/v1/points",
        "c": f"http://127.0.0.1:{port_c}/api/v1/points",
        "d": url_d + "/api/v1/points",
        "e": url_e + "/api/v1/points",
        "f": url_f + "/api/v1/points",
    }
    urls.update({new: urls[same] for new, same in NEW_HEADS.items()})
    urls["m"] = f"http://127.0.0.1:{port_m}/api/v1/points"
    urls["q"] = url_q + "/api/v1/points"
    urls["v"] = f"http://127.0.0.1:{port_fa}/api/v1/points"
    urls["w"] = url_d + VERIFY_PATH
    urls["x"] = f"http://127.0.0.1:{port_v}/verify"
    pid = {
        name: proc.process.pid
        for name, proc in {
            "b": b,
            "c": c,
            "m": m,
            "v": verifier,
            "fa": fa,
            "d": d,
            "e": e,
            "f": f,
            "q": q,
        }.items()
    }
    serving = {
        "b": [pid["b"]],
        "c": [pid["c"], pid["v"]],
        "g": [pid["c"], pid["v"]],
        "m": [pid["m"], pid["v"]],
        **{t: [pid[t]] for t in ("d", "e", "f", "q")},
        "h": [pid["d"]],
        "v": [pid["fa"], pid["d"]],
        "w": [pid["d"]],
        "x": [pid["v"]],
    }
    new_heads = lab.tmp / "new-heads.lua"
    new_heads.write_text(NEW_HEAD_LUA)
    return WrkTargets(
        urls,
        {target: new_heads for target in NEW_HEADS},
        daemons,
        serving,
        a.process.pid,
    )


def check_wrk_targets(targets: WrkTargets, key: CreatedKey) -> None:
    """Every target answers BODY with the key (the verifiers w and x: 2xx, no body), and
    all but b answer 401 without it."""
    for target, url in targets.urls.items():
        status, body = http_get(url, {"Authorization": f"Bearer {key.key}"})
        verifier = target in VERIFIERS
        if (verifier and status not in (200, 204)) or (
            not verifier and (status != 200 or body.decode() != BODY)
        ):
            raise BenchError(f"{TARGETS[target]}: {url} answered {status} {body[:200]!r}")
        if target != "b":
            status, _ = http_get(url)
            if status != 401:
                raise BenchError(
                    f"{TARGETS[target]} let a request without a key through ({status})"
                )
    print(
        "all targets up; each answers the JSON body with the key and 401 without it "
        "(the proxy b checks no key)"
    )


def start_tuned_nginx(lab: Lab, port_s: int) -> tuple[Proc, int]:
    """nginx proxy_pass to the streaming upstream, tuned for large bodies."""
    port = free_port()
    return start_nginx(
        lab,
        "s-nginx-proxy",
        upstream_block("stream", port_s)
        + f"""
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location / {{
            proxy_pass http://stream;{PROXY_TO_UP}
            proxy_request_buffering off;
            proxy_max_temp_file_size 0;
            # Larger buffers than the defaults (16k body buffer, 8 x 4k proxy buffers),
            # which roughly halve nginx's throughput here: the floor should be a tuned one.
            client_body_buffer_size 256k;
            proxy_buffer_size 64k;
            proxy_buffers 16 64k;
            proxy_busy_buffers_size 128k;
        }}
    }}""",
    ), port


def start_stream_targets(
    lab: Lab, db_url: str, size: int, key: str
) -> dict[str, tuple[str, str | None]]:
    """The streaming upstream directly, through nginx, through authproxy (1 worker):
    path name -> (base URL, key to send or None); each answers when this returns."""
    port_s = free_port()
    upstream = lab.spawn_module("s-stream-upstream", "bench.servers.stream_upstream", str(port_s))
    nginx, port_n = start_tuned_nginx(lab, port_s)
    proc, base = start_authproxy(
        lab,
        "s-authproxy-1",
        db_url,
        f"http://127.0.0.1:{port_s}",
        server_extra=f", max_body_bytes: {2 * size}",
    )
    wait_up(lab, upstream, f"http://127.0.0.1:{port_s}/bytes/1", ok)
    wait_up(lab, nginx, f"http://127.0.0.1:{port_n}/bytes/1", ok)
    wait_up(lab, proc, base + "/_authproxy/readyz", ok)
    return {
        "direct (no proxy)": (f"http://127.0.0.1:{port_s}", None),
        "nginx proxy_pass": (f"http://127.0.0.1:{port_n}", None),
        "authproxy, 1 worker": (base, key),
    }


def start_cheap_daemon(lab: Lab, db_url: str) -> tuple[Proc, str]:
    """authproxy configured with the cheapest argon2id the config accepts, in front of the
    streaming upstream: n cold keys take seconds, not minutes. (proc, base URL), ready."""
    port_up = free_port()
    upstream = lab.spawn_module("rss-upstream", "bench.servers.stream_upstream", str(port_up))
    proc, base = start_authproxy(
        lab,
        "f-authproxy-rss",
        db_url,
        f"http://127.0.0.1:{port_up}",
        extra_yaml="hashing: {time_cost: 1, memory_cost_kib: 8}\n",
    )
    wait_up(lab, upstream, f"http://127.0.0.1:{port_up}/bytes/1", ok)
    wait_up(lab, proc, base + "/_authproxy/readyz", ok)
    return proc, base
