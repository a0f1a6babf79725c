"""Processing job: raw IDX images -> normalized, stratified train/validation split plus test.

Reads ``<train-prefix>-{images,labels}`` and ``<test-prefix>-{images,labels}`` IDX files (gzip or raw)
from the input folder, checks ``SHA256SUMS`` when present, and writes ``<output>/{train,validation,test}/``
each with ``<split>.npz`` (float32 images normalized with the training split's mean/std, int64 labels)
and the same ``manifest.json`` (counts per class, class names, normalization, checksums).

Paths default to the processing container's; the local executor maps them to folders.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a job script: make the `training` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from sklearn.model_selection import train_test_split

from training.atomic import staged_dir
from training.datasets import (
    MANIFEST_FILE,
    SPLIT_FILE,
    DatasetError,
    Split,
    find_idx_pair,
    read_idx_split,
    sha256_file,
    verify_checksums,
)
from training.formats import FORMATS, RawDataset, detect_format, read_cifar10, read_image_folder, unpack_input

LOG = logging.getLogger("preprocess")
SPLITS = ("train", "validation", "test")
DEFAULT_FOLDER_IMAGE_SIZE = 32


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-dir", default="/opt/ml/processing/input/raw")
    parser.add_argument("--output-dir", default="/opt/ml/processing/output")
    parser.add_argument("--train-prefix", default="train")
    parser.add_argument("--test-prefix", default="t10k")
    parser.add_argument("--validation-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--class-names", default="0,1,2,3,4,5,6,7,8,9",
                        help="comma-separated names, one per class index")
    parser.add_argument("--max-train-samples", type=int, default=0,
                        help="stratified subset of the training file before the split (0 = all)")
    parser.add_argument("--max-test-samples", type=int, default=0, help="stratified subset of the test file (0 = all)")
    parser.add_argument("--dataset-name", default="mnist")
    parser.add_argument("--data-format", default="auto", choices=["auto", *FORMATS],
                        help="idx, cifar10, image-folder, or auto (detect)")
    parser.add_argument("--image-size", type=int, default=0,
                        help="resize images to this square size (0: keep idx/cifar10 sizes, 32 for image folders)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="stratified test share of an image folder without test/")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.class_names.split(",")]
    if len(names) != args.num_classes or any(not n for n in names):
        parser.error(f"--class-names has {len(names)} names, expected {args.num_classes} non-empty names")
    if not 0.0 < args.validation_fraction < 1.0:
        parser.error(f"--validation-fraction must be between 0 and 1 (exclusive), got {args.validation_fraction}")
    if not 0.0 < args.test_fraction < 1.0:
        parser.error(f"--test-fraction must be between 0 and 1 (exclusive), got {args.test_fraction}")
    if args.image_size < 0 or 0 < args.image_size < 8:
        parser.error(f"--image-size must be 0 (keep) or at least 8, got {args.image_size}")
    args.class_names = names
    return args


def stratified_subset(split: Split, size: int, seed: int, what: str) -> Split:
    """Keep ``size`` examples with the class proportions of the whole split (0 or >= len keeps all)."""
    if size <= 0 or size >= len(split):
        return split
    try:
        keep, _ = train_test_split(np.arange(len(split)), train_size=size, stratify=split.labels, random_state=seed)
    except ValueError as exc:
        raise DatasetError(f"cannot take a stratified subset of {size} from the {what} data: {exc}") from exc
    keep.sort()
    return Split(split.images[keep], split.labels[keep])


def split_train_validation(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    try:
        train_idx, val_idx = train_test_split(
            np.arange(len(split)), test_size=fraction, stratify=split.labels, random_state=seed
        )
    except ValueError as exc:
        raise DatasetError(
            f"cannot split {len(split)} training examples with validation fraction {fraction} "
            f"stratified over {len(np.unique(split.labels))} classes: {exc}"
        ) from exc
    train_idx.sort()
    val_idx.sort()
    return Split(split.images[train_idx], split.labels[train_idx]), Split(split.images[val_idx], split.labels[val_idx])


def class_counts(labels: np.ndarray, class_names: list[str]) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(class_names))
    return {name: int(c) for name, c in zip(class_names, counts, strict=True)}


def read_idx_dataset(folder: Path, args: argparse.Namespace) -> RawDataset:
    train_images, train_labels = find_idx_pair(folder, args.train_prefix)
    test_images, test_labels = find_idx_pair(folder, args.test_prefix)
    train = read_idx_split(train_images, train_labels, args.num_classes)
    test = read_idx_split(test_images, test_labels, args.num_classes)
    if train.images.shape[1:] != test.images.shape[1:]:
        raise DatasetError(
            f"{test_images}: image shape {test.images.shape[1:]} differs from {train_images} {train.images.shape[1:]}"
        )
    return RawDataset(train, test, args.class_names, [train_images, train_labels, test_images, test_labels])


def resize_split(split: Split, size: int) -> Split:
    """Resize uint8 (N, H, W) or (N, C, H, W) images to ``size`` squared (bilinear); unchanged when equal."""
    if size <= 0 or split.images.shape[-1] == size == split.images.shape[-2]:
        return split
    from PIL import Image

    def one(image: np.ndarray) -> np.ndarray:
        if image.ndim == 2:
            return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
        return np.stack([one(channel) for channel in image])

    return Split(np.stack([one(image) for image in split.images.astype(np.uint8)]), split.labels)


def check_class_sizes(labels: np.ndarray, class_names: list[str], needed: int, where: Path, why: str) -> None:
    counts = np.bincount(labels, minlength=len(class_names))
    for name, count in zip(class_names, counts, strict=True):
        if count < needed:
            raise DatasetError(f"{where / name}: class {name!r} has {count} images, at least {needed} needed {why}")


def read_dataset(folder: Path, args: argparse.Namespace) -> tuple[str, RawDataset, Split]:
    """Read the input in its format; returns (format, dataset, test split), the test split taken when absent."""
    fmt = detect_format(folder) if args.data_format == "auto" else args.data_format
    if fmt == "idx":
        data = read_idx_dataset(folder, args)
    elif fmt == "cifar10":
        data = read_cifar10(folder)
    else:
        data = read_image_folder(folder, args.image_size or DEFAULT_FOLDER_IMAGE_SIZE)
    if fmt != "image-folder":
        data = RawDataset(resize_split(data.train, args.image_size), resize_split(data.test, args.image_size),
                          data.class_names, data.source_files)
    test = data.test
    if test is None:
        # 1 test, 1 validation, 1 training image per class at least
        check_class_sizes(data.train.labels, data.class_names, 3, folder / "train",
                          "for the stratified test and validation splits (no test/ folder)")
        try:
            train_idx, test_idx = train_test_split(np.arange(len(data.train)), test_size=args.test_fraction,
                                                   stratify=data.train.labels, random_state=args.seed)
        except ValueError as exc:
            raise DatasetError(f"{folder / 'train'}: cannot take a stratified test split of {args.test_fraction} "
                               f"from {len(data.train)} images over {len(data.class_names)} classes: {exc}") from exc
        train_idx.sort()
        test_idx.sort()
        test = Split(data.train.images[test_idx], data.train.labels[test_idx])
        data = RawDataset(Split(data.train.images[train_idx], data.train.labels[train_idx]), test,
                          data.class_names, data.source_files)
    else:
        check_class_sizes(data.train.labels, data.class_names, 2, folder / "train",
                          "for the stratified validation split")
    return fmt, data, test


def run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    input_dir, output_dir = Path(args.input_dir), Path(args.output_dir)
    source_sums = verify_checksums(input_dir) if input_dir.is_dir() else {}
    with tempfile.TemporaryDirectory(prefix="preprocess-input-") as scratch:
        folder = unpack_input(input_dir, Path(scratch))
        fmt, data, test = read_dataset(folder, args)
        source_files = {str(p.relative_to(folder)): source_sums.get(p.name) or sha256_file(p)
                        for p in data.source_files}
        if folder != input_dir:  # an archive: its own checksum is the provenance
            source_files = {p.name: source_sums.get(p.name) or sha256_file(p) for p in input_dir.iterdir()
                            if p.is_file() and p.name != "SHA256SUMS"} | source_files
    return write_splits(args, output_dir, fmt, data, test, source_files, started)


def write_splits(args: argparse.Namespace, output_dir: Path, fmt: str, data: RawDataset, test: Split,
                 source_files: dict[str, str], started: float) -> dict:
    class_names = data.class_names
    full_train = stratified_subset(data.train, args.max_train_samples, args.seed, "training")
    test = stratified_subset(test, args.max_test_samples, args.seed, "test")
    train, validation = split_train_validation(full_train, args.validation_fraction, args.seed)

    pixels = train.images.astype(np.float32) / 255.0
    mean, std = float(pixels.mean()), float(pixels.std())
    if std <= 0:
        raise DatasetError("training images have zero variance; cannot normalize")
    splits = {"train": train, "validation": validation, "test": test}
    for name, split in splits.items():
        if len(split) == 0:
            raise DatasetError(f"split '{name}' is empty after splitting (expected at least one example)")

    manifest: dict = {
        "dataset": args.dataset_name if fmt == "idx" else fmt,
        "format": fmt,
        "num_classes": len(class_names),
        "class_names": class_names,
        "image_shape": list(train.images.shape[1:]),
        "normalization": {"scale": 1.0 / 255.0, "mean": mean, "std": std},
        "seed": args.seed,
        "validation_fraction": args.validation_fraction,
        "source_files": source_files,
        "splits": {},
    }
    with staged_dir(output_dir) as staging:
        for name, split in splits.items():
            folder = staging / name
            folder.mkdir()
            path = folder / SPLIT_FILE.format(name=name)
            normalized = ((split.images.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
            np.savez_compressed(path, images=normalized, labels=split.labels)
            manifest["splits"][name] = {
                "file": f"{name}/{path.name}",
                "count": len(split),
                "class_counts": class_counts(split.labels, class_names),
                "sha256": sha256_file(path),
            }
            LOG.info("%s: %d examples -> %s", name, len(split), path.name)
        text = json.dumps(manifest, indent=2) + "\n"
        for name in SPLITS:
            (staging / name / MANIFEST_FILE).write_text(text)
    LOG.info("preprocess finished in %.1f s (mean %.4f, std %.4f)", time.perf_counter() - started, mean, std)
    return manifest


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        run(args)
    except DatasetError as exc:
        LOG.error("%s", exc)
        print(f"preprocess failed: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
