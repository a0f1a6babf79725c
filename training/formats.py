"""Dataset formats beyond IDX: CIFAR-10 (binary and python archives) and image folders, plus detection.

Every reader returns a :class:`RawDataset`: uint8 images, (N, H, W) for grayscale or (N, 3, H, W) for colour,
integer labels and the class names. Input is untrusted: archives are extracted with tarfile's ``data`` filter,
symlinks and ``..`` that leave the dataset are refused, and CIFAR's python pickles go through
:class:`RestrictedUnpickler`, never a plain ``pickle.load``. Each problem raises
:class:`~training.datasets.DatasetError` naming the file.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.datasets import DatasetError, Split

FORMATS = ("idx", "cifar10", "image-folder")
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_RECORD = 1 + 3 * 32 * 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


@dataclass(frozen=True)
class RawDataset:
    """A dataset as read: uint8 images, a test split when the data has one, class names and the files read."""

    train: Split
    test: Split | None
    class_names: list[str]
    source_files: list[Path]


# ------------------------------------------------------------------ safety: paths, archives

def check_inside(root: Path) -> None:
    """Refuse any entry under ``root`` whose real path (through symlinks or ``..``) leaves ``root``."""
    base = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            real = path.resolve()
            if real != base and base not in real.parents:
                raise DatasetError(f"{path}: resolves to {real}, outside the dataset folder {base} "
                                   "(symlinks and '..' must stay inside the dataset)")


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def extract_archive(archive: Path, destination: Path) -> Path:
    """Extract a tar(.gz) archive with the ``data`` filter (no absolute paths, no ``..``, no links out)."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(destination, filter="data")
    except tarfile.FilterError as exc:
        raise DatasetError(f"{archive}: member {getattr(exc, 'tarinfo', None) and exc.tarinfo.name!r} "
                           f"would escape the extraction folder ({exc})") from exc
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DatasetError(f"{archive}: corrupt or truncated archive ({exc})") from exc
    check_inside(destination)
    return destination


# ------------------------------------------------------------------ CIFAR-10

_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's python batches: dicts, lists, bytes and numpy arrays; any other global is refused."""

    def __init__(self, file: io.BufferedIOBase, source: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) not in _NUMPY_GLOBALS:
            raise DatasetError(f"{self.source}: the pickle references the global {module}.{name}, which a CIFAR-10 "
                               f"batch never needs (allowed: {sorted(f'{m}.{n}' for m, n in _NUMPY_GLOBALS)})")
        if name in ("ndarray", "dtype"):
            return getattr(np, name)
        try:
            from numpy._core import multiarray  # numpy.core is an alias of numpy._core since numpy 2
        except ImportError:  # numpy 1.x
            from numpy.core import multiarray

        return getattr(multiarray, name)


def load_pickle(path: Path) -> object:
    try:
        with path.open("rb") as handle:
            return RestrictedUnpickler(handle, path).load()
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"{path}: not a readable CIFAR-10 python batch ({type(exc).__name__}: {exc})") from exc


def _get(batch: dict, key: str, path: Path) -> object:
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise DatasetError(f"{path}: batch has no {key!r} entry (found {sorted(map(str, batch))})")


def _read_python_batch(path: Path) -> Split:
    batch = load_pickle(path)
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: expected a dict batch, found {type(batch).__name__}")
    data = np.asarray(_get(batch, "data", path))
    labels = np.asarray(_get(batch, "labels", path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DatasetError(f"{path}: expected data uint8 (N, 3072) and N labels, found {data.dtype} {data.shape} "
                           f"and {len(labels)} labels")
    return Split(data.reshape(-1, 3, 32, 32), labels)


def _read_binary_batch(path: Path) -> Split:
    raw = path.read_bytes()
    if not raw or len(raw) % CIFAR_RECORD:
        raise DatasetError(f"{path}: {len(raw)} bytes is not a whole number of {CIFAR_RECORD}-byte CIFAR-10 records "
                           "(truncated or corrupt)")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    return Split(records[:, 1:].reshape(-1, 3, 32, 32).copy(), records[:, 0].astype(np.int64))


def _cifar_folder(root: Path) -> Path | None:
    for folder in (root, *sorted(p for p in root.rglob("*") if p.is_dir())):
        if any(folder.glob("data_batch_*")):
            return folder
    return None


def _concat(parts: list[Split]) -> Split:
    return Split(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))


def read_cifar10(root: Path) -> RawDataset:
    """Read ``data_batch_N[.bin]`` and ``test_batch[.bin]`` (binary or python archive) under ``root``."""
    folder = _cifar_folder(root)
    if folder is None:
        raise DatasetError(f"{root}: no CIFAR-10 data_batch_* files found (expected the binary or python archive)")
    batches = sorted(folder.glob("data_batch_*"), key=lambda p: p.name)
    binary = all(p.suffix == ".bin" for p in batches)
    reader = _read_binary_batch if binary else _read_python_batch
    test_path = folder / ("test_batch.bin" if binary else "test_batch")
    if not test_path.is_file():
        raise DatasetError(f"{test_path}: missing test batch beside {batches[0]}")
    train, test = _concat([reader(p) for p in batches]), reader(test_path)
    names = list(CIFAR10_NAMES)
    meta_txt, meta_py = folder / "batches.meta.txt", folder / "batches.meta"
    if binary and meta_txt.is_file():
        names = [line.strip() for line in meta_txt.read_text().splitlines() if line.strip()]
    elif not binary and meta_py.is_file():
        meta = load_pickle(meta_py)
        if isinstance(meta, dict):
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in _get(meta, "label_names", meta_py)]
    for split, path in ((train, batches[0]), (test, test_path)):
        bad = (split.labels < 0) | (split.labels >= len(names))
        if bad.any():
            raise DatasetError(f"{path}: label {int(split.labels[bad][0])} outside 0..{len(names) - 1}")
    sources = [*batches, test_path] + [p for p in (meta_txt, meta_py) if p.is_file()]
    return RawDataset(train, test, names, sources)


# ------------------------------------------------------------------ image folders

def _class_folders(split_dir: Path) -> dict[str, list[Path]]:
    classes: dict[str, list[Path]] = {}
    for folder in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DatasetError(f"{folder}: class folder holds no .png/.jpg images (expected at least one)")
        classes[folder.name] = images
    if not classes:
        raise DatasetError(f"{split_dir}: no class folders (expected {split_dir.name}/<class>/*.png|jpg)")
    return classes


def _load_image(path: Path, size: int, mode: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            pixels = image.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"{path}: unreadable image ({exc})") from exc
    array = np.asarray(pixels, dtype=np.uint8)
    return array if mode == "L" else array.transpose(2, 0, 1)


def _image_mode(paths: list[Path]) -> str:
    from PIL import Image, UnidentifiedImageError

    for path in paths:
        try:
            with Image.open(path) as image:
                if image.mode not in ("1", "L", "LA", "I", "I;16", "F"):
                    return "RGB"
        except (UnidentifiedImageError, OSError) as exc:
            raise DatasetError(f"{path}: unreadable image ({exc})") from exc
    return "L"


def read_image_folder(root: Path, image_size: int) -> RawDataset:
    """``train/<class>/*.png|jpg`` and an optional ``test/<class>/``; all resized to ``image_size`` squared.

    Grayscale when every image is grayscale, else RGB. Class names are the train folder names, sorted.
    """
    train_dir, test_dir = root / "train", root / "test"
    if not train_dir.is_dir():
        raise DatasetError(f"{root}: no train/ folder (expected train/<class>/*.png|jpg)")
    train_classes = _class_folders(train_dir)
    test_classes = _class_folders(test_dir) if test_dir.is_dir() else {}
    extra = sorted(set(test_classes) - set(train_classes))
    if extra:
        raise DatasetError(f"{test_dir / extra[0]}: class {extra[0]!r} appears only in test (train has "
                           f"{sorted(train_classes)})")
    names = sorted(train_classes)
    all_paths = [p for group in (train_classes, test_classes) for paths in group.values() for p in paths]
    mode = _image_mode(all_paths)

    def load(classes: dict[str, list[Path]]) -> Split:
        images, labels = [], []
        for index, name in enumerate(names):
            for path in classes.get(name, []):
                images.append(_load_image(path, image_size, mode))
                labels.append(index)
        return Split(np.stack(images), np.asarray(labels, dtype=np.int64))

    return RawDataset(load(train_classes), load(test_classes) if test_classes else None, names, all_paths)


# ------------------------------------------------------------------ detection

def detect_format(root: Path) -> str:
    """``idx`` when IDX files are there, ``cifar10`` for data_batch_* files, ``image-folder`` for train/<class>/."""
    if any(re.search(r"-idx\d-ubyte(\.gz)?$", p.name) for p in root.iterdir() if p.is_file()):
        return "idx"
    if _cifar_folder(root) is not None:
        return "cifar10"
    if (root / "train").is_dir():
        return "image-folder"
    raise DatasetError(f"{root}: cannot detect the dataset format (no *-idx3-ubyte files, no CIFAR-10 data_batch_*, "
                       f"no train/<class>/ folder); found {sorted(p.name for p in root.iterdir())[:10]}")


def unpack_input(input_dir: Path, workdir: Path) -> Path:
    """The folder to read: ``input_dir`` itself, or its single archive extracted safely under ``workdir``."""
    if not input_dir.is_dir():
        raise DatasetError(f"{input_dir}: input folder does not exist")
    check_inside(input_dir)
    archives = [p for p in input_dir.iterdir() if is_archive(p)]
    others = [p for p in input_dir.iterdir() if p not in archives and p.name != "SHA256SUMS"]
    if len(archives) == 1 and not others:
        return _single_child(extract_archive(archives[0], workdir))
    if len(archives) > 1 and not others:
        raise DatasetError(f"{input_dir}: {len(archives)} archives ({sorted(p.name for p in archives)}); "
                           "expected one")
    return _single_child(input_dir)


def _single_child(folder: Path) -> Path:
    entries = [p for p in folder.iterdir() if not p.name.startswith(".") and p.name != "SHA256SUMS"]
    if len(entries) == 1 and entries[0].is_dir() and not (folder / "train").is_dir():
        inner = entries[0]
        if (inner / "train").is_dir() or any(inner.glob("*-idx?-ubyte*")):
            return inner
    return folder
