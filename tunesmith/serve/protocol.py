"""uvicorn's h11 protocol with a deadline for a request's headers.

uvicorn times out idle keep-alive connections but not a client that connects and never finishes its
request line and headers (slowloris): each such connection would be held forever, and enough of them
exhaust the connection limit. Here a request's headers must be complete within `seconds` of the
connection opening (or of the first bytes of the next request on a kept-alive connection); otherwise the
client gets a 408 and the connection is closed. The body has its own deadline (guard.py).
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def with_header_deadline(seconds: float, on_late=lambda: None) -> type[H11Protocol]:
    body = json.dumps(
        {"error": {"message": f"the request headers did not arrive within {seconds:g}s", "type": "timeout"}}
    ).encode()
    late = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )

    class HeaderDeadline(H11Protocol):
        _deadline = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._deadline = self.loop.call_later(seconds, self._too_late)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            waiting = self.conn.their_state is h11.IDLE  # the next request's headers are not complete yet
            if waiting and self._deadline is None:
                self._deadline = self.loop.call_later(seconds, self._too_late)
            elif not waiting and self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def connection_lost(self, exc) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            super().connection_lost(exc)

        def _too_late(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.write(late)
                self.transport.close()
                on_late()

    return HeaderDeadline
