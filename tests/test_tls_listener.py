"""HTTPS on the listener: real daemons, curl and Python clients, reloads while serving.

Certificates come from a throwaway CA (trustme). A client tells which certificate a
handshake got by its notAfter: each certificate of a test has its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import signal
import ssl
import sys
import warnings
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from tests.certificates import PemPair, trusting, write_pair
from tests.conftest import Upstream
from tests.daemon import REPO_ROOT, Daemon, DaemonLauncher, authproxy_env, free_port, run_cli

MIB = 1024 * 1024
EXPIRY_METRIC = 'authproxy_tls_certificate_expiry_seconds{certificate="listener"}'


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


class LiveFiles:
    """The files the daemon is configured with, and the certificates a test puts there."""

    def __init__(self, ca: trustme.CA, folder: Path) -> None:
        self.ca, self.folder = ca, folder
        self.cert, self.key = folder / "tls.crt", folder / "tls.key"
        self.first = self.make("first", days=90)
        self.first.install(self.cert, self.key)

    def make(self, name: str, *, days: int) -> PemPair:
        return write_pair(self.ca, self.folder / name, days=days)

    def server(self, **settings: Any) -> dict[str, Any]:
        return {"tls_cert_file": str(self.cert), "tls_key_file": str(self.key), **settings}


@pytest.fixture
def files(ca: trustme.CA, tmp_path: Path) -> LiveFiles:
    return LiveFiles(ca, tmp_path / "tls")


def host_port(daemon: Daemon) -> tuple[str, int]:
    host, _, port = daemon.base_url.partition("://")[2].rpartition(":")
    return host, int(port)


async def served_not_after(daemon: Daemon) -> float:
    """The notAfter (seconds since the epoch) of the certificate a new handshake gets."""
    host, port = host_port(daemon)
    _, writer = await asyncio.open_connection(host, port, ssl=daemon.client_ssl)
    cert = writer.get_extra_info("peercert")
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return float(ssl.cert_time_to_seconds(cert["notAfter"]))


async def wait_served(daemon: Daemon, pair: PemPair, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (seen := await served_not_after(daemon)) != pair.not_after.timestamp():
        assert loop.time() < deadline, f"still serving notAfter {seen}"
        await asyncio.sleep(0.1)


async def wait_logged(daemon: Daemon, event: str, count: int) -> list[dict[str, Any]]:
    """The daemon's log events named ``event``, once there are ``count`` of them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while len(found := [e for e in daemon.log_events() if e.get("event") == event]) < count:
        assert loop.time() < deadline, f"{len(found)} {event} events:\n{daemon.stderr()}"
        await asyncio.sleep(0.1)
    return found


async def expiry_metric(daemon: Daemon) -> float:
    async with daemon.session() as session:
        async with session.get(daemon.url("/_authproxy/metrics")) as resp:
            text = await resp.text()
    values = [line.split()[-1] for line in text.splitlines() if line.startswith(EXPIRY_METRIC)]
    assert len(values) == 1, text
    return float(values[0])


async def curl(daemon: Daemon, ca_file: Path, path: str, *args: str) -> str:
    """curl's status code for ``path``, trusting only ``ca_file``."""
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{scheme}", "--cacert",
        str(ca_file), *args, daemon.url(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return out.decode()


class TestHttps:
    @pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "aiohttp"])
    async def test_curl_and_python_clients_get_200_with_a_key_and_401_without(
        self,
        launcher: DaemonLauncher,
        upstream: Upstream,
        files: LiveFiles,
        tmp_path: Path,
        fast_path: bool,
    ) -> None:
        """Every path of the listener over HTTPS, both front ends, and the upstream is
        told the client came over https."""
        daemon = await launcher.start(
            client_ssl=trusting(files.ca), server=files.server(fast_path=fast_path)
        )
        key = (await launcher.create_key())["key"]
        bearer = f"Authorization: Bearer {key}"
        ca_file = tmp_path / "ca.pem"
        files.ca.cert_pem.write_to_path(str(ca_file))
        assert await curl(daemon, ca_file, "/api/points", "-H", bearer) == "200 HTTPS"
        assert await curl(daemon, ca_file, "/upload", "-H", bearer, "-d", "x" * 5000) == "200 HTTPS"
        assert await curl(daemon, ca_file, "/api/points") == "401 HTTPS"
        assert await curl(daemon, ca_file, "/_authproxy/readyz") == "200 HTTPS"
        assert upstream.recorder.requests[0].header("X-Forwarded-Proto") == ["https"]
        assert upstream.recorder.requests[1].header("X-Forwarded-Proto") == ["https"]

        async with daemon.session() as session:
            async with session.get(
                daemon.url("/api/points"), headers={"Authorization": f"Bearer {key}"}
            ) as resp:
                assert resp.status == 200
                assert (await resp.json())["raw_path"] == "/api/points"
            async with session.get(daemon.url("/api/points")) as resp:
                assert resp.status == 401
        assert await expiry_metric(daemon) == files.first.not_after.timestamp()

        def with_http_client() -> int:
            host, port = host_port(daemon)
            conn = http.client.HTTPSConnection(host, port, context=daemon.client_ssl, timeout=10)
            try:
                conn.request("GET", "/api/points", headers={"Authorization": f"Bearer {key}"})
                return conn.getresponse().status
            finally:
                conn.close()

        assert await asyncio.to_thread(with_http_client) == 200

    async def test_alpn_offers_http_1_1_only(
        self, launcher: DaemonLauncher, files: LiveFiles
    ) -> None:
        """A client offering h2 first is answered in HTTP/1.1."""
        daemon = await launcher.start(client_ssl=trusting(files.ca), server=files.server())
        context = trusting(files.ca)
        context.set_alpn_protocols(["h2", "http/1.1"])
        _, writer = await asyncio.open_connection(*host_port(daemon), ssl=context)
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
        assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        writer.close()

    async def test_plain_http_to_the_tls_port_gets_no_http_answer(
        self, launcher: DaemonLauncher, files: LiveFiles
    ) -> None:
        daemon = await launcher.start(client_ssl=trusting(files.ca), server=files.server())
        reader, writer = await asyncio.open_connection(*host_port(daemon))
        writer.write(b"GET /_authproxy/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert not answer.startswith(b"HTTP/")
        assert b"healthz" not in answer and b"200" not in answer

    @pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
    async def test_tls_1_0_and_1_1_are_refused(
        self, launcher: DaemonLauncher, files: LiveFiles, version: ssl.TLSVersion
    ) -> None:
        daemon = await launcher.start(client_ssl=trusting(files.ca), server=files.server())
        old = trusting(files.ca)
        old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer the old protocols
        with warnings.catch_warnings():  # deprecated: that is the point of this test
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = old.maximum_version = version
        # The handshake fails: uvloop closes the connection on OpenSSL's refusal, before
        # the protocol_version alert is out, so the client sees a reset or that alert.
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await asyncio.open_connection(*host_port(daemon), ssl=old)
        assert await served_not_after(daemon) == files.first.not_after.timestamp()

    @pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "aiohttp"])
    async def test_websocket_over_tls(
        self, launcher: DaemonLauncher, files: LiveFiles, fast_path: bool
    ) -> None:
        daemon = await launcher.start(
            client_ssl=trusting(files.ca), server=files.server(fast_path=fast_path)
        )
        key = (await launcher.create_key())["key"]
        async with daemon.session() as session:
            async with session.ws_connect(
                daemon.url("/ws/echo"), headers={"Authorization": f"Bearer {key}"}
            ) as ws:
                for size in (5, 300_000):
                    await ws.send_bytes(b"b" * size)
                    message = await ws.receive(timeout=10)
                    assert message.type == aiohttp.WSMsgType.BINARY
                    assert message.data == b"b" * size
                await ws.send_str("hello over tls")
                assert await ws.receive_str(timeout=10) == "hello over tls"

    async def test_the_images_healthcheck_passes_over_https(
        self, launcher: DaemonLauncher, files: LiveFiles
    ) -> None:
        """The Dockerfile's HEALTHCHECK command, run as the image runs it, with the
        image's variables: AUTHPROXY_TLS_CERT_FILE set makes it ask over HTTPS."""
        daemon = await launcher.start(client_ssl=trusting(files.ca), server=files.server())
        dockerfile = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
        found = re.search(r"^HEALTHCHECK .*\\\n\s+CMD (\[.*\])$", dockerfile, re.M)
        assert found, "no exec-form HEALTHCHECK in the Dockerfile"
        argv = json.loads(found[1])
        assert argv[0] == "python3"
        listen = daemon.base_url.removeprefix("https://")
        for tls_variables, expected in (({"AUTHPROXY_TLS_CERT_FILE": str(files.cert)}, 0), ({}, 1)):
            env = authproxy_env(AUTHPROXY_LISTEN=listen, **tls_variables)
            process = await asyncio.create_subprocess_exec(
                sys.executable, *argv[1:], env=env, stderr=asyncio.subprocess.DEVNULL
            )
            assert await asyncio.wait_for(process.wait(), 30) == expected

    @pytest.mark.parametrize("workers", [1, 2])
    @pytest.mark.parametrize("broken", ["not a certificate", "key of another certificate"])
    async def test_a_certificate_that_cannot_be_loaded_is_a_start_up_error(
        self, launcher: DaemonLauncher, files: LiveFiles, workers: int, broken: str
    ) -> None:
        """Exit 2 with the setting at fault, never a plain-HTTP listener."""
        if broken == "not a certificate":
            files.cert.write_text("hello\n")
            expected = "server.tls_cert_file: must hold PEM certificates"
        else:
            other = files.make("other", days=30)
            files.key.write_bytes(other.key.read_bytes())
            expected = "server.tls_key_file: must be the private key of server.tls_cert_file"
        env = launcher.env(listen=f"127.0.0.1:{free_port()}", server=files.server(workers=workers))
        result = await run_cli(env, "serve", timeout=30)
        assert result.exit_code == 2, result.stderr
        assert expected in result.stderr


class TestReload:
    async def test_sighup_serves_new_handshakes_while_a_download_keeps_flowing(
        self, launcher: DaemonLauncher, files: LiveFiles
    ) -> None:
        daemon = await launcher.start(
            client_ssl=trusting(files.ca), server=files.server(tls_reload_interval=0)
        )
        key = (await launcher.create_key())["key"]
        size = 64 * MIB
        async with daemon.session() as session:
            async with session.get(
                daemon.url(f"/bytes/{size}"), headers={"Authorization": f"Bearer {key}"}
            ) as download:
                first = await download.content.readexactly(MIB)
                assert download.connection is not None and download.connection.transport
                old = download.connection.transport.get_extra_info("peercert")
                assert (
                    ssl.cert_time_to_seconds(old["notAfter"]) == files.first.not_after.timestamp()
                )

                second = files.make("second", days=200)
                second.install(files.cert, files.key)
                daemon.process.send_signal(signal.SIGHUP)
                await wait_served(daemon, second)
                assert await expiry_metric(daemon) == second.not_after.timestamp()

                rest = 0
                while chunk := await download.content.read(MIB):
                    rest += len(chunk)
                assert len(first) + rest == size
        events = [e for e in daemon.log_events() if e.get("event") == "tls_reloaded"]
        assert [e["reason"] for e in events] == ["sighup"]
        assert daemon.process.poll() is None

    async def test_changed_files_are_reloaded_without_a_signal(
        self, launcher: DaemonLauncher, files: LiveFiles
    ) -> None:
        daemon = await launcher.start(
            client_ssl=trusting(files.ca), server=files.server(tls_reload_interval=0.2)
        )
        second = files.make("second", days=120)
        second.install(files.cert, files.key)
        await wait_served(daemon, second)
        events = [e for e in daemon.log_events() if e.get("event") == "tls_reloaded"]
        assert events and events[0]["reason"] == "files_changed"

    async def test_a_broken_reload_keeps_the_old_certificate(
        self, launcher: DaemonLauncher, files: LiveFiles
    ) -> None:
        daemon = await launcher.start(
            client_ssl=trusting(files.ca), server=files.server(tls_reload_interval=0.2)
        )
        files.cert.write_text("-----BEGIN CERTIFICATE-----\nbroken\n")  # as if half-written
        await asyncio.sleep(1.0)  # the watcher's turn
        daemon.process.send_signal(signal.SIGHUP)
        failed = await wait_logged(daemon, "tls_reload_failed", 2)
        assert {e["reason"] for e in failed} == {"files_changed", "sighup"}
        assert "server.tls_cert_file: must hold PEM certificates" in failed[0]["problems"][0]
        assert failed[0]["kept_not_after"] == files.first.not_after.isoformat()
        assert await served_not_after(daemon) == files.first.not_after.timestamp()
        assert await expiry_metric(daemon) == files.first.not_after.timestamp()
        async with daemon.session() as session:
            async with session.get(daemon.url("/_authproxy/healthz")) as resp:
                assert resp.status == 200

    async def test_sighup_reaches_every_worker(
        self, launcher: DaemonLauncher, files: LiveFiles
    ) -> None:
        daemon = await launcher.start(
            client_ssl=trusting(files.ca), server=files.server(workers=2, tls_reload_interval=0)
        )
        # Until a worker's loop handles SIGHUP it ignores it (and loads the files as they
        # are when it starts): wait for both to listen.
        await wait_logged(daemon, "listening", 2)
        second = files.make("second", days=150)
        second.install(files.cert, files.key)
        daemon.process.send_signal(signal.SIGHUP)  # to the supervisor
        await wait_logged(daemon, "tls_reloaded", 2)
        # SO_REUSEPORT spreads new connections over both workers: each must serve it.
        seen = {await served_not_after(daemon) for _ in range(30)}
        assert seen == {second.not_after.timestamp()}
