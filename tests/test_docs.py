"""The README is tested: every command is in it, its quick start runs, its flow JSON validates."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from featherflow import cli, flow as flowmod

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _commands(parser, prefix=()):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                if name.startswith("_"):  # hidden internals
                    continue
                yield prefix + (name,)
                yield from _commands(sub, prefix + (name,))


def _blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def _section(title):
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def test_every_command_is_in_the_readme_and_has_help():
    parser = cli.build_parser()
    commands = list(_commands(parser))
    assert ("run",) in commands and ("runs", "resume") in commands
    for command in commands:
        assert "featherflow " + " ".join(command) in README, f"`featherflow {' '.join(command)}` is not in README.md"


def test_the_two_setup_commands_and_ci_agree():
    setup = re.findall(r"```sh\n(.*?)\n```", _section("Set up"), re.S)
    assert len(setup) == 2, "the README has exactly two set-up commands"
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if "pytest" in line and not line.lstrip().startswith("#")]
    assert ci_lines[-1].strip() == setup[1].strip()


def test_every_json_flow_in_the_readme_validates():
    snippets = [json.loads(block) for block in _blocks("json")]
    flows = [s for s in snippets if isinstance(s, dict) and "tasks" in s]
    assert flows
    for data in flows:
        flowmod.validate(data)


@pytest.mark.slow
def test_the_quick_start_runs_in_a_fresh_dir(tmp_path):
    block = re.search(r"```sh\n(.*?)```", _section("Quick start"), re.S).group(1)
    home = tmp_path / "home"
    env_bin = str(Path(sys.executable).parent)
    import os

    env = {**os.environ, "FEATHERFLOW_HOME": str(home), "PATH": env_bin + os.pathsep + os.environ["PATH"]}
    cwd = tmp_path
    for line in block.strip().splitlines():
        command = line.split("#", 1)[0].strip()
        for part in command.split("&&"):
            argv = shlex.split(part)
            if argv[0] == "cd":
                cwd = cwd / argv[1]
                continue
            assert argv[0] == "featherflow", line
            proc = subprocess.run([sys.executable, "-m", "featherflow"] + argv[1:], cwd=cwd, env=env,
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, f"{part}\n{proc.stdout}\n{proc.stderr}"
