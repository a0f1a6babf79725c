"""The endpoint's HTTP layer: uvicorn workers inside gunicorn, on uvloop and httptools, one send per response,
bounded request heads.

uvicorn's httptools protocol puts no limit on the request line or the headers (a 1 MB header or 100,000 header
fields were answered 200), so the worker's protocol refuses a request line over MAX_URL_BYTES with a 414 and a
head over MAX_HEAD_BYTES or MAX_HEADER_FIELDS with a 431, counted as the bytes arrive; its malformed-request
answer is the endpoint's JSON error instead of uvicorn's plain text. uvicorn writes a response's status line + headers and its body with two ``transport.write`` calls, so every
request costs two ``send`` syscalls and two loopback segments, and the client wakes up twice. On a small JSON
answer that is a large share of the server's CPU (perf: ~29% of it in the transport writes), so the worker's
protocol coalesces the writes of one event-loop turn into one.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

MAX_URL_BYTES = 8 * 1024
MAX_HEAD_BYTES = 64 * 1024  # request line + headers; gunicorn's defaults allow about 100 x 8 KB
MAX_HEADER_FIELDS = 100  # gunicorn's limit_request_fields default
DRAIN_BYTES = 2 * 1024 * 1024  # after a refusal, read and drop this much so the client gets to read the answer
DRAIN_SECONDS = 5.0


class _HeadRefused(Exception):
    """Stops httptools mid-request; the protocol answers with the status already chosen."""


class CoalescedWrites:
    """Transport proxy: the writes made in one loop turn go out as one ``write`` at the end of the turn.

    Order is kept (everything goes through the proxy), ``close`` flushes first, and flow control sees the
    pending bytes; everything else is the real transport's.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def _flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:  # is_closing, abort, get_extra_info, pause_reading, ...
        return getattr(self._transport, name)


class EndpointHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through :class:`CoalescedWrites`, with bounded request heads and JSON
    errors for requests that never reach the app."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._in_head = False
        self._head_bytes = 0
        self._fields = 0
        self._refusal: tuple[int, str] | None = None
        self._drain_left: int | None = None
        super().connection_made(CoalescedWrites(transport, self.loop))  # type: ignore[arg-type]

    def _refuse(self, status: int, message: str) -> None:
        """Answer JSON, end our side, and drop what the client still sends for a while before closing.

        Closing with unread data in the socket makes the kernel reset the connection, and a client still
        sending its oversized head would then lose the answer; DRAIN_BYTES / DRAIN_SECONDS bound the courtesy.
        """
        if self._drain_left is not None:
            return
        body = json.dumps({"error": message, "status": status}).encode()
        reason = {400: b"Bad Request", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}[status]
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, reason, len(body), body))
        self._drain_left = DRAIN_BYTES
        try:
            self.transport.write_eof()
        except (AttributeError, NotImplementedError, OSError, RuntimeError):
            self.transport.close()
            return
        self.loop.call_later(DRAIN_SECONDS, self.transport.close)

    def _stop(self, status: int, message: str) -> None:
        self._refusal = (status, message)
        raise _HeadRefused(message)

    def send_400_response(self, msg: str) -> None:  # uvicorn calls it when the parser fails, our stops included
        if self._refusal is not None:
            self._refuse(*self._refusal)
        else:
            self._refuse(400, "malformed HTTP request: the request line or headers do not parse")

    def data_received(self, data: bytes) -> None:
        if self._drain_left is not None:  # refused: the rest of the request is read and dropped
            self._drain_left -= len(data)
            if self._drain_left <= 0:
                self.transport.close()
            return
        super().data_received(data)
        if self._in_head and self._drain_left is None:  # a head still incomplete after this chunk
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(431, f"request line and headers exceed {MAX_HEAD_BYTES} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes, self._fields = True, 0, 0

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > MAX_URL_BYTES:
            self._stop(414, f"request target exceeds {MAX_URL_BYTES} bytes")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > MAX_HEADER_FIELDS:
            self._stop(431, f"more than {MAX_HEADER_FIELDS} header fields")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_bytes + len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers) > MAX_HEAD_BYTES:
            self._stop(431, f"request line and headers exceed {MAX_HEAD_BYTES} bytes")
        super().on_headers_complete()


class EndpointWorker(UvicornWorker):
    """uvicorn inside gunicorn, pinned to the C event loop and parser; no lifespan or proxy-header handling,
    which this loopback endpoint does not use and every request would otherwise pay for."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {"loop": "uvloop", "http": EndpointHttpProtocol, "lifespan": "off",
                     "proxy_headers": False, "server_header": False}
