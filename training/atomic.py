"""Write outputs so that a failed job leaves nothing half-written behind.

Files go to a temporary sibling first and are renamed into place only when the work succeeded;
``os.replace`` is atomic on one filesystem, so readers see the old file or the new one, never a part.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def staged_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder to write outputs in; on success move its entries into ``target``.

    On any exception the temporary folder is removed and ``target`` is left as it was. Safe when ``target``, or
    folders in it, are mount points, as SageMaker mounts /opt/ml/model and every processing output path: the
    temporary folder is made inside ``target`` (so on its filesystem), folders that already exist are refilled,
    never removed or renamed, and a move that still crosses filesystems (into a mounted folder) copies to a
    temporary name on the far side, then renames.
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        for entry in sorted(staging.iterdir()):
            _put(entry, target / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _put(source: Path, destination: Path) -> None:
    """Move ``source`` to ``destination``, replacing what is there without removing existing folders."""
    if source.is_dir() and destination.is_dir():
        wanted = {child.name for child in source.iterdir()}
        for child in destination.iterdir():
            if child.name not in wanted and not child.name.startswith(".staging-"):
                _remove(child)
        for child in sorted(source.iterdir()):
            _put(child, destination / child.name)
        return
    if destination.is_dir() and not destination.is_symlink():
        _remove(destination)
    try:
        os.replace(source, destination)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_across(source, destination)


def _copy_across(source: Path, destination: Path) -> None:
    """The same move between filesystems: copy beside the destination, then rename there."""
    temporary = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    try:
        if source.is_dir():
            shutil.copytree(source, temporary, symlinks=True)
        else:
            shutil.copy2(source, temporary)
        os.replace(temporary, destination)
    except BaseException:
        _remove(temporary)
        raise


def _remove(path: Path) -> None:
    if os.path.ismount(path):  # a mount point cannot be removed (EBUSY): empty it instead
        for child in path.iterdir():
            _remove(child)
    elif path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
