"""A WebSocket tunnel: the client's connection and a dedicated upstream one, spliced.

After the upstream's 101 both transports get a protocol of this module, and bytes go
each way as they come, unchanged. Flow control is the transports' own: when one side's
write buffer passes its high-water mark, asyncio calls ``pause_writing`` on its protocol
and we stop reading the other side until ``resume_writing``. A peer that stops reading
therefore holds at most a write buffer and one read of data in this process per
direction, however much the other side sends.

The tunnel ends when either side closes (the other is closed after its pending bytes),
when it was idle for ``server.tunnel_idle_timeout``, or by ``close(code, reason)``: a
close frame to the client (and a masked one to the upstream) put between two frames,
then both connections closed; a peer that does not take it is cut after CLOSE_GRACE.
"""

from __future__ import annotations

import asyncio
from typing import Final, NamedTuple, cast

from authproxy.http.websocket import GOING_AWAY, FrameBoundary, close_frame
from authproxy.observability.metrics import Metrics

# How long a closing tunnel waits for the frame in progress to end and for the peers to
# take the close frames, before cutting both connections: within the 1 s revocation window.
CLOSE_GRACE: Final = 0.5
IDLE_REASON: Final = "idle timeout"


class ClientConnection(NamedTuple):
    """The client side as a front end hands it over after the 101 head went out."""

    transport: asyncio.BaseTransport
    protocol: asyncio.BaseProtocol  # the front end's, told when the connection ends
    early: bytes  # bytes the client sent after its handshake, not yet read by anyone


class Tunnel:
    """One spliced pair of connections (see the module docstring)."""

    def __init__(
        self,
        *,
        client: asyncio.BaseTransport,
        before: asyncio.BaseProtocol,
        upstream: asyncio.BaseTransport,
        idle_timeout: float,
        metrics: Metrics,
    ) -> None:
        """``before``: the client connection's protocol until now; told of the connection's
        end, as the transport would have told it, so its server's bookkeeping stays true."""
        self._loop = asyncio.get_running_loop()
        self._before = before
        self._metrics = metrics
        self.client = _Side(self, cast(asyncio.Transport, client), "upstream", masked=False)
        self.upstream = _Side(self, cast(asyncio.Transport, upstream), "downstream", masked=True)
        self.client.other, self.upstream.other = self.upstream, self.client
        self.closed: asyncio.Future[str] = self._loop.create_future()
        self.reason = ""  # why it ended: client, upstream, idle, shutdown, revoked, expired
        self._idle_timeout = idle_timeout
        self._active = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._closing: tuple[int, str] | None = None

    def start(self, client_early: bytes, upstream_early: bytes) -> None:
        """Take both transports over; the bytes each side sent before are relayed first."""
        self._metrics.tunnels_open.inc()
        for side, early in ((self.client, client_early), (self.upstream, upstream_early)):
            side.transport.set_protocol(side)
            if early:
                side.data_received(early)
            _resume(side.transport)
        if self._idle_timeout > 0:
            self._timer = self._loop.call_later(self._idle_timeout, self._on_idle_timer)

    def close(self, code: int, reason: str, *, why: str) -> None:
        """End the tunnel with a close frame ``code`` to both sides (see the module
        docstring); ``why`` is the metric's reason."""
        if self._closing is not None or self.closed.done():
            return
        self._closing = (code, reason)
        self.reason = self.reason or why
        self._loop.call_later(CLOSE_GRACE, self.abort)
        for side in (self.client, self.upstream):
            _resume(side.transport)  # the frame in progress must be able to end
            side.other.finish_if_at_boundary()

    def abort(self) -> None:
        for side in (self.client, self.upstream):
            if not side.lost:
                side.transport.abort()

    # -- used by _Side
    def touched(self) -> None:
        self._active = self._loop.time()

    def closing_frame(self, masked: bool) -> bytes | None:
        if self._closing is None:
            return None
        code, reason = self._closing
        return close_frame(code, reason, masked=masked)

    def side_lost(self, side: _Side, exc: Exception | None) -> None:
        self.reason = self.reason or ("client" if side is self.client else "upstream")
        other = side.other
        if not other.lost:
            other.transport.close()  # after what it still has to write
        if side is self.client:
            self._before.connection_lost(exc)
        if self.client.lost and self.upstream.lost and not self.closed.done():
            if self._timer is not None:
                self._timer.cancel()
            self._metrics.tunnels_open.dec()
            self._metrics.tunnels_closed.labels(reason=self.reason).inc()
            self.closed.set_result(self.reason)

    def _on_idle_timer(self) -> None:
        self._timer = None
        idle = self._loop.time() - self._active
        if idle >= self._idle_timeout:
            self.close(GOING_AWAY, IDLE_REASON, why="idle")
        else:
            self._timer = self._loop.call_later(self._idle_timeout - idle, self._on_idle_timer)


class _Side(asyncio.Protocol):
    """One connection of a tunnel: what it reads goes to ``other``. ``boundary`` follows
    the frames written *to* this side, where a close frame of ours may go."""

    other: _Side

    def __init__(
        self, tunnel: Tunnel, transport: asyncio.Transport, direction: str, *, masked: bool
    ) -> None:
        self._tunnel = tunnel
        self.transport = transport
        self._bytes = tunnel._metrics.tunnel_bytes.labels(direction=direction)
        self.masked = masked  # frames to this side are masked (it is the upstream)
        self.boundary = FrameBoundary()
        self.lost = False
        self.finished = False  # our close frame is written, or the side is being closed

    def data_received(self, data: bytes) -> None:
        tunnel = self._tunnel
        tunnel.touched()
        self._bytes.inc(len(data))
        other = self.other
        if other.finished or other.lost:
            return
        if tunnel._closing is not None:
            # Closing: only the rest of the frame in progress may still go.
            end = other.boundary.until_boundary(data)
            if end is not None:
                data = data[:end]
            other.transport.write(data)
            other.boundary.feed(data)
            other.finish_if_at_boundary()
            return
        other.transport.write(data)
        other.boundary.feed(data)

    def finish_if_at_boundary(self) -> None:
        """Closing: once the frames written to this side are whole, our close frame goes
        and the connection closes behind it."""
        if self.finished or self.lost or not self.boundary.at_boundary:
            return
        self.finished = True
        frame = self._tunnel.closing_frame(self.masked)
        if frame is not None:
            self.transport.write(frame)
        self.transport.close()

    def eof_received(self) -> bool:
        return False  # a half-closed side ends the tunnel: close the transport

    def pause_writing(self) -> None:
        if not self.other.lost:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.other.lost:
            _resume(self.other.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._tunnel.side_lost(self, exc)


def _resume(transport: asyncio.Transport) -> None:
    if not transport.is_closing():
        transport.resume_reading()
