"""No key, Authorization value, JWT or hash in any log line, metric or error body."""

from __future__ import annotations

import base64
import re
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import example, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from authproxy.keys.format import generate_key
from authproxy.observability.logs import redact_secrets
from tests.conftest import Upstream, new_key
from tests.daemon import DaemonLauncher
from tests.tokens import ADMIN_SECRET, mint

OWNER = {"plant-7": "owner"}


class TestDaemonOutput:
    async def test_logs_metrics_and_errors_hold_no_secret(
        self, launcher: DaemonLauncher, upstream: Upstream
    ) -> None:
        """Drive every credential path through a real daemon, then grep what it wrote."""
        daemon = await launcher.start(
            admin={"jwt_secret": ADMIN_SECRET}, logging={"level": "debug"}
        )
        token = mint(OWNER)
        basic = base64.b64encode(b"operator:hunter2-password").decode()
        wrong = generate_key().full
        seen_bodies: list[str] = []
        async with aiohttp.ClientSession() as session:
            async with session.post(
                daemon.url("/_authproxy/v1/spaces/plant-7/keys"),
                json={"name": "grep me"},
                headers={"Authorization": f"Bearer {token}"},
            ) as resp:
                key = (await resp.json())["key"]
            requests = [
                ("GET", "/data", {"Authorization": f"Bearer {key}"}),
                ("GET", f"/data?api_key={key}", {}),
                ("GET", "/data", {"Authorization": f"Bearer {wrong}"}),
                ("GET", "/data", {"Authorization": f"Basic {basic}"}),
                ("GET", "/data", {"Authorization": f"Bearer {token}"}),
                ("GET", "/_authproxy/v1/spaces/plant-7/keys", {"Authorization": f"Bearer {key}"}),
                (
                    "GET",
                    "/_authproxy/v1/spaces/plant-7/keys",
                    {"Authorization": f"Bearer {token}x"},
                ),
                ("GET", "/_authproxy/v1/spaces/plant-7/keys", {"Authorization": f"Bearer {token}"}),
            ]
            for method, path, headers in requests:
                async with session.request(method, daemon.url(path), headers=headers) as resp:
                    seen_bodies.append(await resp.text())
            async with session.get(daemon.url("/_authproxy/metrics")) as resp:
                metrics = await resp.text()
        await daemon.stop()
        output = daemon.stderr() + metrics + "".join(seen_bodies)
        for secret in (key, key[14:], wrong, basic, token, ADMIN_SECRET, "$argon2"):
            assert secret not in output, f"a secret of length {len(secret)} leaked"
        assert "auth_refused" in output  # the refusals were logged, just without secrets


class TestRedactionProcessor:
    @pytest.mark.parametrize(
        "text",
        [
            "Authorization: Bearer asc_0123456789abcdefghijABCDEFGHIJ0123456789abcd",
            "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl in a message",
            "hash $argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA leaked",
            "Basic b3BlcmF0b3I6aHVudGVyMg== sent",
        ],
    )
    def test_masks_secret_shapes_in_any_field(self, text: str) -> None:
        """Whatever a log call is handed, the secret part is replaced."""
        event = redact_secrets(None, "info", {"event": "x", "detail": text})
        assert "<" in event["detail"] and "redacted" in event["detail"]
        for secret in ("asc_0123456789abcdefghij", "c2lnbmF0dXJl", "aGFzaA", "aHVudGVyMg"):
            assert secret not in event["detail"]

    @settings(max_examples=500)
    @example("BASIC dXNlcjpwdw==")
    @example("x bEaReR\tq")
    @example("eyJa.b.c")
    @example("$argon2i$v=19$x")
    @example("asc_0123456789")
    @given(
        st.lists(
            st.sampled_from(
                [
                    "asc_",
                    "0123456789abcdefgh",
                    "eyJ",
                    "hbGci",
                    ".",
                    "-",
                    "$argon2id$",
                    "v=19",
                    "Bearer",
                    "BASIC",
                    "basic",
                    " ",
                    "\t",
                    "x",
                    "/",
                    "é",
                    '"',
                    "Asc_",
                    "eyj",
                ]
            ),
            max_size=12,
        ).map("".join)
    )
    def test_the_quick_check_never_skips_a_secret(self, text: str) -> None:
        """Strings skipped by the one-search pre-check come out exactly as the four
        substitutions would leave them (the patterns as SECURITY.md describes them)."""
        full = re.sub(r"asc_[0-9A-Za-z]{8,}", "asc_<redacted>", text)
        full = re.sub(r"eyJ[\w-]+\.[\w-]+\.[\w-]*", "<jwt redacted>", full)
        full = re.sub(r"\$argon2(id|i|d)\$[^\s\"']+", "<hash redacted>", full)
        full = re.sub(r"(?i)\b(bearer|basic)\s+[^\s\"',]+", r"\1 <redacted>", full)
        assert redact_secrets(None, "info", {"event": "x", "detail": text})["detail"] == full

    def test_secret_field_names_are_masked(self) -> None:
        """Fields named authorization, key, token, secret_hash or jwt are never shown."""
        event = redact_secrets(
            None,
            "info",
            {"event": "x", "authorization": "anything", "token": "t", "key": "k", "jwt": "j"},
        )
        assert {event[n] for n in ("authorization", "token", "key", "jwt")} == {"<redacted>"}

    def test_exception_text_is_redacted(self) -> None:
        """A traceback mentioning a key is masked too (format_exc_info runs first)."""
        import structlog

        key = generate_key().full
        with capture_logs(
            processors=[structlog.processors.format_exc_info, redact_secrets]
        ) as logs:
            try:
                raise ValueError(f"bad {key}")
            except ValueError:
                structlog.get_logger().error("boom", exc_info=True)
        assert key not in str(logs)


class TestReprs:
    async def test_key_objects_never_print_their_secrets(
        self, client: TestClient[Any, Any]
    ) -> None:
        """repr of a created key, its record and a parsed key (what a traceback or a
        failed assertion prints) holds neither the full key, the secret nor the hash."""
        created = await new_key(client)
        parsed = generate_key().parsed
        text = repr(created) + repr(created.record) + repr(parsed)
        assert created.key not in text and created.record.secret_hash not in text
        assert parsed.secret not in text and "$argon2" not in text
        assert created.record.id in text  # the rest is still there to debug with
