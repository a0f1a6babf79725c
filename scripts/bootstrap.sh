#!/usr/bin/env bash
# One set-up step for a fresh clone: a virtual environment in .venv with everything the project
# needs. Idempotent: a second run only checks. Called by `make run` and `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
STAMP="$VENV/.bootstrap-$(cat setup.py scripts/bootstrap.sh | sha256sum | cut -c1-16)"

if [ -f "$STAMP" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip "setuptools<81" wheel
# torch first, so pip takes the pinned wheels (a local copy where the machine has one). TORCH_INDEX_URL (CodeBuild
# sets it to PyTorch's CPU index) avoids PyPI's Linux wheel, which is the CUDA build.
"$PIP" install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.14.1 torchvision==0.29.1
"$PIP" install -q -e ".[dev]"
# smdebug 1.0.34 is unmaintained: its declared deps are stale, so install it alone.
# pyinstrument 3.4 imports its C extension from the separate pyinstrument_cext package (smdebug.pytorch needs it).
"$PIP" install -q --no-deps smdebug==1.0.34 pyinstrument==3.4.2 pyinstrument_cext==0.2.4
# sagemaker-containers 2.8.6 is the XGBoost 1.7-1 image's launcher (the local executor runs it); its pins (flask 1.1.1,
# typing) break a modern environment, and the image itself overrides them, so install it alone too.
"$PIP" install -q --no-deps sagemaker-containers==2.8.6
# sagemaker-tensorflow-training 20.5.0 is the TensorFlow image's entry point (the local executor runs it for
# train_keras.py); it declares numpy<1.24, which tensorflow-cpu 2.21 (numpy>=1.26) contradicts: alone too.
"$PIP" install -q --no-deps sagemaker-tensorflow-training==20.5.0
# CPU torch does not need triton; it crashes processes that import tensorflow before torchvision
# (tests/test_install.py imports them in both orders).
"$PIP" uninstall -q -y triton 2>/dev/null || true
rm -f "$VENV"/.bootstrap-*
touch "$STAMP"
echo "bootstrap: environment ready in $VENV"
