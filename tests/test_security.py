"""Security: hostile strings stay data, paths stay inside their dirs, files stay private.

- Injection: hypothesis-made strings (quotes, $(), backticks, ;, |, newlines,
  globs, redirections, leading -, unicode, terminal escapes) in descriptions,
  params and args/env fed from params reach the task byte-exact and never run:
  every one carries commands that would create a canary file, which must stay
  absent. (Plain args/env are fuzzed in test_script.py.)
- Invalid ids, env and param names and NUL bytes are refused.
- Traversal: flow names, task script paths (a symlink leading out of the tasks
  dir is refused), run ids and planted symlinks under the output dir cannot
  make Featherflow read or write outside its dirs.
- Permissions under umask 022; terminal escapes from task output on a tty.
"""

import argparse
import json
import os
import pty
import re
import select
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from featherflow import flow as flowmod
from featherflow.cli import main as cli
from featherflow.errors import ValidationError
from helpers import umask_022

DUMP_PY = """\
import json, os, sys
names = [n for n in os.environ if n.startswith("X_") or n == "FEATHERFLOW_PARAMS"]
out = {"argv": sys.argv[1:], "env": {n: os.environ[n] for n in names}}
with open(os.path.join(os.environ["DUMP_DIR"], os.environ["FEATHERFLOW_RUN_ID"] + ".json"), "w",
          encoding="utf-8", errors="surrogateescape") as f:
    json.dump(out, f, ensure_ascii=False)
"""

# Each piece is harmless as data and creates the canary if a shell ever runs it.
ATTACKS = [
    "$(touch {c})", "`touch {c}`", "; touch {c}", "| touch {c}", "&& touch {c}", "|| touch {c}",
    "\ntouch {c}\n", "\r\ntouch {c}", ">{c}", ">>{c}", "<(touch {c})", "$(touch${{IFS}}{c})",
    "'; touch {c}; '", "\"; touch {c}; \"", "${{IFS}}", "$'\\x41'", "*", "?", "[a-z]*", "~", "~root",
    "-rf", "--", "-", "$HOME", "${{PATH}}", "\\", "!!", "#", "%s%n", "{{ run_id }}", "{{ params.p }}",
    " ", "\t", "é", "ß", "日本", "😀", "\u202e", "\u2028", "\x1b[31m", "\x1b]0;t\x07", "\x7f", "\x01",
]


def attacks(canary: Path):
    piece = st.sampled_from([a.format(c=canary) for a in ATTACKS])
    text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6)
    return st.lists(st.one_of(piece, text), min_size=1, max_size=5).map("".join)


def no_template(value: str) -> bool:
    return "{{" not in value and "}}" not in value


@pytest.fixture
def dumper(project):
    project.write_task("dump.py", DUMP_PY)
    out = project.root / "dumps"
    out.mkdir()
    return out


def hostile_flow(name, description, task_description, literal):
    return {
        "name": name, "description": description,
        "params": {"p": "default", "q": "default"},
        "tasks": [{
            "id": "t", "script": "dump.py", "description": task_description,
            "args": ["{{ params.p }}", "--opt={{ params.q }}", literal, "{{ params.p }}{{ params.q }}"],
            "env": {"X_P": "{{ params.p }}", "X_Q": "[{{ params.q }}]", "X_LIT": literal,
                    "DUMP_DIR": "{{ params.dump }}"},
        }],
    }


FUZZ_EXAMPLES = int(os.environ.get("FEATHERFLOW_FUZZ_EXAMPLES", "300" if os.environ.get("FEATHERFLOW_SOAK") == "1"
                                    else "25"))


@settings(max_examples=FUZZ_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_hostile_descriptions_and_params_reach_the_task_byte_exact(project, dumper, data):
    canary = project.root / "CANARY"
    hostile = attacks(canary)
    p, q = data.draw(hostile, "p"), data.draw(hostile, "q")
    literal = data.draw(hostile.filter(no_template), "literal")
    flow = hostile_flow("h", data.draw(hostile, "description"), data.draw(hostile, "task description"), literal)
    flow["params"]["dump"] = str(dumper)
    project.write_flow(flow)
    app = project.app()
    try:
        app.execute_flow("h", params={"p": p, "q": q})
        run = app.last_run
    finally:
        app.close()
    assert run.state == "success", run.reason
    got = json.loads((dumper / f"{run.id}.json").read_text(encoding="utf-8"))
    assert got["argv"] == [p, f"--opt={q}", literal, p + q]
    assert got["env"]["X_P"] == p and got["env"]["X_Q"] == f"[{q}]" and got["env"]["X_LIT"] == literal
    merged = {"p": p, "q": q, "dump": str(dumper)}
    assert got["env"]["FEATHERFLOW_PARAMS"] == json.dumps(merged, sort_keys=True, ensure_ascii=False)
    assert not canary.exists()


NASTY = "'\"$(touch {c})`touch {c}`;touch {c}|touch {c}\n>{c} * ? -rf \x1b[2J é😀 {{{{ run_id }}}}"


def test_hostile_strings_through_the_cli_run_and_list(project, dumper):
    """The command-line path: --params JSON, the flow file, `list` and `runs show` on top."""
    canary = project.root / "CANARY"
    nasty = NASTY.format(c=canary)
    flow = hostile_flow("h", nasty, nasty, nasty.replace("{{", "").replace("}}", ""))
    flow["params"]["dump"] = str(dumper)
    project.write_flow(flow)
    result = project.sh("run", "h", "--params", json.dumps({"p": nasty, "q": "-" + nasty}))
    assert result.code == 0, result.err
    got = json.loads(next(dumper.iterdir()).read_text(encoding="utf-8"))
    assert got["argv"][0] == nasty and got["argv"][1] == f"--opt=-{nasty}"
    assert got["env"]["X_P"] == nasty
    for argv in (["list"], ["runs", "show", "1"], ["runs", "list"]):
        assert project.sh(*argv).code == 0
    assert not canary.exists()


# -- names, ids, NUL ------------------------------------------------------------------

def task_with(**fields):
    return {"name": "f", "tasks": [{"id": "t", "script": "t.sh", **fields}]}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=70))
def test_task_ids_outside_the_id_pattern_are_refused(task_id):
    flow = {"name": "f", "tasks": [{"id": task_id, "script": "t.sh"}]}
    valid = re.fullmatch(r"[A-Za-z0-9_-]{1,64}", task_id) is not None
    try:
        flowmod.validate(flow)
    except ValidationError as exc:
        assert not valid and any("tasks[0].id" in e for e in exc.errors), exc.errors
    else:
        assert valid


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20))
def test_env_and_param_names_outside_the_name_pattern_are_refused(name):
    valid = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) is not None
    with_param = {"name": "f", "params": {name: 1}, "tasks": [{"id": "t", "script": "t.sh"}]}
    for flow in (task_with(env={name: "v"}), with_param):
        try:
            flowmod.validate(flow)
        except ValidationError:
            assert not valid
        else:
            assert valid


@pytest.mark.parametrize("where", ["description", "args", "env", "flow description", "param default"])
def test_nul_bytes_in_a_flow_are_refused(project, where):
    flow = task_with()
    task = flow["tasks"][0]
    if where == "description":
        task["description"] = "a\x00b"
    elif where == "args":
        task["args"] = ["a\x00b"]
    elif where == "env":
        task["env"] = {"V": "a\x00b"}
    elif where == "flow description":
        flow["description"] = "a\x00b"
    else:
        flow["params"] = {"p": "a\x00b"}
    project.write_task("t.sh", "touch \"$0.ran\"\n")
    project.write_flow(flow)
    result = project.cli("validate", "f")
    assert result.code == 2 and "NUL" in result.err
    result = project.sh("run", "f")
    assert result.code == 2 and "NUL" in result.err and "Traceback" not in result.err
    assert not list(project.tasks.glob("*.ran"))


@pytest.mark.parametrize("params", ['{"p": "a\\u0000b"}', '{"p": ["x", {"y": "\\u0000"}]}', '{"p\\u0000": 1}'])
def test_nul_bytes_in_params_are_refused_before_any_run_exists(project, params):
    project.write_task("t.sh", "true\n")
    flow = task_with(args=["{{ params.p }}"])
    flow["params"] = {"p": "x"}
    project.write_flow(flow)
    result = project.sh("run", "f", "--params", params)
    assert result.code == 2 and result.err.startswith("error:") and "Traceback" not in result.err
    assert "no runs yet" in project.cli("runs", "list").out


# -- traversal --------------------------------------------------------------------------

@pytest.fixture
def evil(project):
    """A valid flow outside the flows dir whose task creates the canary."""
    canary = project.root / "CANARY"
    project.write_task("touch.sh", f"touch {canary}\n")
    text = json.dumps({"name": "evil", "tasks": [{"id": "t", "script": "touch.sh"}]})
    (project.root / "evil.json").write_text(text)
    return canary


@pytest.mark.parametrize("name", ["../evil", "../evil.json", "ROOT/evil", "ROOT/evil.json", "sub/../../evil",
                                  "..", ".evil", "-evil", "evil\n", "~/evil", "flows/../../evil", "./../evil"])
def test_flow_names_cannot_leave_the_flows_dir(project, evil, name):
    name = name.replace("ROOT", str(project.root))
    for argv in (["validate", name], ["graph", name]):
        result = project.cli(*argv)
        assert result.code == 2 and "error:" in result.err, (argv, result)
    result = project.sh("run", name)
    assert result.code == 2 and "error:" in result.err and "Traceback" not in result.err, result.err
    assert not evil.exists()


@pytest.mark.parametrize("script", ["../touch.sh", "/bin/true", "sub/../../touch.sh", "~/touch.sh",
                                    "./../touch.sh", "", "sub/../../../etc/passwd"])
def test_task_script_paths_cannot_leave_the_tasks_dir(project, script):
    project.write_flow(task_with(script=script))
    result = project.cli("validate", "f")
    assert result.code == 2 and "inside the tasks dir" in result.err, result.err


def test_a_symlink_leading_out_of_the_tasks_dir_is_refused(project, tmp_path_factory):
    """Decision: a task script must be a file inside the tasks dir once symlinks are
    resolved; a link to elsewhere (or through a linked folder) is refused."""
    outside = tmp_path_factory.mktemp("outside")
    (outside / "x.sh").write_text("echo outside\n")
    (project.tasks / "link.sh").symlink_to(outside / "x.sh")
    (project.tasks / "lib").symlink_to(outside)
    project.write_task("real.sh", "echo inside\n")
    (project.tasks / "alias.sh").symlink_to(project.tasks / "real.sh")  # inside: allowed
    for script in ("link.sh", "lib/x.sh"):
        project.write_flow(task_with(script=script))
        result = project.cli("validate", "f")
        assert result.code == 2 and "outside the tasks dir" in result.err, result.err
    project.write_flow(task_with(script="alias.sh"))
    assert project.cli("validate", "f").code == 0


def test_a_linked_tasks_dir_itself_is_fine(project, tmp_path_factory):
    real = tmp_path_factory.mktemp("real_tasks")
    (real / "t.sh").write_text("echo hi\n")
    linked = project.root / "linked_tasks"
    linked.symlink_to(real)
    project.write_flow(task_with())
    assert project.cli("-t", linked, "validate", "f").code == 0


@pytest.mark.parametrize("argv", [["runs", "show", "../1"], ["runs", "show", "-1"], ["runs", "show", "0"],
                                  ["runs", "logs", "1/../2"], ["runs", "resume", "1;id"], ["runs", "cancel", "1e3"]])
def test_run_ids_are_whole_numbers(project, argv):
    result = project.cli(*argv)
    assert result.code == 2


def test_runs_logs_task_names_cannot_reach_other_files(project):
    project.write_task("t.sh", "echo hi\n")
    project.write_flow(task_with())
    assert project.sh("run", "f").code == 0
    for task in ("../run.sh", "../../../../etc/passwd", "t.1.log", "/etc/passwd"):
        result = project.cli("runs", "logs", "1", task)
        assert result.code == 2 and "has no task" in result.err and "root:" not in result.out


def failed_run(project):
    """A run whose task failed once: resumable, with its run dir in place."""
    flag = project.root / "fail-once"
    flag.write_text("")
    project.write_task("t.sh", f'echo "log line"\nif [ -e {flag} ]; then rm {flag}; exit 3; fi\n')
    project.write_flow(task_with())
    assert project.sh("run", "f").code == 1
    (run_dir,) = (project.output / "runs").iterdir()
    return run_dir


def snapshot(path: Path):
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else None) for p in path.rglob("*"))


def test_a_planted_runs_symlink_is_not_followed(project, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    project.output.mkdir()
    (project.output / "runs").symlink_to(elsewhere)
    project.write_task("t.sh", "echo hi\n")
    project.write_flow(task_with())
    result = project.sh("run", "f")
    assert result.code != 0 and "symlink" in result.err and "Traceback" not in result.err
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("planted", ["run dir", "logs", "tmp", "run.log", "log file"])
def test_planted_symlinks_in_a_run_dir_are_not_followed_by_resume(project, tmp_path_factory, planted):
    run_dir = failed_run(project)
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "victim").write_text("precious\n")
    if planted == "run dir":
        moved = run_dir.with_name("moved")
        run_dir.rename(moved)
        run_dir.symlink_to(elsewhere)
    elif planted == "logs":
        shutil.rmtree(run_dir / "logs")
        (run_dir / "logs").symlink_to(elsewhere)
    elif planted == "tmp":
        shutil.rmtree(run_dir / "tmp", ignore_errors=True)
        (run_dir / "tmp").symlink_to(elsewhere)
    elif planted == "run.log":
        (run_dir / "run.log").unlink()
        (run_dir / "run.log").symlink_to(elsewhere / "victim")
    else:
        (run_dir / "logs" / "t.2.log").symlink_to(elsewhere / "victim")
    before = snapshot(elsewhere)
    result = project.sh("runs", "resume", "1")
    assert result.code != 0 and "symlink" in result.err and "Traceback" not in result.err, result
    assert snapshot(elsewhere) == before
    assert (elsewhere / "victim").read_text() == "precious\n"


# -- permissions ---------------------------------------------------------------------------

def loose(root: Path):
    """Everything under root that group or others can read, write or enter."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if not path.is_symlink() and mode & 0o077:
            found.append(f"{path} {mode & 0o777:o}")
    return found


def test_init_and_run_under_umask_022_leave_nothing_loose(project):
    with umask_022():  # the commands inherit it
        assert project.sh("init").code == 0
        result = project.sh("run", "sample")
    assert result.code == 0, result.err
    assert project.home.is_dir() and loose(project.home) == []
    assert loose(project.output) == []


def has_command(name: str) -> bool:
    parser = cli.build_parser()
    return any(name in action.choices for action in parser._actions
               if isinstance(action, argparse._SubParsersAction))


def test_scheduler_start_under_umask_022_leaves_nothing_loose(project):
    if not has_command("scheduler"):
        pytest.skip("no `scheduler` command in this build")
    project.write_task("t.sh", "true\n")
    project.write_flow(task_with())
    try:
        with umask_022():  # the daemon inherits it
            result = project.sh("scheduler", "start", "--allow-root", timeout=60)
        assert result.code == 0, result.err
        assert loose(project.home) == []
    finally:
        project.sh("scheduler", "stop", timeout=60)
    assert loose(project.home) == []


# -- terminal escapes -----------------------------------------------------------------------

ESCAPES = "title\x1b]0;owned\x07 clear\x1b[2J red\x1b[31m csi\u009b31m bell\x07 cr\roverwrite del\x7f\n"


def read_through_pty(argv, env, cwd, stderr=False, code=0) -> bytes:
    """What `argv` writes to a terminal on its stdout (and its stderr, if `stderr`)."""
    master, slave = pty.openpty()
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave,
                             stderr=slave if stderr else subprocess.PIPE, env=env, cwd=cwd)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert child.wait(timeout=30) == code, out if stderr else child.stderr.read()
    return out


def test_runs_logs_on_a_terminal_escapes_control_sequences(project):
    project.write_task("t.sh", f"printf '%s' {shlex.quote(ESCAPES)}\n")
    project.write_flow(task_with())
    assert project.sh("run", "f").code == 0
    base = [sys.executable, "-m", "featherflow", *project.args(), "runs", "logs", "1"]
    for argv in (base, base + ["t"]):
        out = read_through_pty(argv, project.env, project.root)
        text = out.decode("utf-8", "replace").replace("\r\n", "\n")
        assert "\x1b" not in text and "\x07" not in text and "\u009b" not in text and "\x7f" not in text
        assert "\\x1b]0;owned" in text and "\\x1b[2J" in text and "\\x9b31m" in text
    piped = project.sh("runs", "logs", "1", "t")
    assert "\x1b]0;owned\x07" in piped.out  # into a pipe or a file the log is passed on as it is


def test_list_on_a_terminal_escapes_control_sequences_from_flow_files(project):
    """`list` prints descriptions (and errors that quote a flow file): escaped on a tty, as-is piped."""
    project.write_task("t.sh", "true\n")
    project.write_flow({**task_with(), "description": ESCAPES})
    project.write_flow({"name": "broken", "tasks": [{"id": "t", "script": "t.sh", "x\x1b[2J\x07": 1}]})
    argv = [sys.executable, "-m", "featherflow", *project.args(), "list"]
    text = read_through_pty(argv, project.env, project.root).decode("utf-8", "replace").replace("\r\n", "\n")
    assert "\x1b" not in text and "\x07" not in text and "\u009b" not in text and "\x7f" not in text
    assert "\\x1b]0;owned\\x07" in text and "\\x1b[2J" in text and "\\x9b31m" in text
    assert "broken  INVALID  tasks[0].x\\x1b[2J\\x07" in text  # the error quotes the file's key
    piped = project.sh("list")
    assert piped.code == 0 and "\x1b]0;owned\x07" in piped.out  # into a pipe: unchanged


def test_errors_on_a_terminal_escape_control_sequences_from_flow_files(project):
    """`validate` quotes a flow file's bad key in its `error:` line: escaped on a tty."""
    project.write_task("t.sh", "true\n")
    project.write_flow({"name": "broken", "tasks": [{"id": "t", "script": "t.sh", "x\x1b[2J\x07": 1}]})
    argv = [sys.executable, "-m", "featherflow", *project.args(), "validate", "broken"]
    text = read_through_pty(argv, project.env, project.root, stderr=True, code=2).decode("utf-8", "replace")
    assert "\x1b" not in text and "\x07" not in text
    assert "error: broken: tasks[0].x\\x1b[2J\\x07" in text
    piped = project.sh("validate", "broken")
    assert piped.code == 2 and "x\x1b[2J\x07" in piped.err  # into a pipe: unchanged
