"""Sample Prep job: splits the numbers in the input folder into train (even places) and test (odd places)."""

import argparse
import json
import sys
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--input-dir")
parser.add_argument("--output-dir")
parser.add_argument("--fail", default="")
args = parser.parse_args()
if args.fail == "Prep":
    print("prep: failing on purpose", file=sys.stderr)
    sys.exit(1)
numbers = [float(x) for f in sorted(Path(args.input_dir).glob("*.txt")) for x in f.read_text().split()]
for split, values in (("train", numbers[::2]), ("test", numbers[1::2])):
    out = Path(args.output_dir) / split
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.json").write_text(json.dumps(values))
print(f"prep: {len(numbers)} numbers")
