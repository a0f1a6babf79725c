"""A corpus of bad requests for the inference handlers and the endpoint, with the status each must get."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
from PIL import Image

from inference import inference as h
from tests.helpers.models import digit_png


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height: what a decompression bomb looks like before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npy_object_array() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def _big_bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buffer, format="PNG")  # 25 Mpx, a few KB on the wire
    return buffer.getvalue()


BAD_INPUTS = [
    ("unsupported type", b"hello", "text/plain", 415),
    ("no content type", b"[1]", None, 415),
    ("bad json", b"{not json", "application/json", 400),
    ("json wrong shape", json.dumps([[1, 2], [3, 4]]).encode(), "application/json", 400),
    ("json ragged", json.dumps([[1, 2], [3]]).encode(), "application/json", 400),
    ("json strings", json.dumps([["a"] * 28] * 28).encode(), "application/json", 400),
    ("json NaN", ("[" + ",".join(["NaN"] + ["0"] * 783) + "]").encode(), "application/json", 400),
    ("json out of range", json.dumps([300] * 784).encode(), "application/json", 400),
    ("json object without key", json.dumps({"pixels": [0] * 784}).encode(), "application/json", 400),
    ("json empty batch", b"[]", "application/json", 400),
    ("npy pickle", _npy_object_array(), "application/x-npy", 400),
    ("npy garbage", b"\x93NUMPY garbage", "application/x-npy", 400),
    ("csv wrong width", b"1,2,3\n", "text/csv", 400),
    ("csv text", ("a," * 783 + "b").encode(), "text/csv", 400),
    ("png undecodable", b"\x89PNG\r\n\x1a\nnot really", "image/png", 400),
    ("png sent as jpeg", digit_png(np.zeros((28, 28), np.uint8)), "image/jpeg", 400),
    ("empty body", b"", "image/png", 400),
    ("bomb header", png_header_only(30000, 30000), "image/png", 413),
    ("bomb just over limit", png_header_only(4500, 4500), "image/png", 413),
    ("bomb real", _big_bomb(), "image/png", 413),
    ("body over 6 MB", b"0" * (h.MAX_BODY_BYTES + 1), "text/csv", 413),
    ("npy raw bytes", np.zeros((2, 784), np.uint8).tobytes(), "application/x-npy", 400),
    ("npy batch over limit", _npy(np.zeros((h.MAX_BATCH + 1, 784), np.uint8)), "application/x-npy", 413),
    ("npy complex", _npy(np.zeros((28, 28), np.complex64)), "application/x-npy", 400),
]


def _npy_header_declaring(shape: tuple[int, ...], dtype: str = "<f8") -> bytes:
    """A .npy whose header declares ``shape`` but carries only a few bytes: allocating it would take GiBs."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 64


BAD_INPUTS += [
    ("json 10000 deep", b"[" * 10_000 + b"]" * 10_000, "application/json", 400),
    ("json deep object", b'{"a":' * 5_000 + b"0" + b"}" * 5_000, "application/json", 400),
    ("json too many elements", ("[" + ",".join(["0"] * (h.MAX_JSON_ELEMENTS + 1)) + "]").encode(),
     "application/json", 413),
    ("json numeric strings", json.dumps([["0", "255"] * 14] * 28).encode(), "application/json", 400),
    ("json booleans", json.dumps([[True] * 28] * 28).encode(), "application/json", 400),
    ("json nulls", json.dumps([None] * 784).encode(), "application/json", 400),
    ("json scalar", b"7", "application/json", 400),
    ("npy header declares 74.5 GiB", _npy_header_declaring((100_000, 100_000)), "application/x-npy", 413),
    ("npy header declares more than sent", _npy_header_declaring((28, 28)), "application/x-npy", 400),
    ("npy header overflowing shape", _npy_header_declaring((2**62, 2**62)), "application/x-npy", 413),
    ("npy object dtype header", _npy_header_declaring((28, 28), "|O"), "application/x-npy", 400),
    ("image type gif", b"GIF89a\x01\x00\x01\x00", "image/gif", 415),
    ("webp undecodable", b"RIFF\x10\x00\x00\x00WEBPVP8 nope", "image/webp", 400),
]
BAD_INPUTS += [
    ("csv stray carriage return", b"1,\x12\n\r,145", "text/csv", 400),  # csv.Error, found by the fuzzer
    ("npy header unterminated", b"\x93NUMPY\x01\x00v\x00\x00'descr': '|u1', 'shape': (28, 28), }" + b" " * 60 + b"\n",
     "application/x-npy", 400),  # tokenize.TokenError, found by the fuzzer
]
