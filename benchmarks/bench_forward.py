"""CPU time per image of the served network's forward pass, in each form the endpoint could run it.

Why channels-last + TorchScript freeze (inference/inference.py ``_compile_for_inference``): with 1 torch thread
the frozen NCHW network gets slower per image as the batch grows, the channels-last one faster. Measured with
``time.process_time`` (CPU time of this process), so other work on the machine inflates it less than wall time.

    .venv/bin/python benchmarks/bench_forward.py [--architecture compact] [--rounds 2] [--out F]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inference.inference import _compile_for_inference, _fuse_for_inference
from training.models import build_model

BATCHES = (1, 4, 8, 32)


def variants(architecture: str) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    eager = _fuse_for_inference(build_model(architecture, 10).eval())
    probe = torch.rand(1, 1, 28, 28)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen_nchw = torch.jit.freeze(torch.jit.trace(copy.deepcopy(eager), probe))
    return {"eager": eager, "frozen_nchw": frozen_nchw, "served": _compile_for_inference(eager, [28, 28])}


def cpu_us_per_image(net: torch.nn.Module, batch: int, calls: int) -> float:
    x = torch.rand(batch, 1, 28, 28)
    with torch.inference_mode():
        for _ in range(10):
            net(x)
        start = time.process_time()
        for _ in range(calls):
            net(x)
        return (time.process_time() - start) / calls / batch * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="compact")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "forward.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    nets = variants(args.architecture)
    samples: dict[str, dict[int, list[float]]] = {name: {b: [] for b in BATCHES} for name in nets}
    for _ in range(args.rounds):  # interleaved, so drift in the machine's load hits every variant alike
        for batch in BATCHES:
            for name, net in nets.items():
                samples[name][batch].append(cpu_us_per_image(net, batch, max(50, 2000 // batch)))
    table = {name: {str(b): round(statistics.median(v), 1) for b, v in by_batch.items()}
             for name, by_batch in samples.items()}
    result = {"benchmark": f"forward pass CPU us per image, {args.architecture} CNN, 1 torch thread",
              "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "load1": os.getloadavg()[0],
                          "torch": torch.__version__},
              "served_form": type(nets["served"]).__name__, "median_us_per_image": table}
    from training.atomic import atomic_write_json

    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
