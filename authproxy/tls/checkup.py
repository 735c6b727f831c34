"""`authproxy check-config`'s look at the TLS files: what is in use, until when, and problems."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from authproxy.config.coerce import show
from authproxy.config.schema import Config
from authproxy.errors import ConfigError
from authproxy.tls.contexts import client_context, server_context
from authproxy.tls.files import CertificateFacts, key_mode_problem, read_certificates


def _expired(facts: CertificateFacts, setting: str, path: str, now: datetime) -> list[str]:
    if facts.not_after > now:
        return []
    return [f"{setting}: has expired on {facts.not_after.isoformat()} (got {show(path)})"]


def inspect_tls(cfg: Config, now: datetime | None = None) -> tuple[dict[str, Any], list[str]]:
    """Load every configured TLS file as serve would, and check what serve does not refuse:
    an expired certificate, a private key readable by others (mode wider than 0600).

    Returns the report (subject, notAfter and days left per certificate) and the problems,
    one ``setting: rule (got value)`` line each.
    """
    now = now or datetime.now(UTC)
    report: dict[str, Any] = {}
    problems: list[str] = []
    server, up = cfg.server, cfg.upstream
    if server.tls_cert_file is not None and server.tls_key_file is not None:
        try:
            facts = server_context(server)[1]
            report["listener"] = facts.as_json(now)
            problems += _expired(facts, "server.tls_cert_file", server.tls_cert_file, now)
        except ConfigError as exc:
            problems += exc.problems
        problems += filter(None, [key_mode_problem(server.tls_key_file, "server.tls_key_file")])
    if not up.is_https:
        return report, problems
    try:
        client_facts = client_context(up)[1]
        if up.ca_file is not None:
            authorities = read_certificates(up.ca_file, "upstream.ca_file")
            report["upstream_ca"] = [c.subject.rfc4514_string() for c in authorities]
        if client_facts is not None and up.client_cert_file is not None:
            report["upstream_client"] = client_facts.as_json(now)
            problems += _expired(
                client_facts, "upstream.client_cert_file", up.client_cert_file, now
            )
    except ConfigError as exc:
        problems += exc.problems
    if up.client_key_file is not None:
        problems += filter(None, [key_mode_problem(up.client_key_file, "upstream.client_key_file")])
    return report, problems
