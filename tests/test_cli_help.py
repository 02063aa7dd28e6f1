"""What the command line tells people and scripts: help on every flag, exit codes, completion, validate output."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from controller.cli import build_parser, main
from controller.emulator.__main__ import build_parser as emulator_parser
from controller.scoring.options import build_parser as scoring_parser

AMLOPS = [sys.executable, "-m", "controller"]


def _undocumented(parser: argparse.ArgumentParser, name: str) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                missing += _undocumented(sub, f"{name} {sub_name}")
        elif not action.help and not isinstance(action, argparse._HelpAction):
            missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    return missing


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_option_and_argument_has_help() -> None:
    missing = (_undocumented(build_parser(), "amlops") + _undocumented(scoring_parser(), "amlops serve")
               + _undocumented(emulator_parser(), "amlops emulator"))
    assert missing == []


def test_every_command_lists_its_exit_codes_and_usage_errors_are_not_2() -> None:
    for name, sub in _subparsers(build_parser()).items():
        text = sub.format_help()
        assert "exit codes:" in text and "64  usage error" in text, name
    for argv in (["plan", "--no-such-flag"], ["apply", "--parallelism", "many"], ["no-such-command"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 64, argv


def test_top_level_help_lists_serve_emulator_and_completion() -> None:
    result = subprocess.run([*AMLOPS, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    commands = re.findall(r"^    (\w+)", result.stdout, re.MULTILINE)
    assert {"serve", "emulator", "completion", "plan", "apply", "validate"} <= set(commands)
    assert "2   changes (plan; apply --detailed-exitcode)" in result.stdout


def test_serve_help_names_amlops_serve_and_lists_its_exit_codes() -> None:
    result = subprocess.run([*AMLOPS, "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: amlops serve ")
    assert "controller.scoring" not in result.stdout
    assert "exit codes:" in result.stdout and "64  usage error" in result.stdout
    wrong = subprocess.run([*AMLOPS, "serve", "--no-such-flag"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 64 and "amlops serve: error: unrecognized arguments: --no-such-flag" in wrong.stderr


def _complete(script: str, line: str) -> list[str]:
    """Run bash's completion function for ``line`` (the cursor at its end) and return the candidates."""
    words = line.split(" ")
    driver = (f"{script}\nCOMP_WORDS=({' '.join(repr(w) for w in words)})\nCOMP_CWORD={len(words) - 1}\n"
              "_amlops\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", driver], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return [w for w in result.stdout.splitlines() if w]


def test_bash_completion_completes_commands_flags_and_choices() -> None:
    result = subprocess.run([*AMLOPS, "completion", "bash"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    script = result.stdout
    assert _complete(script, "amlops pl") == ["plan"]
    assert _complete(script, "amlops plan --out") == ["--output"]
    assert sorted(_complete(script, "amlops plan --output ")) == ["json", "markdown", "text"]
    assert _complete(script, "amlops schemas ex") == ["export"]
    assert "--detailed-exitcode" in _complete(script, "amlops apply --d")
    assert _complete(script, "amlops completion ") == ["bash"]


REPO = Path(__file__).resolve().parents[1]


def test_validate_output_json_and_github_locate_each_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(REPO / "manifests", tmp_path / "manifests")
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "manifests", "--output", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"formatVersion": 1, "valid": True, "resources": 5, "errors": []}

    service = tmp_path / "manifests/services/aks-dnn-mnist.yaml"
    service.write_text(service.read_text().replace("replicas: 3", "replicas: 0"))
    line = service.read_text().splitlines().index("  replicas: 0") + 1
    assert main(["validate", "manifests", "--output", "json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["formatVersion"] == 1 and document["valid"] is False
    [error] = document["errors"]
    assert error["file"] == "manifests/services/aks-dnn-mnist.yaml" and error["line"] == line
    assert error["kind"] == "Webservice" and error["field"] == "spec.replicas"

    assert main(["validate", "manifests", "--output", "github"]) == 1
    [annotation] = capsys.readouterr().out.splitlines()
    assert annotation.startswith(f"::error file=manifests/services/aks-dnn-mnist.yaml,line={line},"
                                 "title=amlops%3A Webservice aks-dnn-mnist spec.replicas::spec.replicas: ")
