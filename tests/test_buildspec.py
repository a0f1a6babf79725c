"""buildspec.yml parses as a CodeBuild spec and every command it runs exists (scripts, venv tools,
mlops subcommands and their options), so CI cannot break silently on a renamed command."""

from __future__ import annotations

import os
import re
import shlex

import yaml
from click.testing import CliRunner

from tests.helpers import ROOT

BUILDSPEC = ROOT / "buildspec.yml"
FAKE_ENV = {"MLOPS_REGION": "us-east-1", "AWS_REGION": "us-east-1", "CODEBUILD_RESOLVED_SOURCE_VERSION": "abc123"}


def load() -> dict:
    return yaml.safe_load(BUILDSPEC.read_text())


def commands() -> list[str]:
    spec = load()
    return [command for phase in spec["phases"].values() for command in phase.get("commands", [])]


def expand(command: str) -> list[str]:
    def substitute(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        return FAKE_ENV.get(name.split(":-")[0], "x")

    return shlex.split(re.sub(r"\$\{([^}]+)\}|\$([A-Za-z_][A-Za-z0-9_]*)", substitute, command))


def test_buildspec_shape():
    spec = load()
    assert str(spec["version"]) == "0.2"
    assert list(spec["phases"]) == ["install", "pre_build", "build"]
    assert spec["phases"]["install"]["runtime-versions"]["python"] in (3.11, "3.11")
    variables = spec["env"]["variables"]
    assert variables["MLOPS_PIPELINE_NAME"] and variables["MLOPS_MODEL_PACKAGE_GROUP"]
    text = BUILDSPEC.read_text()
    for needed in ("MLOPS_ROLE_ARN", "MLOPS_BUCKET", "MLOPS_REGION"):  # documented for the project settings
        assert needed in text
    assert "pipeline-definition.json" in spec["artifacts"]["files"]


def test_every_command_exists():
    from mlops.cli import main

    runner = CliRunner()
    mlops_commands = []
    for command in commands():
        argv = expand(command)
        if argv[0] == "export":
            assert re.fullmatch(r"[A-Z_]+=.*", argv[1]), command
            continue
        program = argv[0]
        if program.startswith(".venv/bin/"):
            tool = program.removeprefix(".venv/bin/")
            assert tool in ("ruff", "pytest", "mlops"), f"unexpected tool in {command!r}"
            assert (ROOT / program).exists(), f"{program} is not installed (scripts/bootstrap.sh makes .venv)"
            if tool == "mlops":
                mlops_commands.append(argv[1:])
        else:
            path = ROOT / program
            assert path.is_file() and os.access(path, os.X_OK), f"{program} is missing or not executable"
    assert [argv[0] for argv in mlops_commands] == ["definition", "validate", "run"]
    for argv in mlops_commands:
        # --help after the real arguments: click parses every option first, so an unknown one fails here
        result = runner.invoke(main, [*argv, "--help"])
        assert result.exit_code == 0, f"mlops {' '.join(argv)}: {result.output}"
    run = next(argv for argv in mlops_commands if argv[0] == "run")
    assert run[run.index("--target") + 1] == "sagemaker"

