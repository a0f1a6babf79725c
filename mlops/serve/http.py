"""The endpoint's HTTP layer: uvicorn workers inside gunicorn, on uvloop and httptools, one send per response.

uvicorn writes a response's status line + headers and its body with two ``transport.write`` calls, so every
request costs two ``send`` syscalls and two loopback segments, and the client wakes up twice. On a small JSON
answer that is a large share of the server's CPU (perf: ~29% of it in the transport writes), so the worker's
protocol coalesces the writes of one event-loop turn into one.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker


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

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:  # is_closing, abort, get_extra_info, pause_reading, ...
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through :class:`CoalescedWrites`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescedWrites(transport, self.loop))  # type: ignore[arg-type]


class EndpointWorker(UvicornWorker):
    """uvicorn inside gunicorn, pinned to the C event loop and parser; no lifespan or proxy-header handling,
    which this loopback endpoint does not use and every request would otherwise pay for."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {"loop": "uvloop", "http": CoalescingHttpToolsProtocol, "lifespan": "off",
                     "proxy_headers": False, "server_header": False}
