"""Installation: TensorFlow and PyTorch live in one environment, and import in either order.

A CUDA triton next to CPU torch crashed processes that imported tensorflow before torchvision (bootstrap removes
it); each order runs in its own fresh interpreter, since a crash would take the test process down.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest


@pytest.mark.parametrize("first, second", [("tensorflow", "torchvision"), ("torchvision", "tensorflow")])
def test_tensorflow_and_torchvision_import_in_either_order(first: str, second: str) -> None:
    code = (f"import {first}, {second}; import torch; "
            "x = tensorflow.constant([1.0, 2.0]); t = torch.tensor([1.0, 2.0]); "
            "print(float(tensorflow.reduce_sum(x)), float(t.sum()))")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300,
                            env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, f"import {first} then {second} failed ({result.returncode}): {result.stderr[-2000:]}"
    assert result.stdout.split() == ["3.0", "3.0"]


def test_pinned_versions_and_their_neighbours() -> None:
    """tensorflow-cpu as setup.py pins it; numpy still below 2.3 (smdebug); no triton; the TF image's launcher."""
    assert metadata.version("tensorflow-cpu") == "2.21.0"
    major, minor = (int(p) for p in metadata.version("numpy").split(".")[:2])
    assert (major, minor) < (2, 3)
    assert metadata.version("sagemaker-tensorflow-training") == "20.5.0"
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("triton")
