"""Answers that stay open, and what ends them: a relayed answer while it streams (an SSE
feed, a long export) and a WebSocket tunnel (issue 16).

Each is registered by its key id with auth/live.py's LiveConnections while it is open, so
a revoke heard from any process, or the key's expires_at, ends it: a stream is cut, a
tunnel gets a close frame 1008. A WebSocket handshake goes upstream on a connection of
its own; after a 101 both sides become a byte tunnel (http/tunnel.py). At shutdown,
after the drain, every tunnel gets a close frame 1001.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Final

import structlog

from authproxy.auth.live import LiveConnections
from authproxy.auth.verdict import Principal
from authproxy.http.admission import Admission
from authproxy.http.exchange import Exchange, upstream_fields
from authproxy.http.tunnel import Tunnel
from authproxy.http.websocket import (
    GOING_AWAY,
    POLICY_VIOLATION,
    UPGRADE_FIELDS,
    is_websocket_upgrade,
    switching_head,
)
from authproxy.observability.metrics import Metrics
from authproxy.upstream.h1pool import H1Transport, Upgrade, encode_fields
from authproxy.upstream.transport import UpstreamResponse

log = structlog.get_logger(__name__)

# The close frame's reason when a key's open connection is ended (never the key).
_ENDED: Final = {"revoked": "API key revoked", "expired": "API key expired"}
SHUTDOWN_REASON: Final = "server shutting down"


class LiveAnswers:
    """Open answers by key (see the module docstring); built by app.py."""

    def __init__(
        self,
        *,
        admission: Admission,
        live: LiveConnections,
        upgrades: H1Transport,
        metrics: Metrics,
        strip_prefixes: tuple[str, ...],
        tunnel_idle_timeout: float = 3600.0,
    ) -> None:
        self._admission = admission
        self._live = live
        self._upgrades = upgrades  # WebSocket handshakes: a dedicated connection each
        self._metrics = metrics
        self._strip_prefixes = strip_prefixes
        self._tunnel_idle_timeout = tunnel_idle_timeout
        self.tunnels: set[Tunnel] = set()

    def upgrade(self, x: Exchange, principal: Principal) -> Upgrade | None:
        """The upstream handshake for a WebSocket upgrade request; None for any other."""
        if "Upgrade" not in x.headers or not is_websocket_upgrade(x.method, x.headers):
            return None
        return self._upgrades.upgrade(x.target, self._upgrade_fields(x, principal))

    async def relay(
        self, x: Exchange, principal: Principal, up: UpstreamResponse, extra: Mapping[str, str]
    ) -> None:
        """Relay the answer; while it streams, a revoke or expiry of its key cuts it."""
        if up.arrived is not None and up.arrived():
            # The whole answer is here (most small ones): it goes in one write, nothing
            # streams that a revoke could cut, and registering it costs every request.
            await x.relay(up, extra)
            return
        task = asyncio.current_task()
        live = self._live.track(
            principal.key_id, principal.expires_at, "stream", lambda _: _cut(x, task)
        )
        try:
            await x.relay(up, extra)
        except asyncio.CancelledError:
            # Cut for its key (_cut): the client connection is gone; the answer ends here.
            if not live.ended or task is None or task.uncancel() > 0:
                raise
        finally:
            self._live.untrack(live)

    async def tunnel(
        self,
        x: Exchange,
        principal: Principal,
        up: UpstreamResponse,
        upgrade: Upgrade,
        extra: Mapping[str, str],
    ) -> None:
        """The upstream said 101: its head to the client, then a byte tunnel until either
        side closes (the access line is written then: status 101, the tunnel's lifetime)."""
        upstream = upgrade.tunnel
        if upstream is None:
            return
        try:
            client = await x.switch(switching_head(up.reason, up.raw_headers, extra, x.request_id))
        except BaseException:
            upstream.transport.close()
            raise
        tunnel = Tunnel(
            client=client.transport,
            before=client.protocol,
            upstream=upstream.transport,
            idle_timeout=self._tunnel_idle_timeout,
            metrics=self._metrics,
        )
        live = self._live.track(
            principal.key_id,
            principal.expires_at,
            "websocket",
            lambda why: tunnel.close(POLICY_VIOLATION, _ENDED.get(why, why), why=why),
        )
        self.tunnels.add(tunnel)
        try:
            tunnel.start(client.early, upstream.early)
            await asyncio.shield(tunnel.closed)
        except asyncio.CancelledError:
            tunnel.abort()  # a shutdown past its grace period
            raise
        finally:
            self.tunnels.discard(tunnel)
            self._live.untrack(live)
        log.info("tunnel_closed", reason=tunnel.reason)

    def close_tunnels(self) -> None:
        """Shutdown, after the drain: every tunnel gets a close frame 1001."""
        for tunnel in list(self.tunnels):
            tunnel.close(GOING_AWAY, SHUTDOWN_REASON, why="shutdown")

    def _upgrade_fields(self, x: Exchange, principal: Principal) -> bytes:
        """The WebSocket handshake's fields for the upstream: the usual rules (hop-by-hop,
        Authorization and client copies of ours dropped, identity added), and the one
        upgrade we forward (RFC 9110 §7.8)."""
        fields = upstream_fields(x, principal, self._admission, self._strip_prefixes)
        return encode_fields([*UPGRADE_FIELDS, *fields])


def _cut(x: Exchange, task: asyncio.Task[object] | None) -> None:
    """End a streaming answer whose key was revoked or expired: the client connection is
    cut, and the task relaying it stops waiting for the upstream."""
    x.abort()
    if task is not None:
        task.cancel()
