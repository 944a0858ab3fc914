"""Flow loading and validation: one invalid example per rule, each naming its JSON path.

Validation is the user's only feedback on a flow file before it runs, so every
message must point at the field (`tasks[2].depends_on[0]`) and say what is valid.
"""

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from featherflow import flow as flowmod, graph
from featherflow.errors import UsageError, ValidationError

WEATHER = Path(__file__).parent / "data" / "weather_observations_flow.json"


@pytest.fixture
def tasks_dir(tmp_path):
    d = tmp_path / "tasks"
    d.mkdir()
    for name in ("a.sh", "b.sh", "c.sh"):
        (d / name).write_text("echo hi\n")
    return d


def base():
    """A valid three-task flow named `f`: a, then b after a, then c after a and b."""
    return {
        "name": "f",
        "description": "a test flow",
        "version": "1",
        "tasks": [
            {"id": "a", "script": "a.sh"},
            {"id": "b", "script": "b.sh", "depends_on": ["a"]},
            {"id": "c", "script": "c.sh", "depends_on": ["a", "b"]},
        ],
    }


def errors_of(data, tasks_dir=None, expected_name="f"):
    with pytest.raises(ValidationError) as info:
        flowmod.validate(data, expected_name=expected_name, tasks_dir=tasks_dir)
    assert info.value.errors, "a ValidationError must carry at least one message"
    return info.value.errors


def one_error(data, path, fragment, tasks_dir=None):
    """Exactly one error, which starts with `path: ` and contains `fragment`."""
    errs = errors_of(data, tasks_dir)
    assert len(errs) == 1, errs
    assert errs[0].startswith(f"{path}: "), errs
    assert fragment in errs[0], errs
    return errs[0]


def test_base_flow_is_valid(tasks_dir):
    f = flowmod.validate(base(), expected_name="f", tasks_dir=tasks_dir)
    assert [t.id for t in f.tasks] == ["a", "b", "c"]
    assert f.edges == {"a": (), "b": ("a",), "c": ("a", "b")}
    assert f.description == "a test flow" and f.version == "1"


# -- syntax and top level ------------------------------------------------------

def test_not_json_names_line_and_column(tmp_path):
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "f.json").write_text('{\n  "name": "f",\n  "tasks": [,]\n}\n')
    with pytest.raises(ValidationError) as info:
        flowmod.load(flows, "f")
    (msg,) = info.value.errors
    assert msg.startswith("not valid JSON") and "line 3 column 13" in msg
    assert info.value.source == str(flows / "f.json")


def test_not_utf8_is_a_validation_error(tmp_path):
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "f.json").write_bytes(b'{"name": "\xff"}')
    with pytest.raises(ValidationError, match="not UTF-8"):
        flowmod.load(flows, "f")


def test_huge_integer_is_a_validation_error():
    # Python refuses to parse integers over 4300 digits with a plain ValueError.
    with pytest.raises(ValidationError, match="not valid JSON"):
        flowmod.parse('{"name": "f", "version": ' + "9" * 5000 + "}")


@pytest.mark.parametrize("data, kind", [([], "an array"), ("f", "a string"), (None, "null"), (3, "a number")])
def test_top_level_not_an_object(data, kind):
    (msg,) = errors_of(data)
    assert "top level must be a JSON object" in msg and kind in msg


def test_missing_name():
    data = base()
    del data["name"]
    one_error(data, "name", "is required")


def test_empty_name():
    data = base()
    data["name"] = ""
    one_error(data, "name", "must not be empty")


def test_missing_tasks():
    data = base()
    del data["tasks"]
    one_error(data, "tasks", "is required")


def test_empty_tasks():
    data = base()
    data["tasks"] = []
    one_error(data, "tasks", "must not be empty")


def test_name_must_match_file_name(tmp_path, tasks_dir):
    flows = tmp_path / "flows"
    flows.mkdir()
    data = base()
    data["name"] = "other"
    (flows / "f.json").write_text(json.dumps(data))
    with pytest.raises(ValidationError) as info:
        flowmod.load(flows, "f", tasks_dir)
    (msg,) = info.value.errors
    assert msg.startswith("name: ") and "'other'" in msg and "f.json" in msg


# -- unknown keys ----------------------------------------------------------------

def test_unknown_flow_key():
    data = base()
    data["colour"] = "red"
    msg = one_error(data, "colour", "unknown key")
    assert "valid: name, description" in msg


def test_misspelt_depends_on_is_an_error_not_no_dependencies():
    data = base()
    data["tasks"][2]["depends-on"] = data["tasks"][2].pop("depends_on")
    msg = one_error(data, "tasks[2].depends-on", "unknown key")
    assert "did you mean 'depends_on'?" in msg


def test_unknown_task_key():
    data = base()
    data["tasks"][1]["cmd"] = "ls"
    msg = one_error(data, "tasks[1].cmd", "unknown key")
    assert "depends_on" in msg  # names what is valid


# -- wrong types -------------------------------------------------------------------

def _set(data, path, value):
    """Set data[path...] = value, where path is a tuple of keys/indexes."""
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


WRONG_TYPES = [
    (("name",), 7, "name", "must be a string, not a number"),
    (("description",), ["x"], "description", "must be a string, not an array"),
    (("version",), {"major": 1}, "version", "must be a string or a number, not an object"),
    (("version",), True, "version", "not a boolean"),
    (("tasks",), "a,b", "tasks", "must be an array of tasks, not a string"),
    (("tasks",), {"a": {}}, "tasks", "not an object"),
    (("max_parallel",), "4", "max_parallel", "whole number"),
    (("max_parallel",), 2.5, "max_parallel", "whole number"),
    (("max_parallel",), True, "max_parallel", "not a boolean"),
    (("params",), ["day"], "params", "must be an object"),
    (("tasks", 0, "id"), 1, "tasks[0].id", "must be a string, not a number"),
    (("tasks", 0, "script"), ["a.sh"], "tasks[0].script", "must be a string, not an array"),
    (("tasks", 0, "description"), None, "tasks[0].description", "must be a string, not null"),
    (("tasks", 0, "args"), "--x 1", "tasks[0].args", "must be an array of arguments or an object"),
    (("tasks", 0, "args"), [["nested"]], "tasks[0].args[0]", "must be a string or a number, not an array"),
    (("tasks", 0, "args"), [None], "tasks[0].args[0]", "not null"),
    (("tasks", 0, "args"), {"k": {"x": 1}}, "tasks[0].args.k", "not an object"),
    (("tasks", 0, "env"), ["A=1"], "tasks[0].env", "must be an object"),
    (("tasks", 0, "env"), {"A": None}, "tasks[0].env.A", "must be a string or a number, not null"),
    (("tasks", 0, "env"), {"A": True}, "tasks[0].env.A", "not a boolean"),
    (("tasks", 0, "retries"), "3", "tasks[0].retries", "whole number"),
    (("tasks", 0, "retries"), 1.5, "tasks[0].retries", "whole number"),
    (("tasks", 0, "retries"), True, "tasks[0].retries", "not a boolean"),
    (("tasks", 0, "retry_delay"), "5s", "tasks[0].retry_delay", "number of seconds"),
    (("tasks", 0, "retry_backoff"), False, "tasks[0].retry_backoff", "not a boolean"),
    (("tasks", 0, "timeout"), "10", "tasks[0].timeout", "number of seconds"),
    (("tasks", 0, "timeout"), [10], "tasks[0].timeout", "not an array"),
]


@pytest.mark.parametrize("where, value, path, fragment", WRONG_TYPES,
                         ids=[f"{w[2]}={w[1]!r}" for w in WRONG_TYPES])
def test_wrong_type(where, value, path, fragment):
    data = _set(base(), where, value)
    errs = errors_of(data)
    assert any(e.startswith(f"{path}: ") and fragment in e for e in errs), errs


def test_task_that_is_not_an_object():
    data = base()
    data["tasks"].append("d")
    errs = errors_of(data)
    assert errs == ["tasks[3]: must be an object with 'id' and 'script', not a string"]


def test_string_depends_on_is_an_error_not_a_list_of_characters():
    data = base()
    data["tasks"][1]["depends_on"] = "a"
    one_error(data, "tasks[1].depends_on", "must be an array of task ids, not a string")


def test_depends_on_element_not_a_string():
    data = base()
    data["tasks"][2]["depends_on"] = ["a", 2]
    # Only the type error: a number is not "a task listed twice".
    one_error(data, "tasks[2].depends_on[1]", "must be a task id string, not a number")


def test_dependency_listed_twice():
    data = base()
    data["tasks"][2]["depends_on"] = ["a", "a"]
    one_error(data, "tasks[2].depends_on", "more than once")


def test_missing_id_and_script():
    data = base()
    data["tasks"][1] = {"depends_on": ["a"]}
    errs = errors_of(data)
    assert any(e.startswith("tasks[1].id: is required") for e in errs), errs
    assert any(e.startswith("tasks[1].script: is required") for e in errs), errs


# -- ids and dependencies ------------------------------------------------------------

def test_duplicate_ids():
    data = base()
    data["tasks"][2]["id"] = "a"
    errs = errors_of(data)
    assert "tasks[2].id: duplicate id 'a' (also tasks[0])" in errs


@pytest.mark.parametrize("bad", ["", "a b", "x" * 65, "caf\u00e9", "a/b", "a.b", "$(id)", "-\n"])
def test_bad_ids(bad):
    data = base()
    data["tasks"][0]["id"] = bad
    data["tasks"][1]["depends_on"] = []
    data["tasks"][2]["depends_on"] = []
    msg = one_error(data, "tasks[0].id", "invalid id")
    assert "valid: 1-64 of A-Z a-z 0-9 _ -" in msg


@pytest.mark.parametrize("good", ["x" * 64, "A-z_09", "-", "_"])
def test_good_ids(good):
    data = base()
    data["tasks"][0]["id"] = good
    data["tasks"][1]["depends_on"] = [good]
    data["tasks"][2]["depends_on"] = [good, "b"]
    assert flowmod.validate(data).tasks[0].id == good


def test_unknown_dependency_lists_the_known_tasks():
    data = base()
    data["tasks"][2]["depends_on"] = ["fetch"]
    one_error(data, "tasks[2].depends_on[0]", "unknown task 'fetch' (known: a, b, c)")


def test_self_dependency():
    data = base()
    data["tasks"][1]["depends_on"] = ["a", "b"]
    one_error(data, "tasks[1].depends_on[1]", "task 'b' depends on itself")


def test_cycle_reported_as_path():
    data = base()
    data["tasks"] = [
        {"id": "a", "script": "a.sh", "depends_on": ["b"]},
        {"id": "b", "script": "a.sh", "depends_on": ["c"]},
        {"id": "c", "script": "a.sh", "depends_on": ["a"]},
        {"id": "d", "script": "a.sh"},
    ]
    assert errors_of(data) == ["tasks: dependency cycle: a -> b -> c -> a"]


def test_two_task_cycle_behind_an_acyclic_part():
    data = base()
    data["tasks"].append({"id": "x", "script": "a.sh", "depends_on": ["c", "y"]})
    data["tasks"].append({"id": "y", "script": "a.sh", "depends_on": ["x"]})
    (msg,) = errors_of(data)
    assert msg in ("tasks: dependency cycle: x -> y -> x", "tasks: dependency cycle: y -> x -> y")


# -- env, NUL, scripts ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["1A", "A-B", "A B", "", "A=B", "PATH;rm"])
def test_env_name_not_a_shell_identifier(name):
    data = base()
    data["tasks"][0]["env"] = {"GOOD_1": "x", name: "y"}
    one_error(data, f"tasks[0].env.{name}", "invalid variable name")


@pytest.mark.parametrize("where, value, path", [
    (("description",), "x\x00y", "description"),
    (("tasks", 1, "description"), "\x00", "tasks[1].description"),
    (("tasks", 0, "args"), ["ok", "bad\x00"], "tasks[0].args[1]"),
    (("tasks", 0, "args"), {"o": "bad\x00"}, "tasks[0].args.o"),
    (("tasks", 0, "env"), {"A": "x\x00y"}, "tasks[0].env.A"),
])
def test_nul_byte(where, value, path):
    data = _set(base(), where, value)
    one_error(data, path, "NUL byte")


def test_nul_byte_in_a_key():
    data = base()
    data["tasks"][0]["env"] = {"A\x00": "1"}
    one_error(data, "tasks[0].env", "a key contains a NUL byte")


def test_nul_byte_from_a_file(tmp_path, tasks_dir):
    flows = tmp_path / "flows"
    flows.mkdir()
    data = base()
    data["tasks"][2]["args"] = ["x\u0000y"]
    (flows / "f.json").write_text(json.dumps(data))
    with pytest.raises(ValidationError) as info:
        flowmod.load(flows, "f", tasks_dir)
    assert [e for e in info.value.errors if e.startswith("tasks[2].args[0]: ") and "NUL" in e]


def test_missing_script(tasks_dir):
    data = base()
    data["tasks"][1]["script"] = "nope.sh"
    one_error(data, "tasks[1].script", "'nope.sh' not found in", tasks_dir)


def test_script_that_is_a_directory(tasks_dir):
    (tasks_dir / "sub.sh").mkdir()
    data = base()
    data["tasks"][1]["script"] = "sub.sh"
    one_error(data, "tasks[1].script", "is not a file", tasks_dir)


def test_script_not_executable_and_not_py_or_sh(tasks_dir):
    (tasks_dir / "tool").write_text("#!/bin/sh\n")
    (tasks_dir / "tool").chmod(0o644)
    data = base()
    data["tasks"][1]["script"] = "tool"
    one_error(data, "tasks[1].script", "not executable", tasks_dir)
    (tasks_dir / "tool").chmod(0o755)
    assert flowmod.validate(data, tasks_dir=tasks_dir).tasks[1].script == "tool"


def test_non_executable_py_and_sh_scripts_are_fine(tasks_dir):
    (tasks_dir / "x.py").write_text("print(1)\n")
    (tasks_dir / "x.py").chmod(0o644)
    (tasks_dir / "a.sh").chmod(0o644)
    data = base()
    data["tasks"][1]["script"] = "x.py"
    assert flowmod.validate(data, tasks_dir=tasks_dir).tasks[1].script == "x.py"


def test_script_in_a_subdirectory(tasks_dir):
    (tasks_dir / "lib").mkdir()
    (tasks_dir / "lib" / "x.sh").write_text("echo\n")
    data = base()
    data["tasks"][0]["script"] = "lib/x.sh"
    assert flowmod.validate(data, tasks_dir=tasks_dir).tasks[0].script == "lib/x.sh"


@pytest.mark.parametrize("script", ["../a.sh", "/etc/passwd", "~/x.sh", "lib/../../a.sh", ""])
def test_script_outside_the_tasks_dir(script, tasks_dir):
    data = base()
    data["tasks"][0]["script"] = script
    one_error(data, "tasks[0].script", "must be a path inside the tasks dir", tasks_dir)


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "sub/f", "..", ".hidden", "-rf", "", "a\x00b"])
def test_flow_name_that_leaves_the_flows_dir(name, tmp_path):
    flows = tmp_path / "flows"
    flows.mkdir()
    (tmp_path / "x.json").write_text(json.dumps(dict(base(), name="x")))
    with pytest.raises(UsageError, match="invalid flow name"):
        flowmod.load(flows, name)


def test_flow_name_with_json_suffix_and_unknown_flow(tmp_path):
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "f.json").write_text(json.dumps(base()))
    (flows / "g.json").write_text(json.dumps(dict(base(), name="g")))
    assert flowmod.load(flows, "f.json").name == "f"
    with pytest.raises(UsageError, match=r"flow 'h' not found .*\(known: f, g\)"):
        flowmod.load(flows, "h")


# -- params placeholders -------------------------------------------------------------------

def test_unknown_param_placeholder_with_no_params():
    data = base()
    data["tasks"][0]["args"] = ["--day", "{{ params.day }}"]
    one_error(data, "tasks[0].args[1]", "unknown param in {{ params.day }} (known: none declared")


def test_unknown_param_placeholder_lists_known_params():
    data = base()
    data["params"] = {"date": "2026-01-01", "limit": 3}
    data["tasks"][1]["args"] = {"day": "{{params.day}}", "limit": "{{ params.limit }}"}
    data["tasks"][2]["env"] = {"DAY": "{{ params.date }}", "X": "{{ params.dat }}"}
    errs = errors_of(data)
    assert errs == [
        "tasks[1].args.day: unknown param in {{ params.day }} (known: date, limit)",
        "tasks[2].env.X: unknown param in {{ params.dat }} (known: date, limit)",
    ]


def test_unknown_placeholder_and_builtins():
    data = base()
    data["tasks"][0]["args"] = ["{{ run_id }}", "{{ flow }}", "{{ scheduled_at }}", "{{ secret }}"]
    msg = one_error(data, "tasks[0].args[3]", "unknown placeholder {{ secret }}")
    assert "{{ params.NAME }}" in msg


def test_bad_param_name():
    data = base()
    data["params"] = {"1day": "x"}
    one_error(data, "params.1day", "invalid param name")


# -- retries, timeouts, parallelism ------------------------------------------------------------

@pytest.mark.parametrize("key, value, fragment", [
    ("retries", -1, "must be >= 0, not -1"),
    ("retry_delay", -0.5, "must be >= 0, not -0.5"),
    ("retry_backoff", 0.5, "must be >= 1, not 0.5"),
    ("timeout", 0, "must be > 0, not 0"),
    ("timeout", -3, "must be > 0, not -3"),
    ("timeout", math.nan, "NaN"),
    ("retry_delay", math.inf, "Infinity"),
    ("timeout", 10 ** 400, "that large"),
])
def test_bad_retry_and_timeout_values(key, value, fragment):
    data = base()
    data["tasks"][1][key] = value
    one_error(data, f"tasks[1].{key}", fragment)


@pytest.mark.parametrize("value", [0, -2])
def test_bad_max_parallel(value):
    data = base()
    data["max_parallel"] = value
    one_error(data, "max_parallel", f"must be >= 1, not {value}")


def test_good_execution_fields():
    data = base()
    data["max_parallel"] = 2
    data["params"] = {"day": "today"}
    data["tasks"][0].update(retries=3, retry_delay=1.5, retry_backoff=2, timeout=30,
                            args=["{{ params.day }}", 3, 2.0], env={"N": 1, "S": "x"})
    f = flowmod.validate(data)
    t = f.task("a")
    assert (f.max_parallel, f.params) == (2, {"day": "today"})
    assert (t.retries, t.retry_delay, t.retry_backoff, t.timeout) == (3, 1.5, 2.0, 30.0)
    assert t.args == ("{{ params.day }}", "3", "2") and t.env == {"N": "1", "S": "x"}


# -- collecting, real flows, size ---------------------------------------------------------------

def test_collects_every_error_at_once(tasks_dir):
    data = base()
    data["colour"] = 1
    data["tasks"][0]["id"] = "bad id"
    data["tasks"][1]["script"] = "missing.sh"
    data["tasks"][1]["depends_on"] = "a"
    data["tasks"][2]["env"] = {"1X": "v"}
    data["tasks"][2]["timeout"] = -1
    errs = errors_of(data, tasks_dir)
    paths = [e.split(": ", 1)[0] for e in errs]
    for expected in ("colour", "tasks[0].id", "tasks[1].script", "tasks[1].depends_on",
                     "tasks[2].env.1X", "tasks[2].timeout"):
        assert expected in paths, errs


def test_weather_flow_validates_unchanged(tmp_path):
    flows, tasks = tmp_path / "flows", tmp_path / "tasks"
    flows.mkdir()
    tasks.mkdir()
    shutil.copy(WEATHER, flows / WEATHER.name)
    for script in ("get_observations.py", "aggregate_data_to_csv.py", "generate_synopsis.py"):
        (tasks / script).write_text("print('ok')\n")  # not executable: .py runs through python
    before = (flows / WEATHER.name).read_bytes()
    f = flowmod.load(flows, "weather_observations_flow", tasks)
    assert (flows / WEATHER.name).read_bytes() == before
    assert f.source == json.loads(before)
    assert len(f.tasks) == 5
    assert f.task("get_sfo_obs").args == {"station": "KSFO"}
    assert f.task("generate_synopsis").args == {"input": "weather_data.csv", "format": "fancy"}
    assert f.edges["aggregate_data"] == ("get_lax_obs", "get_sfo_obs", "get_nyc_obs")
    assert json.loads(f.snapshot()) == json.loads(before)


def _big(n, chain):
    tasks = []
    for i in range(n):
        deps = [f"t{i - 1}"] if chain and i else [f"t{j}" for j in (i // 2, i // 3, i - 1) if 0 <= j < i]
        tasks.append({"id": f"t{i}", "script": "a.sh", "depends_on": sorted(set(deps))})
    return {"name": "f", "tasks": tasks}


@pytest.mark.parametrize("n, chain", [(1000, False), (1000, True), (5000, True)])
def test_large_flows_validate_without_recursion_error(n, chain, tasks_dir):
    f = flowmod.validate(_big(n, chain), expected_name="f", tasks_dir=tasks_dir)
    assert len(f.tasks) == n
    order = graph.topological_order(f.edges)
    assert order[0] == "t0" and len(order) == n
    assert graph.descendants(f.edges, ["t0"]) == {f"t{i}" for i in range(1, n)}
    assert graph.draw_text(f.name, f.edges).count("●") == n


def test_long_cycle_found_without_recursion_error():
    data = _big(3000, chain=True)
    data["tasks"][0]["depends_on"] = ["t2999"]
    (msg,) = errors_of(data)
    assert msg.startswith("tasks: dependency cycle: ") and msg.count(" -> ") == 3000


# -- hypothesis: random mutations never raise anything but ValidationError -----------------------

def _json_values():
    scalars = (st.none() | st.booleans() | st.integers() | st.floats()
               | st.text(max_size=12)
               | st.sampled_from(["", "a", "b", "a.sh", "../x", "/etc/passwd", "{{ params.x }}",
                                  "{{ run_id }}", "{{", "x\x00", "depends_on", "1A", "c.sh"]))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def _paths(value, here=()):
    """Every location in a JSON value, as a tuple of keys/indexes."""
    yield here
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, here + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, here + (i,))


@st.composite
def mutated_flows(draw):
    data = base()
    data["params"] = {"x": 1}
    data["tasks"][0].update(args={"o": "{{ params.x }}"}, env={"A": "1"}, retries=1, timeout=5)
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(data))
        where = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "drop", "insert", "retype"]))
        if not where:
            if op == "replace":
                data = draw(_json_values())
            continue
        parent = data
        for key in where[:-1]:
            parent = parent[key]
        target = parent[where[-1]]
        if op == "drop":
            del parent[where[-1]]
        elif op == "replace":
            parent[where[-1]] = draw(_json_values())
        elif op == "retype":
            parent[where[-1]] = draw(st.sampled_from(
                [str(target), [target], {"v": target}, None, True, 0, -1, 1.5]))
        elif isinstance(target, dict):
            key = draw(st.sampled_from(flowmod.TASK_KEYS + flowmod.FLOW_KEYS + ("depends-on", "zz"))
                       | st.text(max_size=6))
            target[key] = draw(_json_values())
        elif isinstance(target, list):
            target.insert(draw(st.integers(0, len(target))), draw(_json_values()))
        else:
            parent[where[-1]] = draw(_json_values())
    return data


@pytest.fixture(scope="module")
def shared_tasks_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    for name in ("a.sh", "b.sh", "c.sh"):
        (d / name).write_text("echo hi\n")
    return d


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_flows())
def test_random_mutations_validate_or_fail_cleanly(data, shared_tasks_dir):
    original = copy.deepcopy(data)
    try:
        f = flowmod.validate(data, expected_name="f", tasks_dir=shared_tasks_dir)
    except ValidationError as exc:
        assert exc.errors and all(isinstance(e, str) and e for e in exc.errors)
    else:
        assert f.name == "f" and f.tasks
        assert graph.find_cycle(f.edges) is None
        for t in f.tasks:
            assert all(math.isfinite(x) for x in (t.retry_delay, t.retry_backoff, t.timeout or 1))
            assert set(t.depends_on) <= {u.id for u in f.tasks}
    assert data == original or _has_nan(original), "validation must not modify its input"
    # The same document as text goes through parse() too, with the same outcome class.
    try:
        flowmod.validate(flowmod.parse(json.dumps(data)), expected_name="f", tasks_dir=shared_tasks_dir)
    except ValidationError as exc:
        assert exc.errors


def _has_nan(value):
    return any(isinstance(v, float) and v != v for v in _walk(value))


def _walk(value):
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)
