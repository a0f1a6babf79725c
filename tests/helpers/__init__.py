"""Test helpers: real small models and datasets, the sample pipeline and its jobs, job-process runners."""

import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MNIST_DIR = ROOT / "data" / "mnist"


def write_files(root: Path, files: dict[str, str]) -> None:
    """Write ``{relative path: text}`` under ``root``, creating folders."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
