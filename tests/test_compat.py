"""The original Featherflow's README, run as written: its quick start and its Python API.

Its flow file has no `params` block and no `version`, `args` in object and array form;
its task scripts read `TMP_DIR` and take the arguments with `parse_known_args`. Every
command runs from the project folder with the default `flows/`, `tasks/` and
`featherflow_output/`, a private FEATHERFLOW_HOME standing in for `~/.featherflow`.
`list` and `run --dry-run` run in-process through main(argv); `run --params` runs as
the installed console script (a run becomes bash, it cannot run in-process).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from featherflow import flow as flowmod
from featherflow.cli import main as cli
from featherflow.engine import launch, script
from featherflow.errors import UsageError

# The quick start's flow file, as the original README gives it.
SIMPLE_FLOW = {
    "name": "simple_flow",
    "description": "A sample flow to demonstrate Featherflow",
    "tasks": [
        {"id": "fetch_data", "script": "fetch_data.py", "description": "Fetch data from source"},
        {"id": "process_data", "script": "process_data.py", "description": "Process the fetched data",
         "depends_on": ["fetch_data"],
         "args": {"input-file": "data/raw_data.csv", "output-file": "data/processed_data.csv"}},
        {"id": "generate_report", "script": "generate_report.py", "description": "Generate final report",
         "depends_on": ["process_data"], "args": ["--format", "json", "--output", "reports/final_report.json"]},
    ],
}

# A task in the README's style (parse_known_args, TMP_DIR shared between tasks), which
# also writes down what it was given, for the test to read.
TASK = '''#!/usr/bin/env python3
import argparse
import json
import os
import sys


def main():
    parser = argparse.ArgumentParser(description="{name}")
    args, _ = parser.parse_known_args()
    tmp_dir = os.environ.get("TMP_DIR", os.path.join(os.getcwd(), "tmp"))
    if "{name}" == "fetch_data":
        with open(f"{{tmp_dir}}/fetched_data.txt", "w") as f:
            f.write("Example data")
    else:
        with open(f"{{tmp_dir}}/fetched_data.txt") as f:  # what fetch_data left
            assert f.read() == "Example data"
    seen = os.path.join(os.environ["FEATHERFLOW_OUTPUT_DIR"], "seen")
    os.makedirs(seen, exist_ok=True)
    with open(os.path.join(seen, "{name}.json"), "w") as f:
        json.dump({{"argv": sys.argv[1:], "params": json.loads(os.environ["FEATHERFLOW_PARAMS"])}}, f)
    print("{name} done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''

NOTICE = "params the flow does not declare: "


@pytest.fixture
def quickstart(tmp_path, monkeypatch):
    """A project folder laid out as the README says, as the current dir, with a private home."""
    (tmp_path / "flows").mkdir()
    (tmp_path / "tasks").mkdir()
    (tmp_path / "flows" / "simple_flow.json").write_text(json.dumps(SIMPLE_FLOW, indent=2))
    for name in ("fetch_data", "process_data", "generate_report"):
        (tmp_path / "tasks" / f"{name}.py").write_text(TASK.format(name=name))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEATHERFLOW_DB", raising=False)
    monkeypatch.setenv("FEATHERFLOW_HOME", str(tmp_path / "home"))
    return tmp_path


def _seen(root):
    return {p.stem: json.loads(p.read_text()) for p in (root / "featherflow_output" / "seen").glob("*.json")}


def _console_script():
    exe = shutil.which("featherflow", path=os.path.dirname(sys.executable)) or shutil.which("featherflow")
    assert exe, "the featherflow console script is not installed next to the test interpreter"
    return exe


def test_list_shows_the_quick_start_flow(quickstart, capsys):
    assert cli.main(["list"]) == 0
    assert capsys.readouterr().out.split() == ["simple_flow", "3", "tasks", *SIMPLE_FLOW["description"].split()]


def test_dry_run_writes_the_script_and_runs_nothing(quickstart, capsys):
    assert cli.main(["run", "simple_flow", "--dry-run"]) == 0
    out = capsys.readouterr()
    path = quickstart / out.out.strip()
    assert path.is_file() and path.read_text().startswith("#!/usr/bin/env bash"), out
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    assert not (quickstart / "featherflow_output" / "seen").exists()
    assert cli.main(["runs", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


@pytest.mark.slow
def test_run_with_params_as_the_console_script(quickstart):
    params = {"date": "2023-01-01", "source": "example"}
    env = {k: v for k, v in os.environ.items() if k != "FEATHERFLOW_DB"}
    proc = subprocess.run([_console_script(), "run", "simple_flow", "--params", json.dumps(params)],
                          cwd=quickstart, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split("  ", 1)[1].startswith("run 1 of simple_flow: 3 task(s)"), lines[0]
    assert lines[0].endswith(NOTICE + "date, source"), lines[0]
    assert proc.stdout.count(NOTICE) == 1, proc.stdout
    assert lines[-1].endswith("run 1 succeeded")
    seen = _seen(quickstart)
    assert {task: s["params"] for task, s in seen.items()} == {t["id"]: params for t in SIMPLE_FLOW["tasks"]}
    assert seen["fetch_data"]["argv"] == []
    assert seen["process_data"]["argv"] == ["--input-file=data/raw_data.csv", "--output-file=data/processed_data.csv"]
    assert seen["generate_report"]["argv"] == ["--format", "json", "--output", "reports/final_report.json"]
    shown = subprocess.run([_console_script(), "runs", "show", "1", "--json"], cwd=quickstart, env=env,
                           capture_output=True, text=True, timeout=60)
    assert json.loads(shown.stdout)["params"] == params


@pytest.mark.slow
def test_the_python_api_example(quickstart, capfd):
    """The README's example runs "sample_flow": the quick start's flow under that name."""
    from featherflow import Featherflow

    (quickstart / "flows" / "sample_flow.json").write_text(json.dumps({**SIMPLE_FLOW, "name": "sample_flow"}))
    featherflow = Featherflow(flows_dir="./flows", tasks_dir="./tasks", output_dir="./featherflow_output")
    try:
        assert featherflow.list_flows() == ["sample_flow", "simple_flow"]
        script_path = featherflow.execute_flow("sample_flow", params={"date": "2023-01-01"}, dry_run=False)
        assert featherflow.last_run.state == "success"
        assert featherflow.last_run.params == {"date": "2023-01-01"}
    finally:
        featherflow.close()
    assert os.path.isfile(script_path)
    first = capfd.readouterr().out.splitlines()[0]
    assert "run 1 of sample_flow" in first and first.endswith(NOTICE + "date"), first
    assert {task: s["params"] for task, s in _seen(quickstart).items()} == {
        t["id"]: {"date": "2023-01-01"} for t in SIMPLE_FLOW["tasks"]}


# -- the rule: a `params` block declares, no block accepts any ------------------------------

def _flow(**extra):
    return flowmod.validate({"name": "f", "tasks": [{"id": "t", "script": "t.sh"}], **extra})


def test_a_flow_without_params_takes_any_and_a_declared_one_refuses_a_typo():
    assert launch.merge_params(_flow(), {"date": "2023-01-01", "n": 2}) == {"date": "2023-01-01", "n": 2}
    declared = _flow(params={"date": "today", "limit": 10})
    assert launch.merge_params(declared, {"date": "2023-01-01"}) == {"date": "2023-01-01", "limit": 10}
    with pytest.raises(UsageError, match=r"unknown param 'dte' for flow 'f' \(known: date, limit\)"):
        launch.merge_params(declared, {"dte": "2023-01-01"})
    with pytest.raises(UsageError, match="'params' block is empty"):
        launch.merge_params(_flow(params={}), {"date": "2023-01-01"})


def test_an_undeclared_name_is_still_checked_text():
    with pytest.raises(UsageError, match="NUL"):
        launch.merge_params(_flow(), {"a\x00b": 1})
    with pytest.raises(UsageError, match="not valid Unicode"):
        launch.merge_params(_flow(), {"\ud800": 1})


def _spec(params):
    return script.RunSpec(run_id=1, run_uid="u", trigger="manual", params=params, max_parallel=1,
                          python=sys.executable, mark="/m.py", db="/db", tasks_dir="/tasks", run_dir="/run")


def test_the_first_line_names_only_undeclared_params_and_escapes_odd_names():
    declared = _flow(params={"date": "today"})
    assert "UNDECLARED=''" in script.render(declared, _spec({"date": "x"})).splitlines()
    text = script.render(_flow(), _spec({"source": "s", "date": "x", "a\nb": 1}))
    assert "UNDECLARED=" + script.q('"a\\nb", date, source') in text.splitlines()
    assert NOTICE + "$UNDECLARED" in text


@pytest.mark.slow
def test_a_declared_placeholder_is_filled_and_the_run_says_nothing_undeclared(quickstart):
    flow = {"name": "dated", "params": {"date": "today"},
            "tasks": [{"id": "fetch_data", "script": "fetch_data.py", "args": {"day": "{{ params.date }}"}}]}
    (quickstart / "flows" / "dated.json").write_text(json.dumps(flow))
    env = {k: v for k, v in os.environ.items() if k != "FEATHERFLOW_DB"}
    proc = subprocess.run([sys.executable, "-m", "featherflow", "run", "dated", "--params", '{"date": "2023-01-01"}'],
                          cwd=quickstart, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert NOTICE not in proc.stdout
    assert _seen(quickstart)["fetch_data"] == {"argv": ["--day=2023-01-01"], "params": {"date": "2023-01-01"}}


def test_run_help_states_the_params_rule(capsys):
    assert cli.main(["run", "--help"]) == 0
    flat = " ".join(capsys.readouterr().out.split())
    assert "a flow with a 'params' block takes only the names it declares, a flow without one takes any" in flat
