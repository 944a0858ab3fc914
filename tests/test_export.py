"""`featherflow export`: golden files, the rules every generated DAG keeps, the CLI.

The generated files are compared byte for byte with tests/golden/export/ (regenerate them
with FEATHERFLOW_UPDATE_GOLDEN=1 after a change you meant, and read the diff). What the
files do in a real Airflow is in test_export_airflow.py.
"""

import ast
import json
import os
import re
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

import export_flows
from featherflow.export import airflow, argo, plan_export
from featherflow.export.common import ScheduleFacts, dst_warnings, pieces

GOLDEN = Path(__file__).parent / "golden" / "export"
IMAGE = "registry.example/featherflow-tasks:1"
RAW_RE = re.compile(r"\{% raw %\}(.*?)\{% endraw %\}", re.S)
# The only template expressions an exported DAG writes (everything else is raw text).
EXPRESSIONS = re.compile(r'\{\{ (run_id|ti\.try_number|ff_params\(params\)|ff_trigger\(dag_run\)|'
                         r'ff_scheduled_at\(dag_run\)|ff_text\(params\["[A-Za-z_][A-Za-z0-9_]*"\]\)|'
                         r'ff_output\(ti, "[A-Za-z0-9_-]+", "[A-Za-z_][A-Za-z0-9_]*"\)|"\{") \}\}')


def plans(tmp_path, target):
    tasks = tmp_path / "tasks"
    export_flows.write_scripts(tasks)
    for name, (make, schedule) in export_flows.EXAMPLES.items():
        yield name, plan_export(make(), target, tasks, schedule, image=IMAGE)


def check_golden(path: Path, text: str) -> None:
    if os.environ.get("FEATHERFLOW_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no golden file {path} (FEATHERFLOW_UPDATE_GOLDEN=1 writes it)"
    assert text == path.read_text(encoding="utf-8"), f"{path.name} differs from the golden file"


def report(plan) -> str:
    return "".join(f"warning: {w}\n" for w in plan.warnings) + \
        "".join(f"not carried over: {line}\n" for line in plan.lost) + \
        "".join(f"run once: {c}\n" for c in plan.commands)


@pytest.mark.parametrize("target", ["airflow", "argo"])
def test_generated_files_match_the_golden_files(tmp_path, target):
    for name, plan in plans(tmp_path, target):
        main = plan.files[f"{export_flows.EXAMPLES[name][0]().name}.{'py' if target == 'airflow' else 'yaml'}"]
        suffix = "airflow.py" if target == "airflow" else "argo.yaml"
        check_golden(GOLDEN / f"{name}.{suffix}", main[0].decode("utf-8"))
        check_golden(GOLDEN / f"{name}.{target}.txt", report(plan))


def test_the_same_flow_gives_the_same_bytes(tmp_path):
    first = [p.files for _, p in plans(tmp_path / "a", "airflow")] + [p.files for _, p in plans(tmp_path / "a", "argo")]
    second = [p.files for _, p in plans(tmp_path / "b", "airflow")] + [p.files for _, p in plans(tmp_path / "b", "argo")]
    assert first == second


def dag_files(tmp_path):
    for name, plan in plans(tmp_path, "airflow"):
        flow_name = export_flows.EXAMPLES[name][0]().name
        yield name, plan.files[f"{flow_name}.py"][0].decode("utf-8"), plan


def templated_strings(tree):
    """Every string Airflow renders: each BashOperator's bash_command (COMMAND resolved) and env values."""
    constants = {n.targets[0].id: n.value.value for n in tree.body
                 if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "BashOperator":
            for kw in node.keywords:
                if kw.arg == "bash_command":
                    yield constants[kw.value.id] if isinstance(kw.value, ast.Name) else kw.value.value
                elif kw.arg == "env":
                    for value in kw.value.values:
                        assert isinstance(value, ast.Constant), ast.dump(value)
                        yield value.value
                elif kw.arg == "cwd":
                    assert ast.unparse(kw.value) == "raw(HERE)"


def assert_only_raw_and_known_expressions(text: str) -> None:
    rest = RAW_RE.sub("", text)
    rest = EXPRESSIONS.sub("", rest)
    assert rest == "", f"text outside {{% raw %}} in {text!r}: {rest!r}"
    for inside in RAW_RE.findall(text):
        assert "{%" not in inside


def test_every_dag_parses_and_every_literal_is_raw_and_no_command_ends_in_sh(tmp_path):
    for name, text, _ in dag_files(tmp_path):
        tree = ast.parse(text)
        strings = list(templated_strings(tree))
        assert len(strings) > 10, name
        for value in strings:
            assert not value.endswith((".sh", ".bash")), value  # Airflow would read a template file
            assert_only_raw_and_known_expressions(value)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("{}%#-+ raw endraw\n'\"\\$`a.sh")) | st.characters(), max_size=60))
def test_raw_leaves_no_text_jinja_would_read(text):
    rendered = airflow.raw(text)
    assert_only_raw_and_known_expressions(rendered)
    # Undo the encoding as Jinja would: raw blocks give their text, {{ "{" }} gives "{".
    undone = re.sub(r'\{% raw %\}(.*?)\{% endraw %\}|\{\{ "\{" \}\}',
                    lambda m: m.group(1) if m.group(1) is not None else "{", rendered, flags=re.S)
    assert undone == text


def test_placeholders_split_into_text_and_references():
    assert [p.kind for p in pieces("a {{ params.x }}-{{run_id}} {{ tasks.t.outputs.K }} {{ y }}")] == [
        "text", "param", "text", "builtin", "text", "output", "text"]
    assert pieces("")[0].text == ""


def test_dag_mapping_of_schedule_and_task_fields(tmp_path):
    texts = {name: (text, plan) for name, text, plan in dag_files(tmp_path)}
    text, plan = texts["scheduled"]
    assert 'CronTriggerTimetable("30 2 * * *", timezone="Europe/Berlin")' in text
    assert "catchup=True," in text and "max_active_runs=1," in text
    assert 'pool="heavy"' in text and "**backoff(1.5)" in text
    assert "execution_timeout=timedelta(seconds=2.5)" in text
    assert 'trigger_rule="none_failed"' in text and 'trigger_rule="one_failed"' in text
    assert any("airflow pools set heavy 1" in c for c in plan.commands)
    assert any("03:30" in w for w in plan.warnings)  # the spring-forward slot Airflow fires late
    text, plan = texts["rules"]
    assert 'tasks["clean_up"].as_teardown(on_failure_fail_dagrun=True)' in text
    assert 'trigger_rule="one_failed"' in text and "featherflow_failed" in text
    text, plan = texts["fanin"]
    assert "schedule=None," in text and "max_active_tasks=2," in text and "skip_on_exit_code=None" in text
    assert text.count("append_env=True") == 3 and "retry_delay=timedelta(seconds=0.0)" in text


@pytest.mark.parametrize("catchup,overlap,expect,lost", [
    ("latest", "skip", "catchup=False,\n    max_active_runs=1,", False),
    ("none", "allow", "catchup=False,\n    max_active_runs=16,", True),
    ("all", "queue", "catchup=True,\n    max_active_runs=1,", False),
])
def test_catchup_and_overlap(tmp_path, catchup, overlap, expect, lost):
    schedule = ScheduleFacts("s", "0 4 * * *", "UTC", catchup, overlap)
    export_flows.write_scripts(tmp_path)
    plan = plan_export(export_flows.fanin(), "airflow", tmp_path, schedule)
    assert expect in plan.files["fanin.py"][0].decode()
    assert any("catch-up none" in line for line in plan.lost) == lost


def test_dst_warnings_for_fixed_times_in_a_transition_hour():
    assert len(dst_warnings("30 2 * * *", "Europe/Berlin", 2026, "Airflow")) == 2
    assert dst_warnings("30 2 * * *", "UTC", 2026, "Airflow") == []
    assert dst_warnings("*/15 * * * *", "Europe/Berlin", 2026, "Airflow") == []
    assert dst_warnings("0 3 * * *", "Europe/Berlin", 2026, "Airflow") == []
    assert len(dst_warnings("30 1 * * *", "America/New_York", 2026, "Argo")) == 1  # fall-back only


# -- Argo ------------------------------------------------------------------------------

def parse_yaml(text: str):
    """A parser of exactly the subset argo.dump writes: block mappings, `- ` lists, JSON scalars."""
    lines = [line for line in text.split("\n") if line.strip()]

    def scalar(s):
        return {"true": True, "false": False, "{}": {}, "[]": []}.get(s) if s in ("true", "false", "{}", "[]") \
            else json.loads(s)

    def block(i, indent):
        if lines[i][indent:].startswith("- "):
            out = []
            while i < len(lines) and lines[i].startswith(" " * indent + "- "):
                rest = lines[i][indent + 2:]
                if re.match(r"[A-Za-z\"][^:]*:( |$)", rest) and not rest.startswith('"'):
                    lines[i] = " " * (indent + 2) + rest
                    value, i = block(i, indent + 2)
                else:
                    value, i = scalar(rest), i + 1
                out.append(value)
            return out, i
        out = {}
        while i < len(lines) and lines[i].startswith(" " * indent) and not lines[i][indent] == " " \
                and not lines[i][indent:].startswith("- "):
            key, _, rest = lines[i][indent:].partition(":")
            if rest.strip():
                out[key], i = scalar(rest.strip()), i + 1
            else:
                out[key], i = block(i + 1, indent + 2)
        return out, i

    return block(0, 0)[0]


def test_argo_yaml_parses_back_to_the_document(tmp_path):
    export_flows.write_scripts(tmp_path)
    for name, (make, schedule) in export_flows.EXAMPLES.items():
        plan = plan_export(make(), "argo", tmp_path, schedule, image=IMAGE)
        doc = argo.document(make(), __import__("featherflow.export.common", fromlist=["x"]).task_facts(make()),
                            schedule, IMAGE, plan)
        text = plan.files[f"{make().name}.yaml"][0].decode("utf-8")
        assert parse_yaml(text) == doc, name


@given(st.text(max_size=40))
def test_argo_scalars_round_trip(text):
    assert json.loads(argo.scalar(text)) == text
    assert "\n" not in argo.scalar(text) and "\u2028" not in argo.scalar(text)


def test_argo_mapping(tmp_path):
    export_flows.write_scripts(tmp_path)
    plan = plan_export(export_flows.scheduled(), "argo", tmp_path, export_flows.SCHEDULE, image=IMAGE)
    doc = parse_yaml(plan.files["Nightly_Report.v2.yaml"][0].decode())
    assert doc["kind"] == "CronWorkflow" and doc["metadata"]["name"] == "nightly-report-v2"
    spec = doc["spec"]
    assert spec["schedules"] == ["30 2 * * *"] and spec["timezone"] == "Europe/Berlin"
    assert spec["concurrencyPolicy"] == "Forbid" and spec["startingDeadlineSeconds"] == argo.LATEST_DEADLINE
    templates = {t["name"]: t for t in spec["workflowSpec"]["templates"]}
    tasks = {t["name"]: t for t in templates["main"]["dag"]["tasks"]}
    assert templates["main"]["dag"]["failFast"] is False
    assert set(tasks) == {"extract-data", "extract-data-2", "notify"}  # ids sanitised, clash resolved
    assert tasks["extract-data-2"]["depends"] == "(extract-data.Succeeded || extract-data.Skipped)"
    assert tasks["notify"]["depends"] == ("extract-data.Failed || extract-data.Errored || "
                                          "extract-data-2.Failed || extract-data-2.Errored")
    first = templates["task-extract-data"]
    assert first["retryStrategy"] == {"limit": "3", "retryPolicy": "Always",
                                      "backoff": {"duration": "10s", "factor": "1.5"}}
    assert first["activeDeadlineSeconds"] == 3  # 2.5 s rounded up, and said so
    assert first["synchronization"]["semaphores"][0]["configMapKeyRef"]["key"] == "heavy"
    assert first["container"]["args"] == ["/featherflow/tasks/record.py", "{{workflow.scheduledTime}}"]
    assert any("catch-up all" in line for line in plan.lost)
    fan = parse_yaml(plan_export(export_flows.fanin(), "argo", tmp_path, image=IMAGE).files["fanin.yaml"][0].decode())
    assert fan["kind"] == "WorkflowTemplate"
    produce = {t["name"]: t for t in fan["spec"]["templates"]}["task-produce"]
    assert [p["name"] for p in produce["outputs"]["parameters"]] == ["multi", "plain"]


@pytest.mark.parametrize("cron", ["* * * * * */10", "0 0 L * *"])
def test_argo_refuses_seconds_and_L(tmp_path, cron):
    export_flows.write_scripts(tmp_path)
    schedule = ScheduleFacts("s", cron, "UTC", "latest", "skip")
    with pytest.raises(Exception, match="cannot be exported to Argo"):
        plan_export(export_flows.rules(), "argo", tmp_path, schedule, image=IMAGE)


# -- the CLI -------------------------------------------------------------------------------

def simple_project(project):
    project.write_task("step.py", "import os\nprint(os.environ['TMP_DIR'])\n", executable=False)
    project.write_task("other.sh", "echo hi\n", executable=False)
    project.write_flow({"name": "etl", "params": {"day": "x"}, "tasks": [
        {"id": "a", "script": "step.py", "args": ["{{ params.day }}"]},
        {"id": "b", "script": "other.sh", "depends_on": ["a"]}]})


def test_cli_writes_the_dag_scripts_and_airflowignore_deterministically(project, tmp_path):
    simple_project(project)
    out = tmp_path / "dags"
    first = project.cli("export", "etl", "--to", "airflow", "--out", out)
    assert first.code == 0, first.err
    assert f"wrote {out / 'etl.py'}" in first.out
    assert "not carried over: TMP_DIR/TEMP_DIR" in first.err and "tasks a use it" in first.err
    assert (out / ".airflowignore").read_text() == "featherflow_tasks/\n"
    assert (out / "featherflow_tasks/etl/step.py").read_text() == (project.tasks / "step.py").read_text()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = project.cli("export", "etl", "--to", "airflow", "--out", out)
    assert again.code == 0 and {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    ast.parse((out / "etl.py").read_text())
    (out / ".airflowignore").write_text("mine/\n")  # a file of the user's keeps its lines
    assert project.cli("export", "etl", "--to", "airflow", "--out", out).code == 0
    assert (out / ".airflowignore").read_text() == "mine/\nfeatherflow_tasks/\n"
    assert project.cli("export", "etl", "--to", "airflow", "--out", out).code == 0
    assert (out / ".airflowignore").read_text() == "mine/\nfeatherflow_tasks/\n"


def test_cli_start_date_comes_from_the_schedule_or_the_option(project, tmp_path):
    simple_project(project)
    assert project.cli("schedule", "add", "etl", "--cron", "0 4 * * *", "--tz", "UTC", "--name", "n").code == 0
    a = project.cli("export", "etl", "--to", "airflow", "--schedule", "n", "--out", tmp_path / "a")
    b = project.cli("export", "etl", "--to", "airflow", "--schedule", "n", "--out", tmp_path / "b")
    assert a.code == b.code == 0, a.err
    assert (tmp_path / "a/etl.py").read_bytes() == (tmp_path / "b/etl.py").read_bytes()
    c = project.cli("export", "etl", "--to", "airflow", "--schedule", "n", "--start-date", "2026-03-01",
                    "--out", tmp_path / "c")
    assert "start_date=pendulum.datetime(2026, 3, 1, 0, 0, 0" in (tmp_path / "c/etl.py").read_text(), c.err
    assert "not carried over: on_interrupt resume" in a.err
    project.write_flow({"name": "other", "tasks": [{"id": "x", "script": "other.sh"}]})
    wrong = project.cli("export", "other", "--to", "airflow", "--schedule", "n", "--out", tmp_path / "d")
    assert wrong.code == 2 and "schedule 'n' runs flow 'etl', not 'other'" in wrong.err


def test_cli_strict_writes_nothing_and_exits_1_when_anything_is_lost(project, tmp_path):
    simple_project(project)
    result = project.cli("export", "etl", "--to", "airflow", "--strict", "--out", tmp_path / "out")
    assert result.code == 1
    assert "not carried over: TMP_DIR" in result.err and "error: --strict" in result.err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv,message", [
    (["export", "nope", "--to", "airflow"], "flow 'nope' not found"),
    (["export", "etl", "--to", "argo"], "--to argo needs --image"),
    (["export", "etl", "--to", "airflow", "--schedule", "ghost"], "no schedule named 'ghost'"),
    (["export", "etl", "--to", "airflow", "--start-date", "soon"], "bad --start-date 'soon'"),
])
def test_cli_bad_input_is_one_error_line(project, tmp_path, argv, message):
    simple_project(project)
    result = project.cli(*argv, "--out", tmp_path / "o")
    assert result.code == 2
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.err
    assert "Traceback" not in result.err and not (tmp_path / "o").exists()


def test_cli_argo_with_a_seconds_cron_is_refused(project, tmp_path):
    simple_project(project)
    assert project.cli("schedule", "add", "etl", "--cron", "* * * * * */10", "--name", "fast").code == 0
    result = project.cli("export", "etl", "--to", "argo", "--image", "i:1", "--schedule", "fast",
                         "--out", tmp_path / "o")
    assert result.code == 2 and "5 fields, no seconds field" in result.err
    ok = project.cli("export", "etl", "--to", "argo", "--image", "i:1", "--out", tmp_path / "o")
    assert ok.code == 0 and parse_yaml((tmp_path / "o/etl.yaml").read_text())["kind"] == "WorkflowTemplate"


# -- the code the exported files run, run here ----------------------------------------------

class _Run:
    def __init__(self, run_type, logical_date=None):
        self.run_type, self.logical_date = run_type, logical_date


class _Enum:
    def __init__(self, value):
        self.value = value


class _TI:
    def __init__(self, pushed):
        self.pushed = pushed

    def xcom_pull(self, task_ids):
        return self.pushed.get(task_ids)


def dag_helpers(tmp_path):
    """The DAG file's helper functions (raw, ff_*), taken from a generated DAG and run without Airflow."""
    _, text, _ = next(dag_files(tmp_path))
    tree = ast.parse(text)
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    module = ast.Module(body=ast.parse("import json\nfrom datetime import timezone").body + funcs, type_ignores=[])
    scope = {}
    exec(compile(module, "<dag helpers>", "exec"), scope)
    return scope


def test_the_dags_helpers_render_the_contract_as_featherflow_does(tmp_path):
    from datetime import datetime, timedelta, timezone

    h = dag_helpers(tmp_path)
    assert h["ff_text"]("x {{ y }}") == "x {{ y }}" and h["ff_text"](3) == "3" and h["ff_text"](True) == "true"
    assert h["ff_text"]([1, "ü"]) == '[1, "ü"]'
    assert h["ff_params"]({"b": 1, "a": "é"}) == '{"a": "é", "b": 1}'
    slot = datetime(2026, 1, 1, 4, 0, tzinfo=timezone(timedelta(hours=1)))
    assert h["ff_scheduled_at"](_Run(_Enum("scheduled"), slot)) == "2026-01-01T03:00:00Z"
    assert h["ff_scheduled_at"](_Run("manual", slot)) == ""  # a manual run has no slot, as in Featherflow
    assert h["ff_scheduled_at"](_Run("scheduled", None)) == ""
    assert h["ff_trigger"](_Run(_Enum("scheduled"))) == "schedule" and h["ff_trigger"](_Run("manual")) == "manual"
    ti = _TI({"a": json.dumps({"K": "v\n{{ x }}"})})
    assert h["ff_output"](ti, "a", "K") == "v\n{{ x }}" and h["ff_output"](ti, "a", "nope") == ""
    assert h["ff_output"](ti, "b", "K") == ""
    assert h["raw"]("/srv/{%dags") == '{% raw %}/srv/{% endraw %}{{ "{" }}{% raw %}%dags{% endraw %}'


def test_the_argo_wrapper_runs_the_script_and_splits_its_outputs(tmp_path):
    """The container command of an exported task, run here with bash: args arrive as they are,
    the attempt is Argo's retries + 1, and each output key becomes the file Argo reads."""
    import subprocess

    export_flows.write_scripts(tmp_path / "tasks")
    outputs = tmp_path / "outputs"
    wrapper = argo.WRAPPER.replace(argo.OUTPUTS_DIR, str(outputs)).replace(
        "/tmp/featherflow-outputs.txt", str(tmp_path / "outputs.txt"))
    env = {"PATH": os.environ["PATH"], "FEATHERFLOW_RUN_ID": "wf-1", "FEATHERFLOW_TASK_ID": "produce",
           "FF_RETRIES": "1", "FEATHERFLOW_TMP_ROOT": str(tmp_path / "tmp"), "FEATHERFLOW_PYTHON": sys.executable,
           "EXPORT_TEST_RESULTS": str(tmp_path), "HOSTILE_ENV": export_flows.HOSTILE,
           "HOSTILE_ONE_LINE": "one line"}
    proc = subprocess.run(["bash", "-c", wrapper, "featherflow-task", str(tmp_path / "tasks/produce.py"),
                           export_flows.HOSTILE, ""], env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "produce.2.argv").read_bytes() == export_flows.HOSTILE.encode() + b"\0"
    assert (outputs / "plain").read_text() == "one line"
    assert (outputs / "multi").read_text(encoding="utf-8") == export_flows.HOSTILE
    env["FF_RETRIES"] = "0"  # the first attempt: produce.py fails it, and no output is kept
    (outputs / "plain").unlink()
    proc = subprocess.run(["bash", "-c", wrapper, "featherflow-task", str(tmp_path / "tasks/produce.py")],
                          env=env, capture_output=True, timeout=60)
    assert proc.returncode == 3 and not (outputs / "plain").exists()


def test_cli_exports_a_validated_flow_with_run_if_cleanup_and_outputs(project, tmp_path):
    """The same mappings from a flow file that `featherflow validate` accepts (issue 16's fields)."""
    project.write_task("t.sh", "echo hi\n", executable=False)
    project.write_flow({"name": "rich", "tasks": [
        {"id": "a", "script": "t.sh"},
        {"id": "b", "script": "t.sh", "depends_on": ["a"], "run_if": "all_done",
         "args": ["{{ tasks.a.outputs.K }}"]},
        {"id": "c", "script": "t.sh", "depends_on": ["a"], "run_if": "any_failed"},
        {"id": "z", "script": "t.sh", "cleanup": True}]})
    assert project.cli("validate", "rich").code == 0
    result = project.cli("export", "rich", "--to", "airflow", "--out", tmp_path / "o")
    assert result.code == 0, result.err
    text = (tmp_path / "o/rich.py").read_text()
    ast.parse(text)
    assert 'trigger_rule="all_done"' in text and 'trigger_rule="one_failed"' in text
    assert 'tasks["z"].as_teardown(on_failure_fail_dagrun=True)' in text
    assert '{{ ff_output(ti, \\"a\\", \\"K\\") }}' in text and "featherflow_failed" in text
    argo_run = project.cli("export", "rich", "--to", "argo", "--image", "i:1", "--out", tmp_path / "o")
    assert argo_run.code == 0, argo_run.err
    doc = parse_yaml((tmp_path / "o/rich.yaml").read_text())
    tasks = {t["name"]: t for t in doc["spec"]["templates"][0]["dag"]["tasks"]}
    assert tasks["c"]["depends"] == "a.Failed || a.Errored"
    assert tasks["z"]["depends"].startswith("(a.Succeeded || a.Failed")


def test_a_pool_set_in_the_database_is_exported_with_its_slots(project, tmp_path):
    """`airflow pools set` and the Argo semaphore ConfigMap take the slots `pool set` gave a pool;
    a pool never set keeps Featherflow's default of 1."""
    project.write_task("step.sh", "echo hi\n", executable=False)
    project.write_flow({"name": "etl", "tasks": [{"id": "a", "script": "step.sh", "pool": "heavy"},
                                                 {"id": "b", "script": "step.sh", "pool": "light"}]})
    assert project.cli("pool", "set", "heavy", "3").code == 0
    done = project.cli("export", "etl", "--to", "airflow", "--out", tmp_path / "dags")
    assert done.code == 0, done.err
    assert "airflow pools set heavy 3 " in done.out and "airflow pools set light 1 " in done.out
    done = project.cli("export", "etl", "--to", "argo", "--image", "img:1", "--out", tmp_path / "argo")
    assert done.code == 0, done.err
    assert "--from-literal=heavy=3 --from-literal=light=1" in done.out
