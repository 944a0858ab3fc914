"""Sizes the kernel or a small machine cannot take: refused before anything exists.

One argv or environment string over MAX_ARG_STRLEN, a command over ARG_MAX, a
flow file over the 1 MiB cap. At the limit itself a value arrives byte-exact.
"""

import json
import signal
import subprocess

import pytest

from featherflow import flow as flowmod, proc, states
from featherflow.engine import limits
from featherflow.engine import launch, reconcile
from featherflow.errors import FeatherflowError
from helpers import set_process

LIMIT = limits.MAX_ARG_STRLEN - 1  # the longest string an exec takes: its NUL makes 131072

ECHO = ("import os, sys\n"
        "open(os.path.join(os.environ['OUT'], 'argv'), 'wb').write(os.fsencode(sys.argv[1]))\n"
        "open(os.path.join(os.environ['OUT'], 'env'), 'wb').write(os.environb.get(b'BIG', b''))\n")


def setup(project, args=(), env=None, params=None):
    project.write_task("echo.py", ECHO)
    task = {"id": "a", "script": "echo.py", "args": list(args), "env": {"OUT": str(project.root), **(env or {})}}
    flow = {"name": "big", "tasks": [task]}
    if params is not None:
        flow["params"] = params
    project.write_flow(flow)


def nothing_created(project):
    assert not project.output.exists()
    app = project.app()
    try:
        assert app.store.runs.run_count() == 0
    finally:
        app.close()


def test_an_argument_one_byte_over_the_limit_is_refused_by_validate_and_run(project):
    setup(project, ["x" * (LIMIT + 1)])
    result = project.cli("validate", "big")
    assert result.code == 2
    assert "tasks[0].args[0]: the argument would be 131072 bytes" in result.err
    assert "limit: 131071 bytes" in result.err and "MAX_ARG_STRLEN" in result.err
    result = project.sh("run", "big")
    assert result.code == 2, result.err
    assert "tasks[0].args[0]" in result.err and "Argument list too long" not in result.err
    nothing_created(project)


@pytest.mark.slow
def test_an_argument_and_an_env_string_exactly_at_the_limit_run_and_arrive_byte_exact(project):
    arg = "é" * ((LIMIT - 1) // 2) + "x"  # bytes, not characters, count: 131071 bytes of UTF-8
    value = "v" * (LIMIT - len("BIG="))
    assert len(arg.encode()) == LIMIT
    setup(project, [arg], env={"BIG": value})
    assert project.cli("validate", "big").code == 0
    result = project.sh("run", "big")
    assert result.code == 0, result.err
    assert (project.root / "argv").read_bytes() == arg.encode()
    assert (project.root / "env").read_bytes() == value.encode()


def test_an_env_string_over_the_limit_names_the_variable(project):
    setup(project, env={"BIG": "v" * (LIMIT - len("BIG=") + 1)})
    result = project.cli("validate", "big")
    assert result.code == 2
    assert "tasks[0].env.BIG: NAME=value would be 131072 bytes" in result.err


def test_options_are_checked_after_substitution_of_params_with_their_flag(project):
    setup(project)
    # 2 x 65532 + 1 = 131065 bytes of value; `--data=` makes the argument 131072: one over.
    project.write_flow({"name": "big", "params": {"p": "y" * 65532},
                        "tasks": [{"id": "a", "script": "echo.py", "args": {"data": "{{ params.p }}{{ params.p }}x"}}]})
    result = project.cli("validate", "big")
    assert result.code == 2
    assert "tasks[0].args.data: the argument would be 131072 bytes after substitution of params" in result.err


def test_params_on_the_command_line_over_the_limit_are_refused_before_anything_exists(project):
    setup(project, ["{{ params.p }}"], params={"p": ""})
    assert project.cli("validate", "big").code == 0
    given = project.root / "params.json"
    given.write_text(json.dumps({"p": "z" * (LIMIT + 1)}))
    result = project.sh("run", "big", "--params", given)
    assert result.code == 2, result.err
    assert "tasks[0].args[0]: the argument would be 131072 bytes" in result.err
    assert "--params: FEATHERFLOW_PARAMS" in result.err and "--params.p" in result.err
    nothing_created(project)


def test_featherflow_params_counts_every_param_together(project):
    setup(project, params={"a": "1" * 70000, "b": "2" * 70001})
    result = project.cli("validate", "big")
    assert result.code == 2
    assert "params: FEATHERFLOW_PARAMS (the params as JSON" in result.err
    assert "the largest being params.b" in result.err


def test_a_task_over_arg_max_in_total_is_refused(project):
    # The flow file is small (the 1 MiB cap): one param, substituted many times, makes it big.
    setup(project, ["{{ params.p }}"] * (limits.arg_max() // 100000 + 1), params={"p": "x" * 100000})
    result = project.cli("validate", "big")
    assert result.code == 2
    assert "tasks[0]: its arguments and environment would come to" in result.err
    assert f"limit: {limits.arg_max()} bytes for one command, the kernel's ARG_MAX" in result.err
    assert "tasks[0].args[" not in result.err  # each argument alone is fine


def test_a_flow_file_over_the_cap_is_refused_by_its_size_without_reading_it(project, monkeypatch):
    path = project.write_flow({"name": "huge", "tasks": [{"id": "a", "script": "a.sh"}]})
    with open(path, "r+b") as f:
        f.truncate(50 * 1024 * 1024)  # sparse: 50 MB that were never written
    read = []
    monkeypatch.setattr(flowmod.Path, "read_bytes", lambda self: read.append(self) or b"")
    result = project.cli("validate", "huge")
    assert result.code == 2
    assert "the file is 52428800 bytes, over the cap of 1048576 bytes (1 MiB) on a flow file" in result.err
    assert read == []
    listed = project.cli("list")
    assert listed.code == 0 and "INVALID" in listed.out and "52428800 bytes" in listed.out


def test_a_flow_file_at_the_cap_loads(project):
    project.write_task("a.sh", "true\n")
    text = json.dumps({"name": "edge", "description": "", "tasks": [{"id": "a", "script": "a.sh"}]})
    padding = flowmod.MAX_FLOW_BYTES - len(text)
    (project.flows / "edge.json").write_text(text + " " * padding)
    assert (project.flows / "edge.json").stat().st_size == flowmod.MAX_FLOW_BYTES
    assert project.cli("validate", "edge").code == 0


# -- a run that cannot start ends failed, with its reason ---------------------

def _queued_run(project):
    setup(project)
    app = project.app()
    prepared = launch.prepare(app.config, app.store, "big", {})
    return app, prepared


def _block_logs(prepared):
    """A file where the run's logs dir goes (prepare made the dir: the script then makes none)."""
    logs = prepared.script_path.parent / "logs"
    logs.rmdir()
    logs.write_text("")


def test_a_script_that_cannot_start_and_cannot_record_it_leaves_its_reason_for_the_next_command(project):
    app, prepared = _queued_run(project)
    try:
        _block_logs(prepared)  # mkdir -p logs: File exists
        env = {**project.env, "FEATHERFLOW_MARK_DEADLINE": "not a number"}  # _mark refuses: exit 2
        child = subprocess.run(["bash", str(prepared.script_path)], env=env, capture_output=True, text=True, timeout=60)
        assert child.returncode == 4
        # The run is held by a process that is gone (as `featherflow run` execs into the script).
        gone = subprocess.Popen(["true"])
        gone.wait()
        set_process(app.store, prepared.run.id, gone.pid, 1, proc.boot_id())
        assert (prepared.script_path.parent / "start-failed").exists()
        done = reconcile.reconcile(app.store)
        run = app.store.runs.get_run(prepared.run.id)
        assert run.state == states.FAILED, run.reason
        assert run.reason.startswith("could not start: cannot create ") and "File exists" in run.reason
        assert done == [(run.id, run.reason)]
    finally:
        app.close()


def test_a_script_that_cannot_start_records_the_reason_itself(project):
    app, prepared = _queued_run(project)
    try:
        _block_logs(prepared)
        child = subprocess.run(["bash", str(prepared.script_path)], env=project.env, capture_output=True,
                               text=True, timeout=60)
        assert child.returncode == 4
        run = app.store.runs.get_run(prepared.run.id)
        assert run.state == states.FAILED
        assert "could not start: cannot create" in run.reason and "File exists" in run.reason
    finally:
        app.close()


def test_bash_that_cannot_be_executed_fails_the_run_with_the_reason(project, monkeypatch):
    app, prepared = _queued_run(project)
    fake = project.root / "not-bash"
    fake.write_text("no exec bit\n")
    fake.chmod(0o644)  # even root cannot exec a file without an exec bit: EACCES
    monkeypatch.setattr(launch, "bash", lambda: str(fake))
    try:
        with pytest.raises(FeatherflowError, match="could not start: cannot execute"):
            launch.exec_script(app.store, prepared)
        run = app.store.runs.get_run(prepared.run.id)
        assert run.state == states.FAILED and "Permission denied" in run.reason
        # the process lives on after the failed exec: Python's SIGPIPE handling is back
        assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
    finally:
        app.close()
