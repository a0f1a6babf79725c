"""Sample Evaluate job: evaluation.json in the model quality format, from the two models' saved accuracy."""

import argparse
import json
import sys
import tarfile
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--model-a")
parser.add_argument("--model-b")
parser.add_argument("--output-dir")
parser.add_argument("--fail", default="")
args = parser.parse_args()
if args.fail == "Evaluate":
    print("evaluate: failing on purpose", file=sys.stderr)
    sys.exit(1)


def load(folder: str) -> dict:
    with tarfile.open(Path(folder) / "model.tar.gz") as tar:
        return json.load(tar.extractfile("model.json"))


cnn, base = load(args.model_a), load(args.model_b)
report = {"multiclass_classification_metrics": {"accuracy": {"value": cnn["accuracy"], "standard_deviation": 0}},
          "baseline": {"multiclass_classification_metrics": {"accuracy": {"value": base["accuracy"]}}}}
out = Path(args.output_dir)
out.mkdir(parents=True, exist_ok=True)
(out / "evaluation.json").write_text(json.dumps(report))
