"""Flows and tasks: plain dataclasses, loaded from JSON and validated.

Loading (text -> dict) is separate from validation (dict -> Flow). Validation
collects every problem instead of stopping at the first, and each message
names the JSON path and what is valid, so one `validate` fixes a whole file.
After loading, a Flow does no I/O.
"""

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from featherflow import graph, logcap
from featherflow.rules import OUTPUT_REF_RE, POOL_RE, POOL_VALID, check_rule, upstream_problems
from featherflow.errors import UsageError, ValidationError

ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ARG_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
PLACEHOLDER_RE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
BUILTIN_PLACEHOLDERS = ("run_id", "flow", "scheduled_at")
MAX_FLOW_BYTES = 1024 * 1024  # the cap on a flow file's size (check_size)

FLOW_KEYS = ("name", "description", "version", "tasks", "max_parallel", "params", "max_log_bytes", "pool")
TASK_KEYS = (
    "id", "script", "description", "depends_on", "args", "env",
    "retries", "retry_delay", "retry_backoff", "timeout", "run_if", "cleanup", "pool",
)

Args = Union[Tuple[str, ...], Dict[str, Any]]


@dataclass(frozen=True)
class Task:
    id: str
    script: str
    description: str = ""
    depends_on: Tuple[str, ...] = ()
    args: Args = ()
    env: Dict[str, str] = field(default_factory=dict)
    retries: int = 0
    retry_delay: float = 0.0
    retry_backoff: float = 1.0
    timeout: Optional[float] = None
    run_if: str = "all_success"
    cleanup: bool = False
    pool: Optional[str] = None  # its own, or the flow's default (Flow.pool)

    @property
    def rule(self) -> str:
        """When the task runs, in one word: its run_if, or `cleanup`."""
        return "cleanup" if self.cleanup else self.run_if

    def output_refs(self) -> List[Tuple[str, str]]:
        """The (task, key) of every {{ tasks.ID.outputs.KEY }} in its args and env values."""
        values = list(self.args.values()) if isinstance(self.args, dict) else list(self.args)
        values += list(self.env.values())
        refs = []
        for value in values:
            if isinstance(value, str):
                for ref in placeholders(value):
                    found = OUTPUT_REF_RE.fullmatch(ref)
                    if found and found.groups() not in refs:
                        refs.append(found.groups())
        return refs


@dataclass(frozen=True)
class Flow:
    name: str
    tasks: Tuple[Task, ...]
    description: str = ""
    version: str = ""
    max_parallel: Optional[int] = None
    params: Dict[str, Any] = field(default_factory=dict)
    max_log_bytes: Optional[int] = None  # bytes; 0: no cap; None: the global default (logcap.py)
    pool: Optional[str] = None  # the default pool of its tasks
    source: Dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # id -> task, built once: looking each task up by a walk of `tasks` made
    # rendering a 5,000-task flow quadratic.
    _by_id: Dict[str, Task] = field(init=False, default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {t.id: t for t in self.tasks})

    def task(self, task_id: str) -> Task:
        """The task with this id (KeyError if there is none)."""
        return self._by_id[task_id]

    @property
    def edges(self) -> Dict[str, Tuple[str, ...]]:
        return {t.id: t.depends_on for t in self.tasks}

    @property
    def run_edges(self) -> Dict[str, Tuple[str, ...]]:
        """The edges a run follows: a cleanup task without `depends_on` waits for every
        task that is not a cleanup task (it runs at the end of the run)."""
        work = tuple(t.id for t in self.tasks if not t.cleanup)
        return {t.id: work if t.cleanup and not t.depends_on else t.depends_on for t in self.tasks}

    @property
    def declares_params(self) -> bool:
        """True when the flow has a `params` block (even an empty one): then a run takes
        only the params it declares. Without one (the original format) a run takes any."""
        return "params" in self.source

    def undeclared(self, params: Dict[str, Any]) -> List[str]:
        """The names in `params` that the flow does not declare, sorted."""
        return sorted(set(params) - set(self.params))

    def snapshot(self) -> str:
        """The definition as canonical JSON: stored with a run, compared on resume."""
        return json.dumps(self.source, sort_keys=True, ensure_ascii=False)


def check_flow_name(name: str) -> str:
    """Refuse a flow name that could leave the flows dir (`../x`, `/etc/x`)."""
    if name.endswith(".json"):
        name = name[: -len(".json")]
    if not NAME_RE.fullmatch(name or ""):
        raise UsageError(
            f"invalid flow name {name!r} (valid: letters, digits, '_', '-', '.', "
            "not starting with '.' or '-', no '/'; the file is <flows-dir>/<name>.json)"
        )
    return name


def flow_path(flows_dir: Path, name: str) -> Path:
    return Path(flows_dir) / f"{check_flow_name(name)}.json"


def parse(text: str, source: str = "<flow>") -> Dict[str, Any]:
    """Parse flow JSON text; a syntax error names the line and column."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            [f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"], source
        ) from None
    except RecursionError:
        raise ValidationError(["not valid JSON: nested too deeply"], source) from None
    except ValueError as exc:  # e.g. an integer longer than Python's 4300-digit limit
        raise ValidationError([f"not valid JSON: {exc}"], source) from None
    return data


def load(flows_dir: Path, name: str, tasks_dir: Optional[Path] = None) -> Flow:
    """Read, parse and validate `<flows_dir>/<name>.json`."""
    path = flow_path(flows_dir, name)
    try:
        check_size(path)
        raw = path.read_bytes()
    except FileNotFoundError:
        known = ", ".join(list_names(flows_dir)) or "none"
        raise UsageError(f"flow {name!r} not found in {flows_dir} (known: {known})") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError([f"not UTF-8 text (byte {exc.start})"], str(path)) from None
    return validate(parse(text, str(path)), expected_name=path.stem,
                    tasks_dir=tasks_dir, source=str(path))


def check_size(path: Path) -> None:
    """Refuse a flow file over MAX_FLOW_BYTES by its size alone, before reading it.

    A run stores its flow (the snapshot) and every list of flows parses each
    file: on a 512 MB machine, a 50 MB description would cost hundreds of MB.
    Data that large belongs in a file a task reads, not in the flow.
    """
    size = path.stat().st_size  # FileNotFoundError and OSError: as for reading
    if size > MAX_FLOW_BYTES:
        raise ValidationError([
            f"the file is {size} bytes, over the cap of {MAX_FLOW_BYTES} bytes (1 MiB) on a flow "
            "file (keep large data in a file a task reads, and pass its path)"], str(path))


def list_names(flows_dir: Path) -> List[str]:
    try:
        return sorted(p.stem for p in Path(flows_dir).glob("*.json") if NAME_RE.fullmatch(p.stem))
    except OSError:
        return []


def task_order(snapshot: str) -> List[str]:
    """Task ids of a stored definition (a run's snapshot) in dependency order."""
    data = json.loads(snapshot)
    edges = {t["id"]: t.get("depends_on", []) for t in data["tasks"]}
    work = [t["id"] for t in data["tasks"] if t.get("cleanup") is not True]
    for t in data["tasks"]:  # a cleanup task without dependencies runs last (Flow.run_edges)
        if t.get("cleanup") is True and not t.get("depends_on"):
            edges[t["id"]] = work
    return graph.topological_order(edges)


def placeholders(value: str) -> List[str]:
    return PLACEHOLDER_RE.findall(value)


def validate(
    data: Any,
    expected_name: Optional[str] = None,
    tasks_dir: Optional[Path] = None,
    source: Optional[str] = None,
) -> Flow:
    """Validate a parsed flow; raise ValidationError listing every problem."""
    v = _Validator()
    flow = v.flow(data, expected_name, tasks_dir)
    if v.errors:
        raise ValidationError(v.errors, source)
    return flow


class _Validator:
    def __init__(self):
        self.errors: List[str] = []
        self.refs: List[Tuple[str, str]] = []  # (path, task id) of the current task's output refs
        self.task_refs: Dict[str, List[Tuple[str, str]]] = {}

    def err(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}" if path else message)

    def typed(self, value, kinds, path, what) -> bool:
        # bool is an int in Python; JSON true is never a number here.
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in _tuple(kinds))
        if not ok:
            self.err(path, f"must be {what}, not {_json_type(value)}")
        elif isinstance(value, (int, float)) and float in _tuple(kinds) and not _finite(value):
            # NaN/Infinity parse in Python's json, and float(10**400) overflows later.
            self.err(path, f"must be {what}, not NaN, Infinity or a number that large")
            ok = False
        return ok

    def no_nul(self, value, path) -> None:
        stack = [(value, path)]
        while stack:
            item, where = stack.pop()
            if isinstance(item, str) and "\x00" in item:
                self.err(where, "contains a NUL byte (not allowed anywhere in a flow)")
            elif isinstance(item, dict):
                for k, sub in item.items():
                    if "\x00" in k:
                        self.err(where, "a key contains a NUL byte (not allowed anywhere in a flow)")
                    stack.append((sub, f"{where}.{k}" if where else k))
            elif isinstance(item, list):
                stack.extend((sub, f"{where}[{i}]") for i, sub in enumerate(item))

    def unknown_keys(self, obj, allowed, path) -> None:
        for key in obj:
            if key not in allowed:
                hint = _close(key, allowed)
                self.err(f"{path}.{key}" if path else key,
                         f"unknown key{hint} (valid: {', '.join(allowed)})")

    def flow(self, data, expected_name, tasks_dir) -> Optional[Flow]:
        if not isinstance(data, dict):
            self.err("", f"the top level must be a JSON object, not {_json_type(data)}")
            return None
        before = len(self.errors)
        self.no_nul(data, "")
        if len(self.errors) > before:
            return None
        self.unknown_keys(data, FLOW_KEYS, "")
        name = data.get("name")
        if name is None:
            self.err("name", "is required (a non-empty string matching the file name)")
        elif self.typed(name, str, "name", "a string"):
            if not name:
                self.err("name", "must not be empty")
            elif expected_name is not None and name != expected_name:
                self.err("name", f"is {name!r} but the file is {expected_name}.json (they must match)")
        description = data.get("description", "")
        self.typed(description, str, "description", "a string")
        version = data.get("version", "")
        if not isinstance(version, (str, int, float)) or isinstance(version, bool):
            self.err("version", f"must be a string or a number, not {_json_type(version)}")
        max_parallel = data.get("max_parallel")
        if max_parallel is not None and self.typed(max_parallel, int, "max_parallel", "a whole number >= 1"):
            if max_parallel < 1:
                self.err("max_parallel", f"must be >= 1, not {max_parallel}")
        max_log_bytes = None
        if "max_log_bytes" in data:
            max_log_bytes = logcap.parse_size(data["max_log_bytes"])
            if max_log_bytes is None:
                self.err("max_log_bytes", f"is {json.dumps(data['max_log_bytes'])} (valid: {logcap.SIZE_HELP})")
        params = data.get("params", {})
        if self.typed(params, dict, "params", "an object of default values"):
            for key in params:
                if not ENV_RE.fullmatch(key):
                    self.err(f"params.{key}", "invalid param name (valid: letters, digits, '_', not starting with a digit)")
        else:
            params = {}
        pool = self.pool(data.get("pool"), "pool")
        tasks = self.tasks(data.get("tasks"), params, tasks_dir, pool)
        if tasks is None or len(self.errors) > before:
            return None
        return Flow(
            name=name, tasks=tasks, description=description, version=str(version),
            max_parallel=max_parallel, params=dict(params), max_log_bytes=max_log_bytes, pool=pool,
            source=data,
        )

    def pool(self, value, path) -> Optional[str]:
        """A pool name, or None (no pool)."""
        if value is None:
            return None
        if self.typed(value, str, path, f"a pool name ({POOL_VALID})") and not POOL_RE.fullmatch(value):
            self.err(path, f"invalid pool name {value!r} (valid: {POOL_VALID})")
        return value if isinstance(value, str) else None

    def tasks(self, raw, params, tasks_dir, pool=None) -> Optional[Tuple[Task, ...]]:
        if raw is None:
            self.err("tasks", "is required (a non-empty array of tasks)")
            return None
        if not self.typed(raw, list, "tasks", "an array of tasks"):
            return None
        if not raw:
            self.err("tasks", "must not be empty")
            return None
        tasks, seen = [], {}
        for i, item in enumerate(raw):
            task = self.task(item, f"tasks[{i}]", params, tasks_dir, pool)
            if task is None:
                continue
            if task.id in seen:
                self.err(f"tasks[{i}].id", f"duplicate id {task.id!r} (also tasks[{seen[task.id]}])")
                continue
            seen[task.id] = i
            tasks.append(task)
        # A task with its own errors still exists: depending on it is not "unknown".
        declared = dict.fromkeys(
            t.get("id") for t in raw if isinstance(t, dict) and isinstance(t.get("id"), str))
        known = ", ".join(declared) or "none"
        for i, item in enumerate(raw):
            task_id = item.get("id") if isinstance(item, dict) else None
            deps = item.get("depends_on") if isinstance(item, dict) else None
            if not isinstance(deps, list):
                continue
            for j, dep in enumerate(deps):
                if not isinstance(dep, str):
                    continue
                if dep == task_id:
                    self.err(f"tasks[{i}].depends_on[{j}]", f"task {dep!r} depends on itself")
                elif dep not in declared:
                    self.err(f"tasks[{i}].depends_on[{j}]", f"unknown task {dep!r} (known: {known})")
        if self.errors:
            return None
        cycle = graph.find_cycle({t.id: t.depends_on for t in tasks})
        if cycle:
            self.err("tasks", f"dependency cycle: {' -> '.join(cycle)}")
            return None
        if any(self.task_refs.values()):
            self.errors += upstream_problems(Flow(name="", tasks=tuple(tasks)).run_edges, self.task_refs)
        if self.errors:
            return None
        return tuple(tasks)

    def task(self, item, path, params, tasks_dir, flow_pool=None) -> Optional[Task]:
        if not isinstance(item, dict):
            self.err(path, f"must be an object with 'id' and 'script', not {_json_type(item)}")
            return None
        before = len(self.errors)
        self.refs = []
        self.unknown_keys(item, TASK_KEYS, path)
        task_id = item.get("id")
        if task_id is None:
            self.err(f"{path}.id", "is required")
        elif self.typed(task_id, str, f"{path}.id", "a string") and not ID_RE.fullmatch(task_id):
            self.err(f"{path}.id", f"invalid id {task_id!r} (valid: 1-64 of A-Z a-z 0-9 _ -)")
        script = item.get("script")
        if script is None:
            self.err(f"{path}.script", "is required (a file in the tasks dir)")
        elif self.typed(script, str, f"{path}.script", "a string"):
            self.script(script, f"{path}.script", tasks_dir)
        description = item.get("description", "")
        self.typed(description, str, f"{path}.description", "a string")
        deps = item.get("depends_on", [])
        if self.typed(deps, list, f"{path}.depends_on", "an array of task ids"):
            for j, dep in enumerate(deps):
                self.typed(dep, str, f"{path}.depends_on[{j}]", "a task id string")
            strings = [d for d in deps if isinstance(d, str)]
            if len(set(strings)) != len(strings):
                self.err(f"{path}.depends_on", "lists a task more than once")
        args = self.args(item.get("args", []), f"{path}.args", params)
        env = item.get("env", {})
        if self.typed(env, dict, f"{path}.env", "an object of NAME: value"):
            for key, value in env.items():
                where = f"{path}.env.{key}"
                if not ENV_RE.fullmatch(key):
                    self.err(where, "invalid variable name (valid: letters, digits, '_', not starting with a digit)")
                if self.typed(value, (str, int, float), where, "a string or a number"):
                    self.templates(str(value), where, params)
        retries = item.get("retries", 0)
        if self.typed(retries, int, f"{path}.retries", "a whole number >= 0") and retries < 0:
            self.err(f"{path}.retries", f"must be >= 0, not {retries}")
        delay = item.get("retry_delay", 0)
        if self.typed(delay, (int, float), f"{path}.retry_delay", "a number of seconds >= 0") and delay < 0:
            self.err(f"{path}.retry_delay", f"must be >= 0, not {delay}")
        backoff = item.get("retry_backoff", 1)
        if self.typed(backoff, (int, float), f"{path}.retry_backoff", "a multiplier >= 1") and backoff < 1:
            self.err(f"{path}.retry_backoff", f"must be >= 1, not {backoff}")
        timeout = item.get("timeout")
        if timeout is not None and self.typed(timeout, (int, float), f"{path}.timeout", "a number of seconds > 0"):
            if timeout <= 0:
                self.err(f"{path}.timeout", f"must be > 0, not {timeout}")
        run_if, cleanup, problems = check_rule(item, path, deps)
        self.errors += problems
        # A task's own "pool" (null: none) wins over the flow's default.
        pool = self.pool(item["pool"], f"{path}.pool") if "pool" in item else flow_pool
        if len(self.errors) > before:
            return None
        self.task_refs[task_id] = self.refs
        return Task(
            id=task_id, script=script, description=description, depends_on=tuple(deps),
            args=args, env={k: str(v) for k, v in env.items()}, retries=retries,
            retry_delay=float(delay), retry_backoff=float(backoff),
            timeout=float(timeout) if timeout is not None else None, run_if=run_if, cleanup=cleanup,
            pool=pool,
        )

    def script(self, script, path, tasks_dir) -> None:
        if not script or script.startswith(("/", "~")) or ".." in Path(script).parts:
            self.err(path, f"{script!r} must be a path inside the tasks dir (no '..', not absolute)")
            return
        if tasks_dir is None:
            return
        full = Path(tasks_dir) / script
        if not full.exists():
            self.err(path, f"{script!r} not found in {tasks_dir}")
        elif not full.is_file():
            self.err(path, f"{script!r} is not a file")
        elif not _inside(full, tasks_dir):
            # A symlink (or a linked folder) leading out of the tasks dir is refused:
            # what a flow can run is exactly what the tasks dir holds.
            self.err(path, f"{script!r} leads outside the tasks dir (to {os.path.realpath(full)}); "
                           "copy the script into the tasks dir instead of linking to it")
        elif not script.endswith((".py", ".sh")) and not os.access(full, os.X_OK):
            self.err(path, f"{script!r} is not executable (chmod +x it, or name it .py or .sh)")

    def args(self, args, path, params) -> Args:
        if isinstance(args, list):
            for j, arg in enumerate(args):
                if self.typed(arg, (str, int, float), f"{path}[{j}]", "a string or a number"):
                    self.templates(str(arg), f"{path}[{j}]", params)
            return tuple(scalar_text(a) for a in args)
        if isinstance(args, dict):
            for key, value in args.items():
                where = f"{path}.{key}"
                if not ARG_KEY_RE.fullmatch(key):
                    self.err(where, "invalid option name (valid: letters, digits, '_', '-', '.')")
                if value is None or isinstance(value, bool):
                    continue
                if self.typed(value, (str, int, float), where, "a string, number, true, false or null"):
                    self.templates(str(value), where, params)
            return dict(args)
        self.err(path, f"must be an array of arguments or an object of options, not {_json_type(args)}")
        return ()

    def templates(self, value, path, params) -> None:
        for ref in placeholders(value):
            if ref in BUILTIN_PLACEHOLDERS:
                continue
            found = OUTPUT_REF_RE.fullmatch(ref)
            if found:
                self.refs.append((path, found.group(1)))
                continue
            if ref.startswith("params."):
                if ref[len("params."):] not in params:
                    known = ", ".join(params) or "none declared in 'params'"
                    self.err(path, f"unknown param in {{{{ {ref} }}}} (known: {known})")
                continue
            valid = ", ".join(f"{{{{ {b} }}}}" for b in BUILTIN_PLACEHOLDERS)
            self.err(path, f"unknown placeholder {{{{ {ref} }}}} (valid: {{{{ params.NAME }}}}, "
                           f"{{{{ tasks.ID.outputs.KEY }}}}, {valid})")


def _inside(path: Path, directory: Path) -> bool:
    """True when `path`, symlinks resolved, is inside `directory` (itself resolved)."""
    base = os.path.realpath(directory)
    return os.path.realpath(path).startswith(base.rstrip(os.sep) + os.sep)


def scalar_text(value) -> str:
    """An argument value as text: a whole JSON number is written without its `.0`."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e16 else repr(value)
    return str(value)


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _tuple(kinds):
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _close(key, allowed) -> str:
    norm = key.replace("-", "_").lower()
    for candidate in allowed:
        if candidate == norm:
            return f"; did you mean {candidate!r}?"
    return ""
