"""The SSLContexts: the listener's (server side) and the upstream client's.

Both take the standard library's defaults (``ssl.create_default_context``: certificate
verification, no compression, modern ciphers) and refuse anything older than TLS 1.2.
ALPN offers only ``http/1.1``: both ends of authproxy speak HTTP/1.1.
"""

from __future__ import annotations

import os
import ssl

from authproxy.config.schema import ServerConfig, UpstreamConfig
from authproxy.errors import ConfigError
from authproxy.tls.files import CertificateFacts, check_pair, read_certificates

ALPN = ["http/1.1"]


def _loaded(context: ssl.SSLContext, setting: str, cert_file: str, key_file: str) -> None:
    try:
        context.load_cert_chain(os.path.expanduser(cert_file), os.path.expanduser(key_file))
    except (ssl.SSLError, OSError) as exc:
        # The files passed check_pair a moment ago: changed since, or a chain OpenSSL refuses.
        raise ConfigError([f"{setting}: cannot be loaded ({exc})"]) from None


def server_context(cfg: ServerConfig) -> tuple[ssl.SSLContext, CertificateFacts]:
    """The listener's context from server.tls_cert_file and server.tls_key_file.

    Raises:
        ConfigError: a file is missing, does not parse, or the key is not the certificate's.
    """
    cert_file, key_file = cfg.tls_cert_file, cfg.tls_key_file
    if cert_file is None or key_file is None:
        raise ValueError("server_context needs server.tls_cert_file and server.tls_key_file")
    facts = check_pair(
        cert_file, key_file, cert_setting="server.tls_cert_file", key_setting="server.tls_key_file"
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN)
    _loaded(context, "server.tls_cert_file", cert_file, key_file)
    return context, facts


def client_context(cfg: UpstreamConfig) -> tuple[ssl.SSLContext, CertificateFacts | None]:
    """The upstream client's context: verified against upstream.ca_file (else the system's
    CAs), with the hostname checked, presenting upstream.client_cert_file when set.

    Raises:
        ConfigError: a file is missing, does not parse, or the key is not the certificate's.
    """
    cafile = None
    if cfg.ca_file is not None:
        read_certificates(cfg.ca_file, "upstream.ca_file")
        cafile = os.path.expanduser(cfg.ca_file)
    try:
        # With a cafile, only its CAs are trusted: a private CA does not add to the public ones.
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError([f"upstream.ca_file: cannot be loaded ({exc})"]) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN)
    facts = None
    if cfg.client_cert_file is not None and cfg.client_key_file is not None:
        facts = check_pair(
            cfg.client_cert_file,
            cfg.client_key_file,
            cert_setting="upstream.client_cert_file",
            key_setting="upstream.client_key_file",
        )
        _loaded(context, "upstream.client_cert_file", cfg.client_cert_file, cfg.client_key_file)
    return context, facts
