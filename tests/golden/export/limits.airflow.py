"""Airflow DAG of the Featherflow flow 'limits', written by `featherflow export --to airflow`.

Export again rather than edit. Each task runs its script from featherflow_tasks/limits/ beside this file
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


COMMAND = r"""{% raw %}ff_args=()
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
{% endraw %}"""
PARAMS = json.loads("{}")


tasks = {}
with DAG(
    dag_id="limits",
    description="Featherflow flow limits",
    schedule=None,
    start_date=pendulum.datetime(2000, 1, 1, 0, 0, 0, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    user_defined_macros={"ff_text": ff_text, "ff_params": ff_params, "ff_trigger": ff_trigger,
                         "ff_scheduled_at": ff_scheduled_at, "ff_output": ff_output},
    jinja_environment_kwargs={"keep_trailing_newline": True},
    tags=["featherflow"],
) as dag:
    tasks["slow"] = BashOperator(
        task_id="slow",
        bash_command=COMMAND,
        env={
            "_FF_SCRIPT": "{% raw %}featherflow_tasks/limits/slow.sh{% endraw %}",
            "_FF_ARGC": "{% raw %}0{% endraw %}",
            "FEATHERFLOW_RUN_ID": "{{ run_id }}",
            "FEATHERFLOW_RUN_UID": "{{ run_id }}",
            "FEATHERFLOW_ATTEMPT": "{{ ti.try_number }}",
            "FEATHERFLOW_PARAMS": "{{ ff_params(params) }}",
            "FEATHERFLOW_TRIGGER": "{{ ff_trigger(dag_run) }}",
            "FEATHERFLOW_SCHEDULED_AT": "{{ ff_scheduled_at(dag_run) }}",
            "FEATHERFLOW_FLOW_NAME": "{% raw %}limits{% endraw %}",
            "FEATHERFLOW_TASK_ID": "{% raw %}slow{% endraw %}",
        },
        append_env=True,
        cwd=raw(HERE),
        skip_on_exit_code=None,
        do_xcom_push=False,
        retries=0,
        retry_delay=timedelta(seconds=0.0),
        execution_timeout=timedelta(seconds=2.0),
        trigger_rule="all_success",
    )
    tasks["ninety_nine"] = BashOperator(
        task_id="ninety_nine",
        bash_command=COMMAND,
        env={
            "_FF_SCRIPT": "{% raw %}featherflow_tasks/limits/exit99.sh{% endraw %}",
            "_FF_ARGC": "{% raw %}0{% endraw %}",
            "FEATHERFLOW_RUN_ID": "{{ run_id }}",
            "FEATHERFLOW_RUN_UID": "{{ run_id }}",
            "FEATHERFLOW_ATTEMPT": "{{ ti.try_number }}",
            "FEATHERFLOW_PARAMS": "{{ ff_params(params) }}",
            "FEATHERFLOW_TRIGGER": "{{ ff_trigger(dag_run) }}",
            "FEATHERFLOW_SCHEDULED_AT": "{{ ff_scheduled_at(dag_run) }}",
            "FEATHERFLOW_FLOW_NAME": "{% raw %}limits{% endraw %}",
            "FEATHERFLOW_TASK_ID": "{% raw %}ninety_nine{% endraw %}",
        },
        append_env=True,
        cwd=raw(HERE),
        skip_on_exit_code=None,
        do_xcom_push=False,
        retries=0,
        retry_delay=timedelta(seconds=0.0),
        trigger_rule="all_success",
        pool="default_pool",
    )
    tasks["saw_timeout"] = BashOperator(
        task_id="saw_timeout",
        bash_command=COMMAND,
        env={
            "_FF_SCRIPT": "{% raw %}featherflow_tasks/limits/mark.sh{% endraw %}",
            "_FF_ARGC": "{% raw %}0{% endraw %}",
            "FEATHERFLOW_RUN_ID": "{{ run_id }}",
            "FEATHERFLOW_RUN_UID": "{{ run_id }}",
            "FEATHERFLOW_ATTEMPT": "{{ ti.try_number }}",
            "FEATHERFLOW_PARAMS": "{{ ff_params(params) }}",
            "FEATHERFLOW_TRIGGER": "{{ ff_trigger(dag_run) }}",
            "FEATHERFLOW_SCHEDULED_AT": "{{ ff_scheduled_at(dag_run) }}",
            "FEATHERFLOW_FLOW_NAME": "{% raw %}limits{% endraw %}",
            "FEATHERFLOW_TASK_ID": "{% raw %}saw_timeout{% endraw %}",
        },
        append_env=True,
        cwd=raw(HERE),
        skip_on_exit_code=None,
        do_xcom_push=False,
        retries=0,
        retry_delay=timedelta(seconds=0.0),
        trigger_rule="one_failed",
    )
    tasks["saw_99"] = BashOperator(
        task_id="saw_99",
        bash_command=COMMAND,
        env={
            "_FF_SCRIPT": "{% raw %}featherflow_tasks/limits/mark.sh{% endraw %}",
            "_FF_ARGC": "{% raw %}0{% endraw %}",
            "FEATHERFLOW_RUN_ID": "{{ run_id }}",
            "FEATHERFLOW_RUN_UID": "{{ run_id }}",
            "FEATHERFLOW_ATTEMPT": "{{ ti.try_number }}",
            "FEATHERFLOW_PARAMS": "{{ ff_params(params) }}",
            "FEATHERFLOW_TRIGGER": "{{ ff_trigger(dag_run) }}",
            "FEATHERFLOW_SCHEDULED_AT": "{{ ff_scheduled_at(dag_run) }}",
            "FEATHERFLOW_FLOW_NAME": "{% raw %}limits{% endraw %}",
            "FEATHERFLOW_TASK_ID": "{% raw %}saw_99{% endraw %}",
        },
        append_env=True,
        cwd=raw(HERE),
        skip_on_exit_code=None,
        do_xcom_push=False,
        retries=0,
        retry_delay=timedelta(seconds=0.0),
        trigger_rule="one_failed",
    )
    tasks["never"] = BashOperator(
        task_id="never",
        bash_command=COMMAND,
        env={
            "_FF_SCRIPT": "{% raw %}featherflow_tasks/limits/mark.sh{% endraw %}",
            "_FF_ARGC": "{% raw %}0{% endraw %}",
            "FEATHERFLOW_RUN_ID": "{{ run_id }}",
            "FEATHERFLOW_RUN_UID": "{{ run_id }}",
            "FEATHERFLOW_ATTEMPT": "{{ ti.try_number }}",
            "FEATHERFLOW_PARAMS": "{{ ff_params(params) }}",
            "FEATHERFLOW_TRIGGER": "{{ ff_trigger(dag_run) }}",
            "FEATHERFLOW_SCHEDULED_AT": "{{ ff_scheduled_at(dag_run) }}",
            "FEATHERFLOW_FLOW_NAME": "{% raw %}limits{% endraw %}",
            "FEATHERFLOW_TASK_ID": "{% raw %}never{% endraw %}",
        },
        append_env=True,
        cwd=raw(HERE),
        skip_on_exit_code=None,
        do_xcom_push=False,
        retries=0,
        retry_delay=timedelta(seconds=0.0),
        trigger_rule="all_success",
    )

    [tasks["slow"]] >> tasks["saw_timeout"]
    [tasks["ninety_nine"]] >> tasks["saw_99"]
    [tasks["slow"]] >> tasks["never"]
    tasks["featherflow_failed"] = BashOperator(
        task_id="featherflow_failed",
        bash_command="{% raw %}echo 'a task of this run failed, so the run fails (as in Featherflow)'; exit 1{% endraw %}",
        trigger_rule="one_failed",
        retries=0,
        skip_on_exit_code=None,
        do_xcom_push=False,
    )
    [tasks["slow"], tasks["ninety_nine"], tasks["saw_timeout"], tasks["saw_99"], tasks["never"]] >> tasks["featherflow_failed"]
