"""The worker's write coalescing: one send per loop turn, order kept, nothing lost on close."""

from __future__ import annotations

import asyncio

from mlops.serve.http import CoalescedWrites, EndpointHttpProtocol, EndpointWorker


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1234) if name == "peername" else default


def test_writes_of_one_turn_leave_as_one_write_in_order() -> None:
    async def scenario() -> list[bytes]:
        real = RecordingTransport()
        proxy = CoalescedWrites(real, asyncio.get_running_loop())
        proxy.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        proxy.write(b"{}")
        assert real.writes == []  # nothing sent before the turn ends
        assert proxy.get_write_buffer_size() == 7 + 40
        await asyncio.sleep(0)
        proxy.writelines([b"a", b"b"])
        await asyncio.sleep(0)
        return real.writes

    assert asyncio.run(scenario()) == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", b"ab"]


def test_close_flushes_first_and_later_turns_do_not_write_to_a_closed_transport() -> None:
    async def scenario() -> RecordingTransport:
        real = RecordingTransport()
        proxy = CoalescedWrites(real, asyncio.get_running_loop())
        proxy.write(b"last answer")
        proxy.close()
        await asyncio.sleep(0)  # the scheduled flush finds nothing left
        return real

    real = asyncio.run(scenario())
    assert real.writes == [b"last answer"] and real.closed


def test_other_transport_calls_reach_the_real_transport() -> None:
    proxy = CoalescedWrites(RecordingTransport(), asyncio.new_event_loop())
    assert proxy.get_extra_info("peername") == ("127.0.0.1", 1234)
    assert proxy.is_closing() is False


def test_worker_uses_the_coalescing_protocol_on_uvloop() -> None:
    assert EndpointWorker.CONFIG_KWARGS["http"] is EndpointHttpProtocol
    assert EndpointWorker.CONFIG_KWARGS["loop"] == "uvloop"
