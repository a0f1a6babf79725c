"""Choose the smoke test's digits: two per class from MNIST's test set that are unambiguous in every form.

A digit qualifies when several differently seeded quick CNNs (the tests' models, ~95% accurate) and the XGBoost
baseline all classify it right, with confidence >= 0.9 for the CNNs, as raw pixels, upscaled colour and dark on
light, through the real inference handlers. Prints the tuple for ``mlops/serve/smoke.py``'s SMOKE_DIGITS.

    .venv/bin/python scripts/select_smoke_digits.py --candidates 1500
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from inference import inference as handlers
    from mlops.serve import smoke
    from tests.helpers.models import quick_train_cnn, write_cnn_model_dir, write_xgboost_model_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=300, help="first N test digits to consider")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = []
        for seed in (0, 1, 2):
            state, config = quick_train_cnn(samples=3000, epochs=2, seed=seed)
            models.append(("cnn", handlers.model_fn(str(write_cnn_model_dir(Path(tmp) / f"cnn{seed}", state, config)))))
        models.append(("xgboost", handlers.model_fn(str(write_xgboost_model_dir(Path(tmp) / "xgb")))))
        chosen: dict[int, list[int]] = {}
        for probe_group in _by_digit(smoke.probes(tuple(range(args.candidates)))):
            index, label = probe_group[0].index, probe_group[0].label
            if len(chosen.get(label, [])) >= 2:
                continue
            if all(_right(model, kind, probe) for kind, model in models for probe in probe_group):
                chosen.setdefault(label, []).append(index)
    digits = tuple(i for label in range(10) for i in chosen.get(label, []))
    print(f"SMOKE_DIGITS: tuple[int, ...] = {digits}")


def _by_digit(probes: list) -> list[list]:
    groups: dict[int, list] = {}
    for probe in probes:
        groups.setdefault(probe.index, []).append(probe)
    return list(groups.values())


def _right(model, kind: str, probe) -> bool:
    from inference import inference as handlers

    prediction = handlers.predict_fn(handlers.input_fn(probe.body, probe.content_type), model)
    probs = prediction.probabilities[0]
    best = int(probs.argmax())
    return best == probe.label and (kind != "cnn" or float(probs[best]) >= 0.9)


if __name__ == "__main__":
    main()
