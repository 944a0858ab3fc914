"""A flow as an Argo CronWorkflow (a WorkflowTemplate without a schedule), written as YAML.

The YAML is a small subset written by hand (no YAML library): block mappings and lists,
keys that are plain names, and every string JSON-quoted (a JSON string is a valid YAML
double-quoted scalar; the few characters YAML reads as line breaks or refuses are escaped).
Each task is a container template running one fixed bash wrapper with the script and its
argument words as its arguments, so the shell never parses a flow value. Argo replaces
`{{...}}` in every field it templates and has no way to escape it: a literal `{{` in an
argument or env value is reported as not carried over.
"""

import json
import math
import re
from typing import Dict, List, Optional

from featherflow import flow as flowmod
from featherflow.errors import UsageError
from featherflow.export.common import Plan, ScheduleFacts, TaskFacts, read_outputs, upstream

TASKS_PATH = "/featherflow/tasks"  # where the image holds the tasks dir
OUTPUTS_DIR = "/tmp/featherflow-outputs"
API_VERSION = "argoproj.io/v1alpha1"
LATEST_DEADLINE = 86400  # catch-up latest: a missed slot still starts within a day
POOLS_CONFIGMAP = "featherflow-pools"
DONE = ("Succeeded", "Failed", "Errored", "Skipped", "Omitted")
# The rules as Argo `depends` results, per dependency.
RESULTS = {"all_success": ("Succeeded",), "all_done": DONE, "none_failed": ("Succeeded", "Skipped"),
           "one_failed": ("Failed", "Errored")}

WRAPPER = r"""ff_script=$1
shift
export FEATHERFLOW_ATTEMPT=$((${FF_RETRIES:-0} + 1))
unset FF_RETRIES
export TMP_DIR="${FEATHERFLOW_TMP_ROOT:-/tmp}/featherflow/$FEATHERFLOW_RUN_ID"
export TEMP_DIR=$TMP_DIR FEATHERFLOW_OUTPUT_DIR="${FEATHERFLOW_OUTPUT_DIR:-/featherflow/featherflow_output}"
export FEATHERFLOW_OUTPUT_FILE=/tmp/featherflow-outputs.txt
mkdir -p "$TMP_DIR" /tmp/featherflow-outputs && : >"$FEATHERFLOW_OUTPUT_FILE" || exit 1
case $ff_script in
  *.py) "${FEATHERFLOW_PYTHON:-python3}" -u "$ff_script" "$@" </dev/null ;;
  *.sh) "$BASH" "$ff_script" "$@" </dev/null ;;
  *) "$ff_script" "$@" </dev/null ;;
esac
ff_rc=$?
ff_key= ff_delim=
while [ "$ff_rc" -eq 0 ] && IFS= read -r ff_line; do
  if [ -n "$ff_delim" ]; then
    if [ "$ff_line" = "$ff_delim" ]; then ff_delim=; else printf '%s%s' "$ff_sep" "$ff_line" >>"/tmp/featherflow-outputs/$ff_key"; ff_sep=$'\n'; fi
  elif [[ $ff_line == *"<<"* && ${ff_line%%<<*} != *=* ]]; then
    ff_key=${ff_line%%<<*} ff_delim=${ff_line#*<<} ff_sep=
    [[ $ff_key =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] && : >"/tmp/featherflow-outputs/$ff_key" || ff_delim=
  elif [[ $ff_line == *=* ]]; then
    ff_key=${ff_line%%=*}
    [[ $ff_key =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] && printf '%s' "${ff_line#*=}" >"/tmp/featherflow-outputs/$ff_key"
  fi
done <"$FEATHERFLOW_OUTPUT_FILE"
exit "$ff_rc"
"""


def build(flow: flowmod.Flow, tasks: List[TaskFacts], schedule: Optional[ScheduleFacts],
          tasks_dir, image: Optional[str], plan: Plan) -> None:
    """Put DIR/<flow>.yaml into `plan`, with what Argo does not keep."""
    if not image:
        raise UsageError("--to argo needs --image (valid: the container image that holds the tasks dir "
                         f"at {TASKS_PATH}, e.g. --image registry.example/etl:1)")
    doc = document(flow, tasks, schedule, image, plan)
    plan.files[f"{flow.name}.yaml"] = (dump(doc).encode("utf-8"), 0o644)


def k8s_name(text: str, limit: int = 63) -> str:
    """A Kubernetes name: lowercase letters, digits and '-', starting and ending with a letter or digit."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return name or "x"


def task_names(tasks: List[TaskFacts]) -> Dict[str, str]:
    """Featherflow id -> a distinct Argo task name (a clash gets -2, -3, ... in flow order)."""
    names: Dict[str, str] = {}
    taken = set()
    for task in tasks:
        base = k8s_name(task.id, 56)
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add(name)
        names[task.id] = name
    return names


def check_cron(cron: str) -> None:
    """Argo takes the usual 5 fields: croniter's seconds field and `L` are refused."""
    fields = cron.split()
    if len(fields) != 5:
        raise UsageError(f"cron {cron!r} cannot be exported to Argo (valid: 5 fields, no seconds field)")
    if "L" in cron.upper():
        raise UsageError(f"cron {cron!r} cannot be exported to Argo (valid: no 'L', the last day of the month)")


def document(flow: flowmod.Flow, tasks: List[TaskFacts], schedule: Optional[ScheduleFacts],
             image: str, plan: Plan) -> Dict:
    names = task_names(tasks)
    for task in tasks:
        if names[task.id] != task.id:
            plan.warnings.append(f"task {task.id} is Argo task {names[task.id]} (Kubernetes names)")
    outputs = read_outputs(tasks)
    params = {**flow.params, **(schedule.params if schedule else {})}
    ctx = {"names": names, "flow": flow.name, "scheduled": schedule is not None, "plan": plan}
    plan.warnings.append("FEATHERFLOW_RUN_ID and {{ run_id }} are the workflow's name, a string "
                         "(Featherflow's is a number)")
    dag_tasks = _dag_tasks(tasks, names, plan)
    templates = [{"name": "main", "dag": {"failFast": False, "tasks": dag_tasks}}]
    templates += [_template(task, names, outputs, params, image, ctx) for task in tasks]
    spec: Dict = {"entrypoint": "main"}
    if flow.max_parallel:
        spec["parallelism"] = flow.max_parallel
    if params:
        spec["arguments"] = {"parameters": [{"name": k, "value": _text(v)} for k, v in params.items()]}
    spec["templates"] = templates
    name = k8s_name(flow.name, 52)
    if any(t.rule != "all_success" or t.cleanup for t in tasks):
        plan.warnings.append("Argo decides the workflow's phase by its own rules: a failed task whose "
                             "failure a later task handled (run_if) may leave the workflow Succeeded")
    if params:
        plan.lost.append("FEATHERFLOW_PARAMS holds the exported defaults: a workflow submitted with other "
                         "parameter values sees them in {{ params.X }} only")
    pools = sorted({t.pool for t in tasks if t.pool})
    if pools:
        plan.commands.append(f"kubectl create configmap {POOLS_CONFIGMAP} "
                             + " ".join(f"--from-literal={p}={plan.pool_slots.get(p, 1)}" for p in pools))
        plan.warnings.append(f"pools {', '.join(pools)} are Argo semaphores in ConfigMap {POOLS_CONFIGMAP} "
                             "(the command below makes them with the slots `featherflow pool set` gave "
                             "them, 1 for a pool never set)")
    if schedule is None:
        return {"apiVersion": API_VERSION, "kind": "WorkflowTemplate", "metadata": {"name": name},
                "spec": spec}
    check_cron(schedule.cron)
    cron: Dict = {"schedules": [schedule.cron], "timezone": schedule.tz}
    cron["concurrencyPolicy"] = "Allow" if schedule.overlap == "allow" else "Forbid"
    if schedule.overlap == "queue":
        plan.lost.append("overlap queue: Argo has no queue; a slot that would overlap a running "
                         "workflow is skipped (concurrencyPolicy Forbid)")
    if schedule.catchup == "none":
        cron["startingDeadlineSeconds"] = 0
    else:
        cron["startingDeadlineSeconds"] = LATEST_DEADLINE
        plan.warnings.append(f"catch-up {schedule.catchup}: the latest missed slot starts only within "
                             f"{LATEST_DEADLINE} s (startingDeadlineSeconds)")
        if schedule.catchup == "all":
            plan.lost.append("catch-up all: Argo starts at most the latest missed slot, not every one")
    cron["workflowSpec"] = spec
    return {"apiVersion": API_VERSION, "kind": "CronWorkflow", "metadata": {"name": name}, "spec": cron}


def _dag_tasks(tasks: List[TaskFacts], names: Dict[str, str], plan: Plan) -> List[Dict]:
    ups = upstream(tasks)
    out = []
    for task in tasks:
        entry: Dict = {"name": names[task.id], "template": f"task-{names[task.id]}"}
        deps = ups[task.id]
        if deps:
            results = DONE if task.cleanup else RESULTS[task.rule]
            joiner = " || " if task.rule == "one_failed" and not task.cleanup else " && "
            if len(results) == 1:
                entry["depends"] = joiner.join(f"{names[d]}.{results[0]}" for d in deps)
            elif joiner == " || ":
                entry["depends"] = joiner.join(f"{names[d]}.{r}" for d in deps for r in results)
            else:
                entry["depends"] = joiner.join(
                    "(" + " || ".join(f"{names[d]}.{r}" for r in results) + ")" for d in deps)
        if task.cleanup:
            plan.lost.append(f"task {task.id}: a cleanup task runs when its deps are done, but not when "
                             "the workflow is stopped, and gets no FEATHERFLOW_RUN_STATE or FEATHERFLOW_FAILED_TASKS")
        out.append(entry)
    return out


def _template(task: TaskFacts, names: Dict[str, str], outputs: Dict[str, List[str]], params: Dict,
              image: str, ctx: Dict) -> Dict:
    plan = ctx["plan"]
    args = [f"{TASKS_PATH}/{task.script}"] + [_value(task, word, ctx) for word in task.args]
    env = [
        {"name": "FEATHERFLOW_RUN_ID", "value": "{{workflow.name}}"},
        {"name": "FEATHERFLOW_RUN_UID", "value": "{{workflow.uid}}"},
        {"name": "FEATHERFLOW_PARAMS", "value": json.dumps(params, sort_keys=True, ensure_ascii=False)},
        {"name": "FEATHERFLOW_TRIGGER", "value": "schedule" if ctx["scheduled"] else "manual"},
        {"name": "FEATHERFLOW_SCHEDULED_AT", "value": "{{workflow.scheduledTime}}" if ctx["scheduled"] else ""},
        {"name": "FEATHERFLOW_FLOW_NAME", "value": ctx["flow"]},
        {"name": "FEATHERFLOW_TASK_ID", "value": task.id},
    ]
    if task.retries:
        env.append({"name": "FF_RETRIES", "value": "{{retries}}"})
    own = {name for name, _ in task.env}
    env = [e for e in env if e["name"] not in own]
    env += [{"name": name, "value": _value(task, words, ctx)} for name, words in task.env]
    template: Dict = {"name": f"task-{names[task.id]}"}
    if task.retries:
        strategy: Dict = {"limit": str(task.retries), "retryPolicy": "Always"}
        if task.retry_delay:
            strategy["backoff"] = {"duration": f"{task.retry_delay:g}s", "factor": f"{task.retry_backoff:g}"}
        template["retryStrategy"] = strategy
    if task.timeout:
        template["activeDeadlineSeconds"] = math.ceil(task.timeout)
        if task.timeout != math.ceil(task.timeout):
            plan.warnings.append(f"task {task.id}: timeout {task.timeout:g}s is rounded up to "
                                 f"{math.ceil(task.timeout)} s (activeDeadlineSeconds)")
    if task.pool:
        template["synchronization"] = {"semaphores": [{"configMapKeyRef": {"name": POOLS_CONFIGMAP,
                                                                           "key": task.pool}}]}
    template["container"] = {"image": image, "workingDir": "/featherflow",
                             "command": ["bash", "-c", WRAPPER, "featherflow-task"],
                             "args": args, "env": env}
    if task.id in outputs:
        template["outputs"] = {"parameters": [
            {"name": key, "valueFrom": {"path": f"{OUTPUTS_DIR}/{key}", "default": ""}}
            for key in outputs[task.id]]}
    return template


def _value(task: TaskFacts, words: tuple, ctx: Dict) -> str:
    out = []
    for piece in words:
        if piece.kind == "text":
            line = f"task {task.id}: a literal '{{{{' in its args or env is read by Argo as a template"
            if "{{" in piece.text and line not in ctx["plan"].lost:
                ctx["plan"].lost.append(line)
            out.append(piece.text)
        elif piece.kind == "param":
            out.append(f"{{{{workflow.parameters.{piece.text}}}}}")
        elif piece.kind == "output":
            out.append(f"{{{{tasks.{ctx['names'][piece.task]}.outputs.parameters.{piece.key}}}}}")
        elif piece.text == "run_id":
            out.append("{{workflow.name}}")
        elif piece.text == "flow":
            out.append(ctx["flow"])
        else:
            out.append("{{workflow.scheduledTime}}" if ctx["scheduled"] else "")
    return "".join(out)


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


# -- the YAML subset ---------------------------------------------------------------

_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
# Characters YAML reads as line breaks (U+0085, U+2028, U+2029) or does not allow in a
# document (C0/C1 controls, surrogates, BOM, U+FFFE/U+FFFF): always written as \\uXXXX.
_UNSAFE_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]")


def scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = json.dumps(str(value), ensure_ascii=False)
    return _UNSAFE_RE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _key(key: str) -> str:
    return key if _KEY_RE.fullmatch(key) else scalar(key)


def dump(doc, indent: int = 0) -> str:
    """`doc` (dicts, lists, strings, ints, bools) as block YAML."""
    return "\n".join(_lines(doc, indent)) + "\n"


def _lines(node, indent: int) -> List[str]:
    pad = " " * indent
    out: List[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _entry(f"{pad}{_key(key)}:", value, indent)
    else:
        for item in node:
            sub = _lines(item, indent + 2) if isinstance(item, (dict, list)) and item else None
            if sub:
                out.append(f"{pad}- {sub[0][indent + 2:]}")
                out += sub[1:]
            else:
                out.append(f"{pad}- {_inline(item)}")
    return out


def _entry(head: str, value, indent: int) -> List[str]:
    if isinstance(value, (dict, list)) and value:
        return [head] + _lines(value, indent + 2)
    return [f"{head} {_inline(value)}"]


def _inline(value) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return scalar(value)

