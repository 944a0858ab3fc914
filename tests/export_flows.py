"""The example flows the export tests write, check against golden files and run under Airflow.

Built as Flow objects, not loaded from JSON: they use issue 16's fields (run_if, cleanup,
pool, `{{ tasks.ID.outputs.KEY }}`), which flow validation may not know yet, and a hostile
literal (`{{`, `{#`, `{% endraw %}`) that no validated flow could carry as text.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from featherflow import flow as flowmod
from featherflow.export.common import ScheduleFacts

# Quotes, command substitution, backticks, Jinja's and Argo's delimiters, a raw block's end,
# newlines, a trailing newline, non-ASCII: each must reach the task byte for byte.
HOSTILE = "it's \"q\" $(touch /tmp/ff-pwned) `id` ${HOME} {{ x }} {# c #} {% endraw %}{%- raw -%} a.sh\n\tnext ü €\n"


@dataclass(frozen=True)
class Task(flowmod.Task):
    """A task with issue 16's fields (the export reads them with getattr)."""

    run_if: str = "all_success"
    cleanup: bool = False
    pool: Optional[str] = None


# A task that records what it received: its argv (NUL-separated) and its environment (JSON).
RECORD_PY = '''import json, os, sys
out = os.environ["EXPORT_TEST_RESULTS"]
tag = os.environ["FEATHERFLOW_TASK_ID"] + "." + os.environ["FEATHERFLOW_ATTEMPT"]
with open(os.path.join(out, tag + ".argv"), "wb") as fh:
    fh.write(b"\\0".join(os.fsencode(a) for a in sys.argv[1:]))
with open(os.path.join(out, tag + ".env.json"), "w", encoding="utf-8") as fh:
    json.dump({k: v for k, v in os.environ.items()}, fh, ensure_ascii=False)
with open(os.path.join(out, tag + ".cwd"), "w") as fh:
    fh.write(os.getcwd())
'''
PRODUCE_PY = RECORD_PY + '''with open(os.environ["FEATHERFLOW_OUTPUT_FILE"], "a", encoding="utf-8") as fh:
    fh.write("plain=" + os.environ["HOSTILE_ONE_LINE"] + "\\n")
    fh.write("multi<<EOF_FF\\n" + os.environ["HOSTILE_ENV"] + "\\nEOF_FF\\n")
if os.environ["FEATHERFLOW_ATTEMPT"] == "1":
    sys.exit(3)  # the first attempt fails: the retry must run
'''
RECORD_SH = '''printf '%s\\0' "$@" >"$EXPORT_TEST_RESULTS/$FEATHERFLOW_TASK_ID.$FEATHERFLOW_ATTEMPT.argv"
echo "scratch" >"$TMP_DIR/scratch"
'''
MARK_SH = 'touch "$EXPORT_TEST_RESULTS/$FEATHERFLOW_TASK_ID.ran"\n'
FAIL_SH = MARK_SH + "exit 1\n"
EXIT99_SH = MARK_SH + "exit 99\n"
SLOW_SH = MARK_SH + "sleep 60\n"

SCRIPTS = {"record.py": RECORD_PY, "produce.py": PRODUCE_PY, "record.sh": RECORD_SH, "mark.sh": MARK_SH,
           "fail.sh": FAIL_SH, "exit99.sh": EXIT99_SH, "slow.sh": SLOW_SH}


def write_scripts(tasks_dir: Path) -> None:
    tasks_dir.mkdir(parents=True, exist_ok=True)
    for name, text in SCRIPTS.items():
        (tasks_dir / name).write_text(text)


def _flow(name, tasks, params=None, max_parallel=None):
    source = {"name": name, "tasks": [], "params": dict(params or {})}
    return flowmod.Flow(name=name, tasks=tuple(tasks), params=dict(params or {}), max_parallel=max_parallel,
                        source=source)


def fanin() -> flowmod.Flow:
    """A fan-in with a retried producer, params, outputs and hostile values everywhere."""
    params = {"day": "2026-01-01", "n": 3, "flag": True, "hostile": HOSTILE, "text": "ünï €"}
    one_line = HOSTILE.replace("\n", " ")
    return _flow("fanin", [
        Task(id="produce", script="produce.py", retries=2, retry_delay=0.0, retry_backoff=2.0,
             env={"HOSTILE_ENV": HOSTILE, "HOSTILE_ONE_LINE": one_line}),
        Task(id="shell", script="record.sh",
             args=(HOSTILE, "--day={{ params.day }}", "{{ params.n }}", "{{ params.flag }}",
                   "{{ params.hostile }}", "{{ flow }}", "", "{{ run_id }}")),
        Task(id="join", script="record.py", depends_on=("produce", "shell"),
             args={"plain": "{{ tasks.produce.outputs.plain }}", "m": "{{ tasks.produce.outputs.multi }}",
                   "verbose": True, "quiet": False},
             env={"FROM_PARAM": "{{ params.hostile }}", "FEATHERFLOW_TASK_ID": "join", "LITERAL": HOSTILE}),
    ], params=params, max_parallel=2)


def rules() -> flowmod.Flow:
    """run_if all_done after a failure and a cleanup: every leaf but the watcher succeeds, so
    without the watcher Airflow would call the run a success; with it, the run fails."""
    return _flow("rules", [
        Task(id="fail", script="fail.sh"),
        Task(id="after_all", script="mark.sh", depends_on=("fail",), run_if="all_done"),
        Task(id="ok", script="mark.sh"),
        Task(id="clean_up", script="mark.sh", cleanup=True),
    ])


def limits() -> flowmod.Flow:
    """A timeout and an exit 99: both fail (not skip), which one_failed tasks observe."""
    return _flow("limits", [
        Task(id="slow", script="slow.sh", timeout=2.0),
        Task(id="ninety_nine", script="exit99.sh", pool="default_pool"),
        Task(id="saw_timeout", script="mark.sh", depends_on=("slow",), run_if="one_failed"),
        Task(id="saw_99", script="mark.sh", depends_on=("ninety_nine",), run_if="any_failed"),
        Task(id="never", script="mark.sh", depends_on=("slow",)),
    ])


def scheduled() -> flowmod.Flow:
    """Every schedule-side mapping: a pool, a fractional timeout, ids Kubernetes must rename."""
    return _flow("Nightly_Report.v2", [
        Task(id="Extract_Data", script="record.py", pool="heavy", timeout=2.5, retries=3, retry_delay=10.0,
             retry_backoff=1.5, args=("{{ scheduled_at }}",)),
        Task(id="extract-data", script="record.sh", run_if="none_failed", depends_on=("Extract_Data",)),
        Task(id="notify", script="mark.sh", run_if="one_failed", depends_on=("Extract_Data", "extract-data")),
    ], params={"region": "eu"})


SCHEDULE = ScheduleFacts("nightly", "30 2 * * *", "Europe/Berlin", "all", "queue", {"region": "us"})
# name -> (flow, schedule, start date); the golden files are tests/golden/export/<name>.*
EXAMPLES: Dict[str, tuple] = {
    "fanin": (fanin, None), "rules": (rules, None), "limits": (limits, None), "scheduled": (scheduled, SCHEDULE),
}
