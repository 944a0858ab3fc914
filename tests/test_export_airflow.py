"""Exported DAGs in a real Airflow: they parse, and they run the tasks as Featherflow would.

Airflow lives in a virtual environment of its own (it pins its own croniter), built by .ci/run
from tests/airflow/requirements.lock into .venv-airflow (FEATHERFLOW_AIRFLOW_VENV names another).
Outside CI these tests skip when it is absent; under CI=true its absence fails them, so the
coverage cannot vanish silently. One `airflow db migrate` per session, then one parse of every
exported example and three `airflow dags test` runs (each some 8-20 s).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from featherflow.export import plan_export
from featherflow.export.common import write_files

import export_flows

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("FEATHERFLOW_AIRFLOW_VENV") or ROOT / ".venv-airflow")
AIRFLOW = VENV / "bin" / "airflow"
PYTHON = VENV / "bin" / "python"


@pytest.fixture(scope="session")
def airflow_env(tmp_path_factory):
    """AIRFLOW_HOME in a session tmp dir, migrated once, and a dags folder with every example."""
    if sys.version_info < (3, 10):
        pytest.skip("Airflow 3 needs Python >= 3.10")
    if not AIRFLOW.exists():
        message = f"no Airflow venv at {VENV} (.ci/run builds it from tests/airflow/requirements.lock)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    base = tmp_path_factory.mktemp("airflow")
    dags, results, tasks = base / "dags", base / "results", base / "tasks"
    results.mkdir()
    export_flows.write_scripts(tasks)
    for name, (make, schedule) in export_flows.EXAMPLES.items():
        write_files(dags, plan_export(make(), "airflow", tasks, schedule).files)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHON", "VIRTUAL_ENV"))}
    env.update(AIRFLOW_HOME=str(base / "home"), AIRFLOW__CORE__DAGS_FOLDER=str(dags),
               AIRFLOW__CORE__LOAD_EXAMPLES="False",
               FEATHERFLOW_PYTHON=str(PYTHON), FEATHERFLOW_TMP_ROOT=str(base / "tmp"),
               EXPORT_TEST_RESULTS=str(results), PATH=f"{VENV / 'bin'}:{env.get('PATH', '')}")
    proc = subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"env": env, "dags": dags, "results": results, "base": base}


def dags_test(airflow_env, dag_id):
    """`airflow dags test DAG`: its output (the run's final state is in it)."""
    proc = subprocess.run([str(AIRFLOW), "dags", "test", dag_id], env=airflow_env["env"], capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert "DagRun Finished" in out, out[-5000:]
    return out


def final_state(out):
    line = [line for line in out.splitlines() if "DagRun Finished" in line][-1]
    return line.split(" state=")[1].split(",")[0]


def test_every_exported_example_parses(airflow_env):
    script = ("import sys, json\nfrom airflow.models.dagbag import DagBag\n"
              "bag = DagBag(sys.argv[1])\n"
              "print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()}, "
              "'dags': sorted(bag.dag_ids), 'tasks': {d: sorted(bag.dags[d].task_ids) for d in bag.dag_ids}}))\n")
    proc = subprocess.run([str(PYTHON), "-c", script, str(airflow_env["dags"])], env=airflow_env["env"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["errors"] == {}
    assert found["dags"] == sorted(make().name for make, _ in export_flows.EXAMPLES.values())
    assert "featherflow_failed" in found["tasks"]["rules"]  # the watcher leaf
    assert "featherflow_failed" not in found["tasks"]["fanin"]  # not needed: all_success everywhere


def test_fanin_retries_params_outputs_and_contract_arrive_byte_exact(airflow_env):
    out = dags_test(airflow_env, "fanin")
    assert final_state(out) == "success", out[-5000:]
    results = airflow_env["results"]
    hostile = export_flows.HOSTILE
    # The producer failed its first attempt and succeeded on the retry.
    first = json.loads((results / "produce.1.env.json").read_text(encoding="utf-8"))
    second = json.loads((results / "produce.2.env.json").read_text(encoding="utf-8"))
    assert first["FEATHERFLOW_ATTEMPT"] == "1" and second["FEATHERFLOW_ATTEMPT"] == "2"
    assert second["HOSTILE_ENV"] == hostile
    run_id = second["FEATHERFLOW_RUN_ID"]
    assert run_id.startswith("manual__")
    params = json.loads(second["FEATHERFLOW_PARAMS"])
    assert params == {"day": "2026-01-01", "n": 3, "flag": True, "hostile": hostile, "text": "ünï €"}
    assert "ünï €" in second["FEATHERFLOW_PARAMS"]  # non-ASCII kept, not \\u-escaped
    assert second["FEATHERFLOW_FLOW_NAME"] == "fanin" and second["FEATHERFLOW_TASK_ID"] == "produce"
    assert second["FEATHERFLOW_TRIGGER"] == "manual" and second["FEATHERFLOW_SCHEDULED_AT"] == ""
    assert second["TMP_DIR"] == second["TEMP_DIR"] and second["TMP_DIR"].startswith(str(airflow_env["base"] / "tmp"))
    assert not [k for k in second if k.startswith("_FF_")]  # the wrapper's own variables are gone
    assert Path((results / "produce.2.cwd").read_text()) == airflow_env["dags"]
    # Args: literal, params (a string as is, others as JSON), {{ flow }}, an empty word, {{ run_id }}.
    argv = (results / "shell.1.argv").read_bytes().split(b"\0")[:-1]
    assert [a.decode("utf-8") for a in argv] == [
        hostile, "--day=2026-01-01", "3", "true", hostile, "fanin", "", run_id]
    # Outputs through XCom, into a downstream task's args; env placeholders and literals.
    joined = (results / "join.1.argv").read_bytes().split(b"\0")
    assert [a.decode("utf-8") for a in joined] == [
        "--plain=" + hostile.replace("\n", " "), "-m", hostile, "--verbose"]
    env = json.loads((results / "join.1.env.json").read_text(encoding="utf-8"))
    assert env["FROM_PARAM"] == hostile and env["LITERAL"] == hostile
    assert not Path("/tmp/ff-pwned").exists()


def test_run_if_cleanup_and_the_watcher_fail_the_run(airflow_env):
    out = dags_test(airflow_env, "rules")
    results = airflow_env["results"]
    assert final_state(out) == "failed", out[-5000:]
    assert (results / "after_all.ran").exists()  # all_done: runs after the failure
    assert "featherflow_failed" in out  # the watcher, the only leaf that fails
    assert (results / "clean_up.ran").exists()  # the cleanup (a teardown) runs at the end
    assert (results / "ok.ran").exists()


def test_a_timeout_and_exit_99_fail_not_skip(airflow_env):
    out = dags_test(airflow_env, "limits")
    results = airflow_env["results"]
    assert final_state(out) == "failed", out[-5000:]
    assert (results / "slow.ran").exists() and (results / "ninety_nine.ran").exists()
    assert (results / "saw_timeout.ran").exists()  # one_failed saw the timed-out task fail
    assert (results / "saw_99.ran").exists()  # and exit 99 was a failure, not Airflow's "skipped"
    assert not (results / "never.ran").exists()  # all_success: not after a failed dep


def test_argo_yaml_is_yaml_to_a_real_parser(airflow_env, tmp_path):
    """PyYAML (Airflow's dependency) reads every exported CronWorkflow as the document argo.py built."""
    from featherflow.export import argo
    from featherflow.export.common import Plan, task_facts

    docs = {}
    for name, (make, schedule) in export_flows.EXAMPLES.items():
        flow = make()
        doc = argo.document(flow, task_facts(flow), schedule, "img:1", Plan())
        path = tmp_path / f"{name}.yaml"
        path.write_text(argo.dump(doc), encoding="utf-8")
        docs[str(path)] = doc
    script = "import json, sys, yaml\nprint(json.dumps({p: yaml.safe_load(open(p, encoding='utf-8')) for p in sys.argv[1:]}))"
    proc = subprocess.run([str(PYTHON), "-c", script, *docs], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout) == docs
