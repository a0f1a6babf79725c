"""Detached runner for `mlops run --no-wait`: ``python -m mlops.local.worker EXECUTION_ID``."""

from __future__ import annotations

import sys

from mlops.local.commands import execute


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mlops.local.worker EXECUTION_ID", file=sys.stderr)
        return 2
    status = execute(args[0])
    return 0 if status == "Succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
