"""The README is tested: every command is in it, its quick start runs, its flow JSON validates."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from featherflow import flow as flowmod
from featherflow.cli import main as cli

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
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
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


def _tables(text):
    """Markdown tables in `text`: lists of rows, each a list of stripped cells."""
    tables, rows = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            tables.append(rows)
            rows = []
    return tables


def test_every_reliability_figure_has_a_producer():
    """Each figures table in "Reliability" has bench/figures.py's columns, and each row and
    note is one that a test in tests/test_faults.py records: no figure without a producer."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("figures", ROOT / "bench" / "figures.py")
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    header = [cell.strip() for cell in figures.table({}).splitlines()[0].strip("|").split("|")]
    faults = (ROOT / "tests" / "test_faults.py").read_text()
    producers = [re.escape(name).replace(r"\{how\}", "(remount|chattr|chmod)")
                 for name in re.findall(r'record_figures\(f?"([^"]+)"', faults)]
    tables = [t for t in _tables(_section("Reliability")) if t[0][0] == "scenario"]
    assert len(tables) == 2, "the CI table and the soak table"
    for table in tables:
        assert table[0] == header
        for row in table[2:-1]:
            assert any(re.fullmatch(p, row[0]) for p in producers), f"no test records {row[0]!r}"
            for note in filter(None, row[-1].split(", ")):
                key = note.rsplit(" ", 1)[0].replace(" ", "_")
                assert f"{key}=" in faults, f"{row[0]!r}: no test records {key!r}"
        assert table[-1][0] == "**total**"


def test_every_section_the_readme_points_to_exists():
    titles = re.findall(r"^#+ (.+)$", README, re.M)
    names = {" ".join(n.split()) for n in re.findall(r'(?:[Ss]ee|under|in) "([A-Z][^"]+)"', README)}
    assert "Backups" in names
    for name in names:
        assert any(t == name or t.startswith(name + ":") for t in titles), f'README points to "{name}"'


def test_the_doctor_example_shows_real_checks():
    from featherflow import doctor

    block = re.search(r"```\n\$ featherflow doctor\n(.*?)```", README, re.S).group(1)
    shown = [m.group(1).strip() for m in re.finditer(r"^(?:ok|warning|PROBLEM) +(.+?)  ", block, re.M)]
    assert shown and all(name in doctor.ORDER for name in shown), shown


def test_the_schedule_examples_say_a_second_schedule_needs_its_own_name():
    """Right after the examples, before anyone meets the exit 3 of the original README's examples."""
    section = _section("Schedules")
    end = section.index("```", section.index("```sh") + len("```sh"))
    examples, after = section[:end], section[end:end + 500]
    assert "--name etl-hourly" in examples and "its own --name" in examples
    assert "needs a `--name` of its own" in " ".join(after.split())


def test_the_params_rule_is_documented_in_the_flow_reference():
    text = " ".join(_section("Flow reference").split("### Params", 1)[1].split())
    assert "A flow **with** a `params` block takes only the names it declares" in text
    assert "A flow **without** a `params` block" in text and "params the flow does not declare:" in text


def test_every_module_is_in_the_development_map():
    """README's "Development" maps each folder of the package to its modules: a module
    added or moved without a word there fails here."""
    rows = {}
    for line in _section("Development").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`featherflow/"):
            rows[cells[0].strip("`").rstrip("/")] = cells[1]
    package = ROOT / "featherflow"
    missing = []
    for path in sorted(package.rglob("*.py")) + sorted(package.rglob("*.bash")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        folder = str(path.parent.relative_to(ROOT))
        name = path.stem if path.suffix == ".py" else path.name
        if f"`{name}`" not in rows.get(folder, ""):
            missing.append(str(path.relative_to(ROOT)))
    assert missing == [], f"modules not named in README's Development map: {missing}"
