"""The XGBoost baseline's features: pixels, area-downsampled to at most 32x32 per channel for large images.

Trees on every pixel of a 224x224 colour image (150,528 columns) are slow to fit and no better than on a
thumbnail, so images larger than :data:`MAX_SIDE` on a side are reduced by area averaging: each output pixel is
the mean of the input area it covers (a plain block mean when the size divides evenly, fractional overlaps
weighted otherwise). Area averaging is linear, so it commutes with the affine normalisation: the training job
reduces the normalised splits and the endpoint reduces normalised requests, and both get the same features.

The training job records ``xgboost_input`` = :func:`xgboost_input` in model_config.json; the handlers call
:func:`xgboost_features` with it. Shipped as ``code/features.py`` in model.tar.gz (SageMaker puts only ``code/`` on
the path), so this module needs nothing but numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_SIDE = 32  # features per channel: at most 32x32
CHUNK = 1024  # images reduced per step: bounds the intermediate array of a large split


def target_size(height: int, width: int, size: int = MAX_SIDE) -> tuple[int, int]:
    """(h, w) that fits in ``size`` x ``size`` keeping the aspect ratio; images already that small are kept."""
    if height <= size and width <= size:
        return height, width
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix whose row i averages the inputs that output pixel i covers (rows sum to 1)."""
    if not 1 <= n_out <= n_in:
        raise ValueError(f"area downsampling maps {n_in} pixels to 1..{n_in}, not {n_out}")
    edges = np.arange(n_out + 1, dtype=np.float64) * (n_in / n_out)
    starts = np.arange(n_in, dtype=np.float64)
    overlap = np.minimum(edges[1:, None], starts[None, :] + 1) - np.maximum(edges[:-1, None], starts[None, :])
    return (np.clip(overlap, 0.0, None) * (n_out / n_in)).astype(np.float32)


def area_downsample(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reduce the last two axes of ``images`` (..., H, W) to (height, width) by area averaging (float32)."""
    images = np.asarray(images, dtype=np.float32)
    h_in, w_in = images.shape[-2:]
    if (h_in, w_in) == (height, width):
        return images
    rows, cols = area_weights(h_in, height), area_weights(w_in, width)
    if h_in % height == 0 and w_in % width == 0:  # whole blocks: the exact block mean, cheaper than the products
        kh, kw = h_in // height, w_in // width
        return images.reshape(*images.shape[:-2], height, kh, width, kw).mean(axis=(-3, -1), dtype=np.float32)
    return np.matmul(rows, np.matmul(images, cols.T))


def xgboost_input(image_shape: list[int] | tuple[int, ...], size: int = MAX_SIDE) -> dict[str, int] | None:
    """What model_config.json records for images larger than ``size``: {"size": 32, "channels": C}; else None."""
    channels = int(image_shape[0]) if len(image_shape) == 3 else 1
    height, width = int(image_shape[-2]), int(image_shape[-1])
    if target_size(height, width, size) == (height, width):
        return None
    return {"size": int(size), "channels": channels}


def xgboost_features(images: np.ndarray, spec: dict[str, Any] | None) -> np.ndarray:
    """(N, features) rows for the booster: flattened pixels, area-downsampled first when ``spec`` says so.

    ``images`` is (N, H, W) or (N, C, H, W); features are channel-major (all of channel 0, then channel 1, ...),
    as the flattened (N, C, h, w) array lays them out.
    """
    images = np.asarray(images)
    if not spec:
        return images.reshape(len(images), -1)
    height, width = target_size(images.shape[-2], images.shape[-1], int(spec["size"]))
    count = int(np.prod(images.shape[1:-2], dtype=np.int64)) * height * width
    out = np.empty((len(images), count), dtype=np.float32)
    for start in range(0, len(images), CHUNK):
        chunk = images[start: start + CHUNK]
        out[start: start + len(chunk)] = area_downsample(chunk, height, width).reshape(len(chunk), count)
    return out
