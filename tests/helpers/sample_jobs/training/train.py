"""Sample training job: prints one metrics line per epoch (accuracy grows with lr and epochs) and saves a model.

Knobs: ``--fail NAME`` exits 1 when NAME is this job's ``--name``; ``--crash-once MARKER`` kills itself with
SIGKILL the first time (the marker file remembers); ``--sleep`` seconds per epoch.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--lr", type=float, default=0.1)
parser.add_argument("--sleep", type=float, default=0.0)
parser.add_argument("--fail", default="")
parser.add_argument("--name", default="model")
parser.add_argument("--crash-once", default="")
args, unknown = parser.parse_known_args()
if args.fail == args.name:
    print(f"{args.name}: failing on purpose", file=sys.stderr)
    Path(os.environ["SM_OUTPUT_DIR"], "failure").write_text(f"{args.name} was told to fail")
    sys.exit(1)
if args.crash_once:
    marker = Path(args.crash_once)
    if not marker.exists():
        marker.write_text("crashed")
        os.kill(os.getpid(), 9)
data = json.loads(Path(os.environ["SM_CHANNEL_TRAIN"], "data.json").read_text())
assert os.environ["SM_NUM_GPUS"] == "0" and json.loads(os.environ["SM_HOSTS"]) == ["algo-1"]
accuracy = 0.5
for epoch in range(1, args.epochs + 1):
    time.sleep(args.sleep)
    accuracy = 1 - 0.5 / (1 + epoch * args.lr * 10)
    print(f"metrics: epoch={epoch}; train_loss={1 - accuracy:.6f}; val_loss={1 - accuracy:.6f}; "
          f"val_accuracy={accuracy:.6f};")
model = Path(os.environ["SM_MODEL_DIR"])
model.mkdir(parents=True, exist_ok=True)
(model / "model.json").write_text(json.dumps({"name": args.name, "accuracy": accuracy, "n": len(data),
                                              "cpus": os.environ["SM_NUM_CPUS"]}))
out = Path(os.environ["SM_OUTPUT_DATA_DIR"])
out.mkdir(parents=True, exist_ok=True)
(out / "history.json").write_text(json.dumps({"accuracy": accuracy}))
