"""``python -m mlops.cli ...`` is the ``mlops`` command."""

from mlops.cli import main

main(prog_name="mlops")
