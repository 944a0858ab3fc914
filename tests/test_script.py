"""The generated script, rendered without running it: syntax, lint, quoting, mapping.

Pure tests: the only subprocesses are `bash -n` and `shellcheck`.
"""

import re
import shlex
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from featherflow import errors, flow as flowmod, states
from featherflow.engine import script

SHELLCHECK = shutil.which("shellcheck")
needs_shellcheck = pytest.mark.skipif(
    SHELLCHECK is None, reason="shellcheck is not installed (.ci/run installs it: apt-get install shellcheck)")

NASTY = [
    "plain", "with space", "it's", 'say "hi"', "$(touch canary)", "`touch canary`", "a;b", "a|b",
    "a\nb", "*", "?", "~/x", "-leading-dash", "--also", "ünïcødé ✓", "$HOME", "${HOME}", "\\", "'", "",
    "{a,b}", "!event", "\t tab", "#comment", "a&&b", ">out", "\r",
]


def make_flow(tasks, params=None, name="f"):
    data = {"name": name, "tasks": tasks}
    if params is not None:
        data["params"] = params
    return flowmod.validate(data)


def spec(**overrides):
    """A RunSpec with paths that need quoting (spaces)."""
    values = dict(
        run_id=42, run_uid="0123456789abcdef", trigger="manual", params={}, max_parallel=3,
        python="/opt/py thon/bin/python3", mark="/opt/ff/featherflow/mark.py", db="/var/lib/ff/feather flow.db",
        tasks_dir="/srv/my tasks", run_dir="/srv/out/runs/42-01234567", output_dir="/srv/out",
    )
    values.update(overrides)
    return script.RunSpec(**values)


def render(flow, **overrides):
    """Render with the flow's default params unless params are given."""
    return script.render(flow, spec(**{"params": flow.params, **overrides}))


def task_function(text, index):
    """The body of task_<index>() with its continuation lines joined."""
    match = re.search(rf"^task_{index}\(\) {{\n(.*?)\n}}$", text, re.S | re.M)
    assert match, f"no task_{index} in the script"
    return match.group(1).replace("\\\n", " ")


def exec_words(text, index):
    """The words of task_<index>'s exec line, as bash would split them (quotes removed)."""
    return shlex.split(task_function(text, index))


def bash_n(tmp_path, text):
    path = tmp_path / "run.sh"
    path.write_text(text, encoding="utf-8")
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return path


def shellcheck(path):
    proc = subprocess.run([SHELLCHECK, "--norc", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


FULL_FLOW = [
    {"id": "extract", "script": "extract.py", "description": "pull the data\nrm -rf / # not a command",
     "args": ["{{ params.day }}", "--run={{ run_id }}", "{{ flow }}", "{{ scheduled_at }}"] + NASTY,
     "env": {"DAY": "{{ params.day }}", "WEIRD": "$(touch canary) `x` 'q' \"d\"", "UID": "0", "FF_PYTHON": "/bin/false"},
     "retries": 3, "retry_delay": 1.5, "retry_backoff": 2, "timeout": 2.5},
    {"id": "load", "script": "load.sh", "depends_on": ["extract"],
     "args": {"v": True, "o": "out file", "level": 3, "dry-run": False, "skip": None, "name": "$(x)"}},
    {"id": "report", "script": "bin/report", "depends_on": ["load", "side"]},
    {"id": "side", "script": "side.sh"},
]


def test_full_flow_passes_bash_n(tmp_path):
    text = render(make_flow(FULL_FLOW, params={"day": "2026-01-01"}))
    bash_n(tmp_path, text)


@needs_shellcheck
def test_full_flow_is_shellcheck_clean(tmp_path):
    text = render(make_flow(FULL_FLOW, params={"day": "2026-01-01"}), keep=("side",), dry_run=True)
    shellcheck(bash_n(tmp_path, text))


@needs_shellcheck
def test_the_engine_file_is_shellcheck_clean_by_itself():
    proc = subprocess.run([SHELLCHECK, "--norc", "-s", "bash", str(script.ENGINE_PATH)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_shellcheck
def test_a_script_that_runs_is_shellcheck_clean(tmp_path):
    text = render(make_flow(FULL_FLOW, params={"day": "2026-01-01"}), keep=("side",))
    shellcheck(bash_n(tmp_path, text))


def test_the_engine_is_embedded_whole_and_its_exit_codes_come_from_errors():
    text = render(make_flow([{"id": "t", "script": "t.sh"}]))
    assert "source" not in text.split(script.engine().splitlines()[0])[0]
    assert text.endswith(script.engine())
    assert "shellcheck shell=bash" not in text  # engine.bash's own lint line stays out
    for name in script.EXIT_CODES:
        assert f"{name}={getattr(errors, name)}" in text
    engine = script.engine()
    assert not re.search(r"\bexit [0-9]|code=[0-9]", engine), "an exit code written as a number"


def test_the_engine_uses_the_database_words_for_task_states():
    engine = script.engine()
    used = set(re.findall(r"T_STATE\[\w+\]=(\w+)", engine)) | set(re.findall(r"T_STATE\[\w+\]} == (\w+)", engine))
    assert used - set(states.ATTEMPT_STATES) == {"retry_wait"}
    assert {"ok", "stopped", "delay"} & used == set()  # "skipped" is a database word (run_if)


def test_a_dry_run_script_says_what_it_is_and_stops(tmp_path):
    path = bash_n(tmp_path, render(make_flow([{"id": "t", "script": "t.sh"}]), dry_run=True,
                                   run_dir=str(tmp_path / "d")))
    proc = subprocess.run(["bash", str(path)], capture_output=True, text=True)
    assert proc.stdout.splitlines()[0].startswith("dry run of f: nothing is recorded"), proc.stdout
    assert proc.returncode == errors.EXIT_CONFLICT and not (tmp_path / "d").exists()


def test_array_args_arrive_as_given_after_the_interpreter():
    flow = make_flow([{"id": "t", "script": "t.py", "args": NASTY}])
    words = exec_words(script.render(flow, spec()), 0)
    assert words[-len(NASTY):] == NASTY
    assert words[:-len(NASTY)] == ["exec", "setsid", "-w", "$FF_PYTHON", "-u", "/srv/my tasks/t.py"]


def test_object_args_mapping():
    args = {"k": "v", "key": "va lue", "flag": True, "f": True, "off": False, "none": None, "n": 3, "x": 1.5}
    flow = make_flow([{"id": "t", "script": "t.sh", "args": args}])
    assert script.task_argv(flow.task("t"), spec(), "f") == [
        "-k", "v", "--key=va lue", "--flag", "-f", "-n", "3", "-x", "1.5"]
    words = exec_words(script.render(flow, spec()), 0)
    assert words[-9:] == ["-k", "v", "--key=va lue", "--flag", "-f", "-n", "3", "-x", "1.5"]


def test_interpreters_py_with_generating_python_sh_with_bash_others_directly():
    flow = make_flow([{"id": "p", "script": "a.py"}, {"id": "s", "script": "b.sh"},
                      {"id": "x", "script": "sub dir/c.bin"}])
    text = script.render(flow, spec(python="/usr/bin/python3.11"))
    assert "FF_PYTHON=/usr/bin/python3.11\n" in text
    tails = {}
    for i in range(3):
        words = exec_words(text, i)
        tails[words[-1]] = words[3:]  # after `exec setsid -w`
    assert tails["/srv/my tasks/a.py"] == ["$FF_PYTHON", "-u", "/srv/my tasks/a.py"]
    assert tails["/srv/my tasks/b.sh"] == ["$BASH", "/srv/my tasks/b.sh"]
    assert tails["/srv/my tasks/sub dir/c.bin"] == ["/srv/my tasks/sub dir/c.bin"]


def test_placeholders_are_replaced_before_quoting():
    flow = make_flow(
        [{"id": "t", "script": "t.sh",
          "args": ["{{ params.day }}", "{{params.n}}", "{{ run_id }}", "{{ flow }}", "{{ scheduled_at }}",
                   "x-{{ params.day }}-{{ run_id }}", "{{ params.obj }}", "{{ params.tricky }}"],
          "env": {"D": "{{ params.day }}/{{ flow }}"}}],
        params={"day": "2026-01-01", "n": 5, "obj": {"a": [1, True]}, "tricky": "{{ run_id }} $(x)"})
    run_spec = spec(params={"day": "2026-02-02", "n": 5, "obj": {"a": [1, True]}, "tricky": "{{ run_id }} $(x)"},
                    scheduled_at="2026-02-02T00:00:00Z")
    assert script.task_argv(flow.task("t"), run_spec, "f") == [
        "2026-02-02", "5", "42", "f", "2026-02-02T00:00:00Z", "x-2026-02-02-42", '{"a": [1, true]}',
        "{{ run_id }} $(x)"]  # one pass: a param value is never expanded again
    assert script.task_env(flow.task("t"), run_spec, "f") == {"D": "2026-02-02/f"}
    words = exec_words(script.render(flow, run_spec), 0)
    assert "D=2026-02-02/f" in words
    assert words[-1] == "{{ run_id }} $(x)"


def test_task_env_goes_through_env_not_export():
    flow = make_flow([{"id": "t", "script": "t.py", "env": {"A": "$(touch canary)", "UID": "7", "BASH": "/x"}}])
    text = render(flow)
    body = task_function(text, 0)
    assert "export" not in body  # `export UID=7` would fail: UID is read-only in bash
    words = shlex.split(body)
    assert words[words.index("env") + 1:words.index("env") + 4] == ["A=$(touch canary)", "UID=7", "BASH=/x"]
    assert "$FF_PYTHON" in words  # expanded before `env` applies the task's BASH/FF_PYTHON


def test_run_contract_values_are_quoted():
    flow = make_flow([{"id": "t", "script": "t.sh"}], params={"p": "x"})
    text = script.render(flow, spec(params={"p": "it's $(here)"}, scheduled_at=""))
    lines = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in text.splitlines()
             if line.startswith("export FEATHERFLOW_")}
    assert shlex.split(lines["export FEATHERFLOW_PARAMS"]) == ['{"p": "it\'s $(here)"}']
    assert shlex.split(lines["export FEATHERFLOW_SCHEDULED_AT"]) == [""]
    assert "FF_DB='/var/lib/ff/feather flow.db'" in text


def test_description_cannot_leave_its_comment():
    flow = make_flow(FULL_FLOW, params={"day": "d"})
    text = render(flow)
    assert "rm -rf /" in text
    for line in text.splitlines():
        if "rm -rf /" in line:
            assert line.startswith("# [")


def test_retries_timeout_and_resume_state():
    flow = make_flow(FULL_FLOW, params={"day": "d"})
    text = render(flow, attempts={"extract": 4, "load": 2}, keep=("side",))
    assert "T_RETRY_MS[0]='1500 3000 6000' T_TIMEOUT[0]=2.5 T_TIMEOUT_MS[0]=2500 T_ATTEMPT[0]=4" in text
    assert "3 retries (after 1.5s, 3s, 6s); timeout 2.5s" in text
    assert "exec timeout --verbose -k \"$KILL_GRACE\" 2.5 env" in text
    side = re.search(r"T_ID\[(\d)\]=side", text).group(1)
    load = re.search(r"T_ID\[(\d)\]=load", text).group(1)
    assert f"T_STATE[{side}]=success" in text  # the database's word (states.SUCCESS)
    assert f"T_ATTEMPT[{load}]=2 T_STATE[{load}]=pending" in text


def test_dependencies_are_indexes_in_dependency_order():
    flow = make_flow(FULL_FLOW, params={"day": "d"})
    text = render(flow)
    ids = dict(re.findall(r"T_ID\[(\d+)\]=(\S+)", text))
    index = {task: int(i) for i, task in ids.items()}
    for task in flow.tasks:
        deps = re.search(rf"T_ID\[{index[task.id]}\]=\S+ T_DEPS\[\d+\]=('[^']*'|\S*)", text).group(1).strip("'")
        assert sorted(int(d) for d in deps.split()) == sorted(index[d] for d in task.depends_on)
        assert all(index[d] < index[task.id] for d in task.depends_on)


def test_dry_run_note_and_run_settings():
    flow = make_flow([{"id": "t", "script": "t.sh"}])
    text = script.render(flow, spec(dry_run=True, keep_tmp=True, max_parallel=7, lock_wait=2.5))
    assert "# DRY RUN" in text
    assert "MAX_PARALLEL=7\n" in text and "KEEP_TMP=1\n" in text and "LOCK_WAIT=2.5\n" in text
    assert text.startswith("#!/usr/bin/env bash\n")


# Random values: every one stays one word, byte-exact, and the script stays valid.
VALUE = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30).filter(
    lambda s: "{{" not in s and "}}" not in s)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=st.lists(VALUE, max_size=6), value=VALUE, env=VALUE, param=VALUE, description=VALUE)
def test_random_values_stay_single_words_and_bash_n_passes(tmp_path, args, value, env, param, description):
    flow = make_flow(
        [{"id": "t", "script": "t.py", "description": description, "args": args + ["{{ params.p }}"],
          "env": {"E": env, "P": "{{ params.p }}"}},
         {"id": "u", "script": "u.sh", "depends_on": ["t"], "args": {"a": value, "long": value}}],
        params={"p": "x"})
    text = script.render(flow, spec(params={"p": param}))
    t_words, u_words = exec_words(text, 0), exec_words(text, 1)
    assert t_words[-len(args) - 1:] == args + [param]
    assert f"E={env}" in t_words and f"P={param}" in t_words
    assert u_words[-3:] == ["-a", value, f"--long={value}"]
    bash_n(tmp_path, text)


@needs_shellcheck
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=st.lists(VALUE, min_size=1, max_size=8), env=VALUE)
def test_random_values_stay_shellcheck_clean(tmp_path, args, env):
    flow = make_flow([{"id": "t", "script": "t.sh", "args": args, "env": {"E": env}}])
    shellcheck(bash_n(tmp_path, script.render(flow, spec())))


@needs_shellcheck
def test_reserved_words_as_values_are_quoted(tmp_path):
    words = ["done", "fi", "then", "do", "esac", "{", "}", "[[", "]]", "!", "in", "time"]
    flow = make_flow([{"id": "t", "script": "t.sh", "args": words, "env": {"E": "fi"}}])
    text = script.render(flow, spec())
    assert exec_words(text, 0)[-len(words):] == words
    shellcheck(bash_n(tmp_path, text))


def chain(count):
    return make_flow([{"id": f"t{i}", "script": "t.sh", **({"depends_on": [f"t{i - 1}"]} if i else {})}
                      for i in range(count)])


def test_script_size_is_linear_in_the_chain_length():
    """Each task's block names only its direct dependencies and dependents: no
    list of all descendants, which made a 5,000-task chain's script 63 MB."""
    small, large = (len(render(chain(n))) for n in (400, 800))
    assert large < 2.2 * small, (small, large)


def test_each_task_lists_its_direct_dependents_by_index_and_by_id():
    flow = make_flow([{"id": "a", "script": "t.sh"}, {"id": "b", "script": "t.sh", "depends_on": ["a"]},
                      {"id": "c", "script": "t.sh", "depends_on": ["a"]},
                      {"id": "d", "script": "t.sh", "depends_on": ["b", "c"]}])
    text = render(flow)
    assert "T_ID[0]=a T_DEPS[0]='' T_NEXT[0]='1 2'" in text
    assert "T_ID[3]=d T_DEPS[3]='1 2' T_NEXT[3]=''" in text
    assert "#     before b, c\n" in text and "#     after b, c\n" in text
