"""Airflow DAG of the Featherflow flow 'fanin', written by `featherflow export --to airflow`.

Export again rather than edit. Each task runs its script from featherflow_tasks/fanin/ beside this file
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
PARAMS = json.loads("{\"day\": \"2026-01-01\", \"n\": 3, \"flag\": true, \"hostile\": \"it's \\\"q\\\" $(touch /tmp/ff-pwned) `id` ${HOME} {{ x }} {# c #} {% endraw %}{%- raw -%} a.sh\\n\\tnext \u00fc \u20ac\\n\", \"text\": \"\u00fcn\u00ef \u20ac\"}")


tasks = {}
with DAG(
    dag_id="fanin",
    description="Featherflow flow fanin",
    schedule=None,
    start_date=pendulum.datetime(2000, 1, 1, 0, 0, 0, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    max_active_tasks=2,
    params=PARAMS,
    user_defined_macros={"ff_text": ff_text, "ff_params": ff_params, "ff_trigger": ff_trigger,
                         "ff_scheduled_at": ff_scheduled_at, "ff_output": ff_output},
    jinja_environment_kwargs={"keep_trailing_newline": True},
    tags=["featherflow"],
) as dag:
    tasks["produce"] = BashOperator(
        task_id="produce",
        bash_command=COMMAND,
        env={
            "_FF_SCRIPT": "{% raw %}featherflow_tasks/fanin/produce.py{% endraw %}",
            "_FF_ARGC": "{% raw %}0{% endraw %}",
            "_FF_READ_OUTPUTS": "{% raw %}import json, sys\nlines = open(sys.argv[1], encoding=\"utf-8\", errors=\"surrogateescape\").read().split(\"\\n\")\nout, i = {}, 0\nwhile i < len(lines):\n    line, i = lines[i], i + 1\n    if \"<<\" in line and (\"=\" not in line or line.index(\"<<\") < line.index(\"=\")):\n        key, delim = line.split(\"<<\", 1)\n        value = []\n        while i < len(lines) and lines[i] != delim:\n            value.append(lines[i])\n            i += 1\n        out[key], i = \"\\n\".join(value), i + 1\n    elif \"=\" in line:\n        key, value = line.split(\"=\", 1)\n        out[key] = value\nprint(json.dumps(out))\n{% endraw %}",
            "FEATHERFLOW_RUN_ID": "{{ run_id }}",
            "FEATHERFLOW_RUN_UID": "{{ run_id }}",
            "FEATHERFLOW_ATTEMPT": "{{ ti.try_number }}",
            "FEATHERFLOW_PARAMS": "{{ ff_params(params) }}",
            "FEATHERFLOW_TRIGGER": "{{ ff_trigger(dag_run) }}",
            "FEATHERFLOW_SCHEDULED_AT": "{{ ff_scheduled_at(dag_run) }}",
            "FEATHERFLOW_FLOW_NAME": "{% raw %}fanin{% endraw %}",
            "FEATHERFLOW_TASK_ID": "{% raw %}produce{% endraw %}",
            "HOSTILE_ENV": "{% raw %}it's \"q\" $(touch /tmp/ff-pwned) `id` ${HOME} {{ x }} {# c #} {% endraw %}{{ \"{\" }}{% raw %}% endraw %}{% endraw %}{{ \"{\" }}{% raw %}%- raw -%} a.sh\n\tnext \u00fc \u20ac\n{% endraw %}",
            "HOSTILE_ONE_LINE": "{% raw %}it's \"q\" $(touch /tmp/ff-pwned) `id` ${HOME} {{ x }} {# c #} {% endraw %}{{ \"{\" }}{% raw %}% endraw %}{% endraw %}{{ \"{\" }}{% raw %}%- raw -%} a.sh \tnext \u00fc \u20ac {% endraw %}",
        },
        append_env=True,
        cwd=raw(HERE),
        skip_on_exit_code=None,
        do_xcom_push=True,
        retries=2,
        retry_delay=timedelta(seconds=0.0),
        **backoff(2.0),
        trigger_rule="all_success",
    )
    tasks["shell"] = BashOperator(
        task_id="shell",
        bash_command=COMMAND,
        env={
            "_FF_SCRIPT": "{% raw %}featherflow_tasks/fanin/record.sh{% endraw %}",
            "_FF_ARGC": "{% raw %}8{% endraw %}",
            "_FF_ARG_0": "{% raw %}it's \"q\" $(touch /tmp/ff-pwned) `id` ${HOME} {{ x }} {# c #} {% endraw %}{{ \"{\" }}{% raw %}% endraw %}{% endraw %}{{ \"{\" }}{% raw %}%- raw -%} a.sh\n\tnext \u00fc \u20ac\n{% endraw %}",
            "_FF_ARG_1": "{% raw %}--day={% endraw %}{{ ff_text(params[\"day\"]) }}",
            "_FF_ARG_2": "{{ ff_text(params[\"n\"]) }}",
            "_FF_ARG_3": "{{ ff_text(params[\"flag\"]) }}",
            "_FF_ARG_4": "{{ ff_text(params[\"hostile\"]) }}",
            "_FF_ARG_5": "{% raw %}fanin{% endraw %}",
            "_FF_ARG_6": "",
            "_FF_ARG_7": "{{ run_id }}",
            "FEATHERFLOW_RUN_ID": "{{ run_id }}",
            "FEATHERFLOW_RUN_UID": "{{ run_id }}",
            "FEATHERFLOW_ATTEMPT": "{{ ti.try_number }}",
            "FEATHERFLOW_PARAMS": "{{ ff_params(params) }}",
            "FEATHERFLOW_TRIGGER": "{{ ff_trigger(dag_run) }}",
            "FEATHERFLOW_SCHEDULED_AT": "{{ ff_scheduled_at(dag_run) }}",
            "FEATHERFLOW_FLOW_NAME": "{% raw %}fanin{% endraw %}",
            "FEATHERFLOW_TASK_ID": "{% raw %}shell{% endraw %}",
        },
        append_env=True,
        cwd=raw(HERE),
        skip_on_exit_code=None,
        do_xcom_push=False,
        retries=0,
        retry_delay=timedelta(seconds=0.0),
        trigger_rule="all_success",
    )
    tasks["join"] = BashOperator(
        task_id="join",
        bash_command=COMMAND,
        env={
            "_FF_SCRIPT": "{% raw %}featherflow_tasks/fanin/record.py{% endraw %}",
            "_FF_ARGC": "{% raw %}4{% endraw %}",
            "_FF_ARG_0": "{% raw %}--plain={% endraw %}{{ ff_output(ti, \"produce\", \"plain\") }}",
            "_FF_ARG_1": "{% raw %}-m{% endraw %}",
            "_FF_ARG_2": "{{ ff_output(ti, \"produce\", \"multi\") }}",
            "_FF_ARG_3": "{% raw %}--verbose{% endraw %}",
            "FEATHERFLOW_RUN_ID": "{{ run_id }}",
            "FEATHERFLOW_RUN_UID": "{{ run_id }}",
            "FEATHERFLOW_ATTEMPT": "{{ ti.try_number }}",
            "FEATHERFLOW_PARAMS": "{{ ff_params(params) }}",
            "FEATHERFLOW_TRIGGER": "{{ ff_trigger(dag_run) }}",
            "FEATHERFLOW_SCHEDULED_AT": "{{ ff_scheduled_at(dag_run) }}",
            "FEATHERFLOW_FLOW_NAME": "{% raw %}fanin{% endraw %}",
            "FROM_PARAM": "{{ ff_text(params[\"hostile\"]) }}",
            "FEATHERFLOW_TASK_ID": "{% raw %}join{% endraw %}",
            "LITERAL": "{% raw %}it's \"q\" $(touch /tmp/ff-pwned) `id` ${HOME} {{ x }} {# c #} {% endraw %}{{ \"{\" }}{% raw %}% endraw %}{% endraw %}{{ \"{\" }}{% raw %}%- raw -%} a.sh\n\tnext \u00fc \u20ac\n{% endraw %}",
        },
        append_env=True,
        cwd=raw(HERE),
        skip_on_exit_code=None,
        do_xcom_push=False,
        retries=0,
        retry_delay=timedelta(seconds=0.0),
        trigger_rule="all_success",
    )

    [tasks["produce"], tasks["shell"]] >> tasks["join"]
