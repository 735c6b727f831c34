"""Expect: 100-continue answered only once the request is authorised (RFC 9110 §10.1.1).

aiohttp's default expect handler says "100 Continue" before any handler runs, which
would invite an unauthenticated client to upload its body. Ours only rejects unknown
expectations; handlers call ``send_continue`` after they have decided to read the body.
"""

from __future__ import annotations

from aiohttp import HttpVersion11, web

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


async def defer_continue(request: web.Request) -> None:
    """expect_handler for every route: 417 for anything but 100-continue, nothing else."""
    expect = request.headers.get("Expect")
    if expect is not None and expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text="Only 'Expect: 100-continue' is understood.")


async def send_continue(request: web.Request) -> None:
    """Tell a waiting client to send its body; a no-op unless it asked to wait."""
    if (
        request.version >= HttpVersion11
        and request.headers.get("Expect", "").lower() == "100-continue"
    ):
        await request.writer.write(_CONTINUE)
        request.writer.output_size = 0  # the response proper has not started
