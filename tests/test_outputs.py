"""Task outputs: the file format, the cap, byte-exact values in a downstream task's argv
and env (never through a shell), the ancestor rule, and outputs that survive a resume
after the producer's files are gone."""

import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from featherflow import flow as flowmod, mark, outputs, states
from featherflow.errors import ValidationError

# A consumer that writes what it got, as JSON of its argv and $V (bytes as latin-1 text,
# so that any byte round-trips).
CONSUMER = """\
import json, os, sys
out = {"argv": [os.fsencode(a).decode("latin-1") for a in sys.argv[2:]],
       "env": os.fsencode(os.environ.get("V", "")).decode("latin-1")}
open(sys.argv[1], "w").write(json.dumps(out))
"""
# A producer that copies its file (tasks/values.bin) to $FEATHERFLOW_OUTPUT_FILE.
PRODUCER = 'cat "$(dirname "$0")/values.bin" >>"$FEATHERFLOW_OUTPUT_FILE"\n'
DELIM = "FF_END_3b9c"


def heredoc(values):
    return b"".join(f"{k}<<{DELIM}\n".encode() + v + f"\n{DELIM}\n".encode() for k, v in values.items())


def consumer_flow(project, got, keys, extra_consumer=None):
    project.write_task("produce.sh", PRODUCER)
    project.write_task("consume.py", CONSUMER)
    consumer = {"id": "use", "script": "consume.py", "depends_on": ["mid"],
                "args": [str(got)] + [f"{{{{ tasks.make.outputs.{k} }}}}" for k in keys]
                + [f"x{{{{ tasks.make.outputs.{keys[0]} }}}}y"],
                "env": {"V": f"<{{{{ tasks.make.outputs.{keys[-1]} }}}}>"}}
    consumer.update(extra_consumer or {})
    project.write_flow({"name": "f", "tasks": [
        {"id": "make", "script": "produce.sh"},
        {"id": "mid", "script": "produce.sh", "depends_on": ["make"]},
        consumer,
    ]})


def latin(value: bytes) -> str:
    return value.decode("latin-1")


HOSTILE = {
    "QUOTES": b"it's \"quoted\" \\ back",
    "SUBST": b"$(touch /tmp/ff-pwned) `id` ${HOME} $HOME",
    "LINES": b"first\nsecond\n\n  indented\r\nlast",
    "UNICODE": "h\u00e9 \u2014 \U0001f600 \u202e".encode(),
    "NOT_UTF8": b"\xff\xfe raw",
    "EMPTY": b"",
    "LOOKS_LIKE": b"{{ tasks.make.outputs.QUOTES }} {{ params.x }}",
}


def test_hostile_values_reach_the_downstream_argv_and_env_byte_exact(project, tmp_path):
    got = tmp_path / "got.json"
    keys = list(HOSTILE)
    consumer_flow(project, got, keys)
    (project.tasks / "values.bin").write_bytes(heredoc(HOSTILE) + b"PLAIN=a=b c\n")
    result = project.sh("run", "f")
    assert result.code == 0, result.out + result.err
    seen = json.loads(got.read_text())
    assert seen["argv"] == [latin(HOSTILE[k]) for k in keys] + [f"x{latin(HOSTILE[keys[0]])}y"]
    assert seen["env"] == f"<{latin(HOSTILE[keys[-1]])}>"
    shown = json.loads(project.cli("runs", "show", "1", "--json").out)
    make = next(t for t in shown["tasks"] if t["id"] == "make")["attempts"][0]
    assert make["outputs"]["PLAIN"] == "a=b c" and make["outputs"]["LINES"] == HOSTILE["LINES"].decode()
    assert make["outputs"]["NOT_UTF8"] == "\ufffd\ufffd raw"  # shown replaced; the task got the bytes
    assert "outputs: EMPTY=\"\"" in project.cli("runs", "show", "1").out


VALUE = st.binary(max_size=200).filter(lambda v: b"\0" not in v and DELIM.encode() not in v)


@pytest.mark.slow
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(VALUE, min_size=1, max_size=3))
def test_any_bytes_round_trip_into_a_downstream_argv(project, tmp_path, values):
    got = tmp_path / "got.json"
    keys = [f"K{i}" for i in range(len(values))]
    consumer_flow(project, got, keys)
    (project.tasks / "values.bin").write_bytes(heredoc(dict(zip(keys, values))))
    if project.db.exists():
        shutil.rmtree(project.home)
    result = project.sh("run", "f")
    assert result.code == 0, result.out + result.err
    seen = json.loads(got.read_text())
    assert seen["argv"][:len(values)] == [latin(v) for v in values]


@given(st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True), VALUE, max_size=5),
       st.booleans())
def test_the_format_round_trips(values, as_lines):
    """What a task writes (KEY=VALUE for a one-line value, or the heredoc) parses back."""
    if as_lines:
        values = {k: v for k, v in values.items() if b"\n" not in v}
        data = b"".join(k.encode() + b"=" + v + b"\n" for k, v in values.items())
    else:
        data = heredoc(values)
    assert outputs.parse(data) == {k: v.decode("utf-8", "surrogateescape") for k, v in values.items()}


@pytest.mark.parametrize("data, message", [
    (b"1KEY=x\n", "line 1: invalid key '1KEY'"),
    (b"A=1\nno equals\n", "line 2: not KEY=VALUE nor KEY<<DELIMITER"),
    (b"A<<EOF\nnever ends\n", "line 1: no line 'EOF' ends the value of A"),
    (b"A<<\n", "needs a delimiter"),
    (b"A=\0\n", "NUL byte"),
    (b"A=" + b"x" * outputs.MAX_BYTES, "over the cap of 65536 bytes (64 KiB)"),
])
def test_a_bad_outputs_file_is_refused_with_its_reason(data, message):
    with pytest.raises(outputs.OutputError) as caught:
        outputs.parse(data)
    assert message in str(caught.value)


@pytest.mark.parametrize("written, reason", [
    ('head -c 70000 /dev/zero | tr "\\0" x | sed "s/^/BIG=/" >>"$FEATHERFLOW_OUTPUT_FILE"\n',
     "outputs file is 70004 bytes, over the cap of 65536 bytes (64 KiB)"),
    ('echo "bad-key=1" >>"$FEATHERFLOW_OUTPUT_FILE"\n', "outputs file line 1: invalid key 'bad-key'"),
])
def test_outputs_over_the_cap_or_with_a_bad_key_fail_the_attempt(project, written, reason):
    project.write_task("make.sh", written)
    project.write_task("ok.sh", "true\n")
    project.write_flow({"name": "f", "tasks": [
        {"id": "make", "script": "make.sh"},
        {"id": "after", "script": "ok.sh", "depends_on": ["make"]}]})
    result = project.sh("run", "f")
    assert result.code == 1, result.out + result.err
    shown = {t["id"]: t for t in json.loads(project.cli("runs", "show", "1", "--json").out)["tasks"]}
    make = shown["make"]["attempts"][0]
    assert (make["state"], make["outputs"]) == ("failed", None) and make["reason"].startswith(reason)
    assert shown["after"]["state"] == "upstream_failed"


def test_mark_records_a_success_whose_file_turned_bad_as_failed(project, store, tmp_path):
    """The engine checks the file first; should it change after, the success is not stored."""
    from helpers import fake_run

    run = fake_run(store, outcomes={"a": ["running"]})
    (tmp_path / "a.1").write_bytes(b"=nokey\n")
    assert mark.call([str(project.db), str(run.id), "--outputs", str(tmp_path), "a:1:success:0"], states) == 0
    attempt = store.runs.attempts(run.id)[0]
    assert (attempt.state, attempt.outputs) == ("failed", None)
    assert "invalid key ''" in attempt.reason


@pytest.mark.parametrize("ref, where", [
    ("{{ tasks.side.outputs.K }}", "tasks[2].args[0]"),  # a sibling, not upstream
    ("{{ tasks.use.outputs.K }}", "tasks[2].args[0]"),  # itself
    ("{{ tasks.nobody.outputs.K }}", "tasks[2].args[0]"),
])
def test_a_placeholder_naming_a_task_that_is_not_upstream_is_a_validation_error(ref, where):
    data = {"name": "f", "tasks": [
        {"id": "make", "script": "a.sh"}, {"id": "side", "script": "a.sh"},
        {"id": "use", "script": "a.sh", "depends_on": ["make"], "args": [ref]}]}
    with pytest.raises(ValidationError) as caught:
        flowmod.validate(data)
    assert f"{where}: " in str(caught.value) and "is not upstream of task 'use'" in str(caught.value)
    assert "valid: the tasks it depends on, directly or not: make" in str(caught.value)
    data["tasks"][2]["args"] = ["{{ tasks.make.outputs.K }}"]
    data["tasks"][2]["env"] = {"E": "{{ tasks.make.outputs.bad-key }}"}
    with pytest.raises(ValidationError) as caught:
        flowmod.validate(data)
    assert "tasks[2].env.E: unknown placeholder {{ tasks.make.outputs.bad-key }}" in str(caught.value)
    del data["tasks"][2]["env"]
    assert flowmod.validate(data).task("use").output_refs() == [("make", "K")]


def test_a_task_without_a_placeholder_runs_as_before(project):
    """No outputs helper in the way of a task that uses no output."""
    from featherflow.engine import script

    flow = flowmod.validate({"name": "f", "tasks": [
        {"id": "make", "script": "a.sh"},
        {"id": "use", "script": "a.sh", "depends_on": ["make"], "args": ["{{ tasks.make.outputs.K }}"]}]})
    spec = script.RunSpec(run_id=1, run_uid="u", trigger="manual", params={}, max_parallel=1,
                          python="/py", mark="/pkg/featherflow/mark.py", db="/db", tasks_dir="/t", run_dir="/r")
    text = script.render(flow, spec)
    make_fn = text[text.index("task_0() {"):text.index("}", text.index("task_0() {"))]
    use_fn = text[text.index("task_1() {"):text.index("}\n", text.index("task_1() {"))]
    assert "FF_OUTPUTS" not in make_fn
    assert '"$FF_PYTHON" -I -S "$FF_OUTPUTS" "$FF_DB" "$RUN_ID"' in use_fn
    assert "FF_OUTPUTS=/pkg/featherflow/outputs.py" in text


def test_outputs_survive_a_resume_after_the_producers_files_are_deleted(project, tmp_path):
    got = tmp_path / "got.json"
    flag = tmp_path / "fixed"
    consumer_flow(project, got, ["K"])
    project.write_task("consume.py", f"import os, sys\nif not os.path.exists({str(flag)!r}): sys.exit(4)\n"
                       + CONSUMER)
    (project.tasks / "values.bin").write_bytes(b"K=from the first attempt\n")
    assert project.sh("run", "f").code == 1
    for outputs_dir in project.output.glob("runs/*/outputs"):
        shutil.rmtree(outputs_dir)  # the producer's files are gone
    (project.tasks / "values.bin").write_bytes(b"K=never read again\n")
    flag.touch()
    result = project.sh("runs", "resume", "1")
    assert result.code == 0, result.out + result.err
    seen = json.loads(got.read_text())
    assert seen["argv"][0] == "from the first attempt" and seen["env"] == "<from the first attempt>"


def test_a_missing_output_fails_the_task_with_a_clear_message(project, tmp_path):
    got = tmp_path / "got.json"
    consumer_flow(project, got, ["NEVER_WRITTEN"])
    (project.tasks / "values.bin").write_bytes(b"OTHER=1\n")
    result = project.sh("run", "f")
    assert result.code == 1, result.out + result.err
    log = next(project.output.glob("runs/*/logs/use.1.log")).read_text()
    assert "task make wrote no output NEVER_WRITTEN (it wrote: OTHER)" in log
    assert not got.exists()
