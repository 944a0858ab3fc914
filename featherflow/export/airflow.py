"""A flow as an Airflow DAG file: BashOperators that run the same scripts with the same contract.

Nothing from the flow reaches the shell or Jinja. Every task runs one fixed COMMAND (a bash
wrapper, the same for every task); the task's script, argument words and env values reach it
as environment variables, so the shell never parses them. Airflow renders every `env` value
as a Jinja template, so each literal is written inside `{% raw %}...{% endraw %}` (split at
each `{%`, whose `{` is written as `{{ "{" }}`, so no literal can close a raw block), and each
placeholder becomes a small template expression: `{{ ff_text(params["X"]) }}`, `{{ run_id }}`,
`{{ ff_output(ti, "A", "KEY") }}`. No templated string ends in `.sh`: Airflow would read it
as the name of a template file.

The DAG imports what Airflow 3 has (`airflow.sdk`, the standard provider) and falls back to
Airflow 2.10's names. Its schedule is an explicit CronTriggerTimetable (a bare cron string
means "at the end of the interval" on 2.x and "at the time" on 3.x), and its start_date is a
fixed date written at export (never the export's wall clock): the same flow gives the same bytes.
"""

import json
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional

from featherflow import flow as flowmod
from featherflow.export.common import Plan, ScheduleFacts, TaskFacts, read_outputs, script_files, upstream

TASKS_DIR = "featherflow_tasks"  # beside the DAG file: featherflow_tasks/<flow>/<script>
WATCHER = "featherflow_failed"
ALLOW_RUNS = 16  # max_active_runs for overlap "allow"

# The wrapper every task runs. It reads the task from _FF_* variables, removes them from the
# environment, makes the run's TMP_DIR, runs the script as Featherflow does (stdin from
# /dev/null) and, for a task whose outputs others read, prints them as one JSON line last
# (BashOperator pushes the last line as the task's XCom value).
COMMAND = r"""ff_args=()
for ((ff_i = 0; ff_i < ${_FF_ARGC:-0}; ff_i++)); do ff_v=_FF_ARG_$ff_i; ff_args+=("${!ff_v}"); done
ff_script=$_FF_SCRIPT ff_read=${_FF_READ_OUTPUTS:-} ff_py=${FEATHERFLOW_PYTHON:-python3}
for ff_v in "${!_FF_@}"; do unset "$ff_v"; done
ff_run=${FEATHERFLOW_RUN_ID//[^A-Za-z0-9_.:+-]/_}
export TMP_DIR="${FEATHERFLOW_TMP_ROOT:-${TMPDIR:-/tmp}}/featherflow/$FEATHERFLOW_FLOW_NAME/$ff_run"
export TEMP_DIR=$TMP_DIR FEATHERFLOW_OUTPUT_DIR="${FEATHERFLOW_OUTPUT_DIR:-$PWD/featherflow_output}"
export FEATHERFLOW_OUTPUT_FILE="$TMP_DIR/outputs/$FEATHERFLOW_TASK_ID.$FEATHERFLOW_ATTEMPT"
mkdir -p "$TMP_DIR/outputs" && : >"$FEATHERFLOW_OUTPUT_FILE" || exit 1
case $ff_script in
  *.py) "$ff_py" -u "$ff_script" "${ff_args[@]}" </dev/null ;;
  *.sh) "$BASH" "$ff_script" "${ff_args[@]}" </dev/null ;;
  *) "$ff_script" "${ff_args[@]}" </dev/null ;;
esac
ff_rc=$?
if [ "$ff_rc" -eq 0 ] && [ -n "$ff_read" ]; then
  "$ff_py" -c "$ff_read" "$FEATHERFLOW_OUTPUT_FILE" || ff_rc=1
fi
exit "$ff_rc"
"""
# KEY=VALUE lines and the KEY<<DELIM heredoc form, as one JSON object on one line.
READ_OUTPUTS = r"""import json, sys
lines = open(sys.argv[1], encoding="utf-8", errors="surrogateescape").read().split("\n")
out, i = {}, 0
while i < len(lines):
    line, i = lines[i], i + 1
    if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
        key, delim = line.split("<<", 1)
        value = []
        while i < len(lines) and lines[i] != delim:
            value.append(lines[i])
            i += 1
        out[key], i = "\n".join(value), i + 1
    elif "=" in line:
        key, value = line.split("=", 1)
        out[key] = value
print(json.dumps(out))
"""

HEADER = '''"""Airflow DAG of the Featherflow flow __NAME__, written by `featherflow export --to airflow`.

Export again rather than edit. Each task runs its script from __TASKS__/ beside this file
through COMMAND, with Featherflow's environment contract; see "Export" in Featherflow's README.
"""

import json
import os
from datetime import timedelta, timezone

import pendulum

try:  # Airflow 3
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.sdk import DAG
except ImportError:  # Airflow 2.10+
    from airflow import DAG
    from airflow.operators.bash import BashOperator
from airflow import __version__ as AIRFLOW_VERSION
from airflow.timetables.trigger import CronTriggerTimetable

HERE = os.path.dirname(os.path.abspath(__file__))
AIRFLOW_3_2 = tuple(int(p) if p.isdigit() else 0 for p in AIRFLOW_VERSION.split(".")[:2]) >= (3, 2)


def raw(text):
    """Text Jinja leaves as it is (for a path known only when Airflow reads this file)."""
    parts = text.split("{%")
    return "{% raw %}" + parts[0] + "{% endraw %}" + "".join(
        '{{ "{" }}{% raw %}%' + part + "{% endraw %}" for part in parts[1:])


def ff_text(value):
    """A param as Featherflow writes it into a value: a string as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def ff_params(params):
    """FEATHERFLOW_PARAMS: the run's params as JSON (keys sorted, non-ASCII kept)."""
    return json.dumps({key: params[key] for key in params}, sort_keys=True, ensure_ascii=False)


def _kind(dag_run):
    kind = getattr(dag_run, "run_type", "manual")
    return str(getattr(kind, "value", kind))


def ff_trigger(dag_run):
    """FEATHERFLOW_TRIGGER: "schedule" for a scheduled run, else Airflow's run type (manual, ...)."""
    return {"scheduled": "schedule"}.get(_kind(dag_run), _kind(dag_run))


def ff_scheduled_at(dag_run):
    """FEATHERFLOW_SCHEDULED_AT: a scheduled run's slot in UTC, empty otherwise (as in Featherflow;
    a manual run has no logical date on Airflow 3)."""
    when = getattr(dag_run, "logical_date", None)
    if _kind(dag_run) != "scheduled" or when is None:
        return ""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def ff_output(ti, task_id, key):
    """tasks.ID.outputs.KEY: the key from the JSON line that task ID pushed as its XCom."""
    pushed = ti.xcom_pull(task_ids=task_id)
    return json.loads(pushed).get(key, "") if pushed else ""


def backoff(multiplier):
    """retry_backoff: a multiplier on Airflow >= 3.2; older versions take only a bool."""
    return {"retry_exponential_backoff": multiplier} if AIRFLOW_3_2 else {}


COMMAND = r"""__COMMAND__"""
PARAMS = json.loads(__PARAMS__)
'''


def build(flow: flowmod.Flow, tasks: List[TaskFacts], schedule: Optional[ScheduleFacts], start: datetime,
          tasks_dir: Path, plan: Plan) -> None:
    """Put the DAG file, the task scripts and the .airflowignore for them into `plan`."""
    dag = render(flow, tasks, schedule, start, plan)
    plan.files[f"{flow.name}.py"] = (dag.encode("utf-8"), 0o644)
    plan.files.update(script_files(tasks, tasks_dir, f"{TASKS_DIR}/{flow.name}"))
    plan.files[".airflowignore"] = (f"{TASKS_DIR}/\n".encode(), 0o644)
    plan.warnings.append("FEATHERFLOW_RUN_ID and {{ run_id }} are Airflow's run id, a string "
                         "such as manual__2026-01-01T03:00:00+00:00 (Featherflow's is a number)")
    if schedule is not None:
        _schedule_mapping(schedule, plan)
    for task in tasks:
        if task.rule == "one_failed":
            plan.warnings.append(f"task {task.id}: run_if one_failed is Airflow's one_failed, which starts "
                                 "the task at the first failure, without waiting for the other deps")
        if task.cleanup:
            plan.lost.append(f"task {task.id}: a cleanup task is an Airflow teardown; it gets no "
                             "FEATHERFLOW_RUN_STATE or FEATHERFLOW_FAILED_TASKS, and a cancelled run "
                             "(marked failed in Airflow) does not start it")
    pools = sorted({t.pool for t in tasks if t.pool})
    for pool in pools:
        if pool != "default_pool":  # Airflow's own: setting it would change its slots
            plan.commands.append(f"airflow pools set {pool} {plan.pool_slots.get(pool, 1)} "
                                 f"'Featherflow pool {pool}: set its slots'")
    if pools:
        plan.warnings.append(f"pools {', '.join(pools)} must exist in Airflow (the commands below make "
                             "them with the slots `featherflow pool set` gave them, 1 for a pool never set)")
    if not flow.declares_params:
        plan.lost.append("the flow has no params block, so a Featherflow run takes any params; "
                         "an Airflow run takes only those the DAG declares (none)")


def _params(flow: flowmod.Flow, schedule: Optional[ScheduleFacts]) -> Dict:
    return {**flow.params, **(schedule.params if schedule else {})}


def _schedule_mapping(schedule: ScheduleFacts, plan: Plan) -> None:
    """Catch-up and overlap as Airflow's catchup and max_active_runs."""
    if schedule.catchup == "none":
        plan.lost.append("catch-up none: Airflow has no \"never run a missed slot\"; with catchup=False "
                         "it runs the latest missed one (as catch-up latest)")
    if schedule.overlap == "skip":
        plan.warnings.append("overlap skip is max_active_runs=1: Airflow queues a slot that would overlap "
                             "a running run instead of skipping it")
    elif schedule.overlap == "queue":
        plan.warnings.append("overlap queue is max_active_runs=1: Airflow keeps the queued runs "
                             "in order, with the catch-up setting deciding which missed ones exist")
    else:
        plan.warnings.append(f"overlap allow is max_active_runs={ALLOW_RUNS} (Featherflow sets no limit)")


def raw(text: str) -> str:
    """`text` as a Jinja template that renders to exactly `text`: raw blocks, split where the
    text has a `{%` (which could close one), whose `{` is written as the expression {{ "{" }}."""
    parts = text.split("{%")
    head = _block(parts[0]) if parts[0] else ""
    return head + "".join('{{ "{" }}' + _block("%" + part) for part in parts[1:])


def _block(text: str) -> str:
    return "{% raw %}" + text + "{% endraw %}"


def template(words: tuple, flow_name: str) -> str:
    """A flow value (its pieces) as a Jinja template."""
    out = []
    for piece in words:
        if piece.kind == "text":
            out.append(raw(piece.text))
        elif piece.kind == "param":
            out.append(f"{{{{ ff_text(params[{json.dumps(piece.text)}]) }}}}")
        elif piece.kind == "output":
            out.append(f"{{{{ ff_output(ti, {json.dumps(piece.task)}, {json.dumps(piece.key)}) }}}}")
        else:
            out.append({"run_id": "{{ run_id }}", "scheduled_at": "{{ ff_scheduled_at(dag_run) }}",
                        "flow": raw(flow_name)}[piece.text])
    return "".join(out)


def py(text: str) -> str:
    """A Python string literal (ASCII, deterministic)."""
    return json.dumps(text)


def render(flow: flowmod.Flow, tasks: List[TaskFacts], schedule: Optional[ScheduleFacts],
           start: datetime, plan: Plan) -> str:
    """The DAG file's text; approximations and losses go to `plan`."""
    outputs = read_outputs(tasks)
    ups = upstream(tasks)
    tasks_rel = f"{TASKS_DIR}/{flow.name}"
    text = [HEADER.replace("__NAME__", repr(flow.name)).replace("__TASKS__", tasks_rel)
            .replace("__PARAMS__", py(json.dumps(_params(flow, schedule), ensure_ascii=False)))
            .replace("__COMMAND__", raw(COMMAND))]
    text.append(_dag_open(flow, schedule, start, plan))
    for task in tasks:
        text.append(_task(flow, task, tasks_rel, outputs, plan))
    text.append("")
    for task in tasks:
        if ups[task.id]:
            deps = ", ".join(f"tasks[{py(d)}]" for d in ups[task.id])
            text.append(f"    [{deps}] >> tasks[{py(task.id)}]")
    for task in tasks:
        if task.cleanup:
            text.append(f"    tasks[{py(task.id)}].as_teardown(on_failure_fail_dagrun=True)")
    if any(t.cleanup or t.rule != "all_success" for t in tasks):
        text.append(_watcher(tasks))
    return "\n".join(text).rstrip("\n") + "\n"


def _dag_open(flow: flowmod.Flow, schedule: Optional[ScheduleFacts], start: datetime, plan: Plan) -> str:
    if schedule is None:
        when, catchup, runs = "None", False, 1
    else:
        when = f"CronTriggerTimetable({py(schedule.cron)}, timezone={py(schedule.tz)})"
        catchup = schedule.catchup == "all"
        runs = ALLOW_RUNS if schedule.overlap == "allow" else 1
    lines = [
        "",
        "tasks = {}",
        "with DAG(",
        f"    dag_id={py(flow.name)},",
        f"    description={py(flow.description or 'Featherflow flow ' + flow.name)},",
        f"    schedule={when},",
        f"    start_date=pendulum.datetime({start.year}, {start.month}, {start.day}, {start.hour}, "
        f"{start.minute}, {start.second}, tz=\"UTC\"),",
        f"    catchup={catchup},",
        f"    max_active_runs={runs},",
    ]
    if flow.max_parallel:
        lines.append(f"    max_active_tasks={flow.max_parallel},")
    lines += [
        "    params=PARAMS,",
        '    user_defined_macros={"ff_text": ff_text, "ff_params": ff_params, "ff_trigger": ff_trigger,',
        '                         "ff_scheduled_at": ff_scheduled_at, "ff_output": ff_output},',
        '    jinja_environment_kwargs={"keep_trailing_newline": True},',
        '    tags=["featherflow"],',
        ") as dag:",
    ]
    return "\n".join(lines)


def _task(flow: flowmod.Flow, task: TaskFacts, tasks_rel: str, outputs: Dict[str, List[str]], plan: Plan) -> str:
    env = [("_FF_SCRIPT", raw(f"{tasks_rel}/{task.script}")), ("_FF_ARGC", raw(str(len(task.args))))]
    env += [(f"_FF_ARG_{i}", template(word, flow.name)) for i, word in enumerate(task.args)]
    if task.id in outputs:
        env.append(("_FF_READ_OUTPUTS", raw(READ_OUTPUTS)))
    # The contract first and the task's own env after it: as in Featherflow, the task's wins.
    env += [
        ("FEATHERFLOW_RUN_ID", "{{ run_id }}"), ("FEATHERFLOW_RUN_UID", "{{ run_id }}"),
        ("FEATHERFLOW_ATTEMPT", "{{ ti.try_number }}"), ("FEATHERFLOW_PARAMS", "{{ ff_params(params) }}"),
        ("FEATHERFLOW_TRIGGER", "{{ ff_trigger(dag_run) }}"),
        ("FEATHERFLOW_SCHEDULED_AT", "{{ ff_scheduled_at(dag_run) }}"),
        ("FEATHERFLOW_FLOW_NAME", raw(flow.name)), ("FEATHERFLOW_TASK_ID", raw(task.id)),
    ]
    own = dict(task.env)
    env = [(name, value) for name, value in env if name not in own]
    env += [(name, template(words, flow.name)) for name, words in task.env]
    lines = [f"    tasks[{py(task.id)}] = BashOperator(", f"        task_id={py(task.id)},",
             "        bash_command=COMMAND,", "        env={"]
    lines += [f"            {py(name)}: {py(value)}," for name, value in env]
    lines += [
        "        },",
        "        append_env=True,",
        "        cwd=raw(HERE),",
        "        skip_on_exit_code=None,",
        f"        do_xcom_push={task.id in outputs},",
        f"        retries={task.retries},",
        f"        retry_delay=timedelta(seconds={task.retry_delay!r}),",
    ]
    if task.retries and task.retry_backoff != 1:
        lines.append(f"        **backoff({task.retry_backoff!r}),")
        plan.warnings.append(
            f"task {task.id}: retry_backoff {task.retry_backoff:g} is Airflow's retry_exponential_backoff "
            "on Airflow >= 3.2, which waits between 1x and 2x each delay (its jitter); "
            "older Airflow ignores it (it takes only true/false)")
    if task.timeout:
        lines.append(f"        execution_timeout=timedelta(seconds={task.timeout!r}),")
        plan.warnings.append(
            f"task {task.id}: timeout {task.timeout:g}s is execution_timeout: Airflow sends TERM to the "
            "task and never KILL (Featherflow sends KILL 10 s after TERM)")
    if not task.cleanup:
        lines.append(f"        trigger_rule={py(task.rule)},")
    if task.pool:
        lines.append(f"        pool={py(task.pool)},")
    lines.append("    )")
    return "\n".join(lines)


def _watcher(tasks: List[TaskFacts]) -> str:
    """A leaf that fails when any non-cleanup task failed: Airflow decides a run's state from
    its leaves only, and a leaf that ran after a failure (all_done, one_failed) succeeds."""
    ids = {t.id for t in tasks}
    watcher = WATCHER
    while watcher in ids:
        watcher += "_"
    work = ", ".join(f"tasks[{py(t.id)}]" for t in tasks if not t.cleanup)
    message = "a task of this run failed, so the run fails (as in Featherflow)"
    return "\n".join([
        f"    tasks[{py(watcher)}] = BashOperator(",
        f"        task_id={py(watcher)},",
        f"        bash_command={py(raw(f'echo {message!r}; exit 1'))},",
        '        trigger_rule="one_failed",',
        "        retries=0,",
        "        skip_on_exit_code=None,",
        "        do_xcom_push=False,",
        "    )",
        f"    [{work}] >> tasks[{py(watcher)}]",
    ])
