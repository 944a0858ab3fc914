"""The `list`, `validate` and `graph` commands, global options, help text, console script.

The CLI is the interface: exit codes and the one-`error:`-line-per-problem
format are what scripts and users rely on, so they are asserted exactly.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from featherflow import __version__
from featherflow.cli import main as cli

WEATHER = Path(__file__).parent / "data" / "weather_observations_flow.json"


def good(name, n=2, description=""):
    tasks = [{"id": "t0", "script": "a.sh"}]
    tasks += [{"id": f"t{i}", "script": "a.sh", "depends_on": [f"t{i - 1}"]} for i in range(1, n)]
    return {"name": name, "description": description, "tasks": tasks}


@pytest.fixture
def flows(project):
    """Two valid flows and one with three problems."""
    project.write_task("a.sh", "echo hi\n")
    project.write_flow(good("alpha", 2, "first flow"))
    project.write_flow(good("beta", 3, "second flow"))
    project.write_flow({"name": "broken", "tasks": [
        {"id": "a", "script": "missing.sh"},
        {"id": "b", "script": "a.sh", "depends_on": "a"},
        {"id": "c", "script": "a.sh", "depends-on": ["a"]},
    ]})
    return project


@pytest.fixture
def weather(project):
    shutil.copy(WEATHER, project.flows / WEATHER.name)
    for script in ("get_observations.py", "aggregate_data_to_csv.py", "generate_synopsis.py"):
        project.write_task(script, "print('ok')\n", executable=False)
    return project


def error_lines(result):
    lines = result.err.splitlines()
    assert lines, "expected errors on stderr"
    assert all(line.startswith("error: ") for line in lines), result.err
    assert "Traceback" not in result.err
    return lines


# -- list ------------------------------------------------------------------------

def test_list_table_shows_broken_flows_and_still_lists_the_others(flows):
    result = flows.cli("list")
    assert result.code == 0 and result.err == ""
    lines = result.out.splitlines()
    assert [line.split()[0] for line in lines] == ["alpha", "beta", "broken"]  # sorted by name
    by_name = {line.split()[0]: line for line in lines}
    assert "2 tasks" in by_name["alpha"] and "first flow" in by_name["alpha"]
    assert "3 tasks" in by_name["beta"] and "second flow" in by_name["beta"]
    assert "INVALID" in by_name["broken"] and "tasks[0].script" in by_name["broken"]


def test_list_json(flows):
    result = flows.cli("list", "--json")
    assert result.code == 0
    infos = {i["name"]: i for i in json.loads(result.out)}
    assert set(infos) == {"alpha", "beta", "broken"}
    assert infos["alpha"]["tasks"] == 2 and infos["alpha"]["description"] == "first flow"
    assert infos["alpha"]["error"] is None
    assert infos["beta"]["path"] == str(flows.flows / "beta.json")
    assert infos["broken"]["error"].startswith("tasks[0].script: ")


def test_list_with_no_flows(project):
    result = project.cli("list")
    assert result.code == 0 and "no flows in" in result.out
    assert json.loads(project.cli("list", "--json").out) == []


def test_list_shows_a_file_that_is_not_json(flows):
    (flows.flows / "garbled.json").write_text("{ nope")
    result = flows.cli("list")
    assert result.code == 0
    line = next(l for l in result.out.splitlines() if l.startswith("garbled"))
    assert "INVALID" in line and "not valid JSON" in line and "line 1 column 3" in line
    assert "alpha" in result.out


# -- validate ------------------------------------------------------------------------

def test_validate_valid_flows_exit_0(flows):
    result = flows.cli("validate", "alpha", "beta")
    assert result.code == 0 and result.err == ""
    assert result.out.splitlines() == ["alpha: valid", "beta: valid"]


def test_validate_prints_one_error_line_per_problem(flows):
    result = flows.cli("validate", "broken")
    assert result.code == 2
    lines = error_lines(result)
    assert len(lines) == 3, lines
    assert lines[0].startswith("error: broken: tasks[0].script: ")
    assert any(line.startswith("error: broken: tasks[1].depends_on: ") for line in lines)
    assert any(line.startswith("error: broken: tasks[2].depends-on: ") for line in lines)


def test_validate_all_flows_when_none_named(flows):
    result = flows.cli("validate")
    assert result.code == 2
    assert "alpha: valid" in result.out and "beta: valid" in result.out
    assert len(error_lines(result)) == 3


def test_validate_with_no_flows_is_an_error(project):
    result = project.cli("validate")
    assert result.code == 2
    (line,) = error_lines(result)
    assert "no flows in" in line


def test_validate_the_weather_flow(weather):
    result = weather.cli("validate", "weather_observations_flow")
    assert result.code == 0, result.err
    assert result.out == "weather_observations_flow: valid\n"


def test_validate_not_json_names_line_and_column(project):
    (project.flows / "bad.json").write_text('{"name": "bad",\n "tasks": [}\n')
    result = project.cli("validate", "bad")
    assert result.code == 2
    (line,) = error_lines(result)
    assert "not valid JSON" in line and "line 2 column 12" in line


@pytest.mark.parametrize("command", [["validate"], ["graph"]])
def test_unknown_flow_names_the_known_flows(flows, command):
    result = flows.cli(*command, "nope")
    assert result.code == 2
    (line,) = error_lines(result)
    assert "'nope' not found" in line and "(known: alpha, beta, broken)" in line


@pytest.mark.parametrize("name", ["../alpha", "/etc/passwd", "sub/alpha"])
@pytest.mark.parametrize("command", ["validate", "graph"])
def test_flow_names_that_leave_the_flows_dir(flows, command, name):
    (flows.root / "alpha.json").write_text(json.dumps(good("alpha")))
    result = flows.cli(command, name)
    assert result.code == 2
    (line,) = error_lines(result)
    assert "invalid flow name" in line


def test_traceback_only_with_debug_log_level(flows, caplog):
    result = flows.cli("graph", "nope")
    assert result.code == 2 and not any(r.exc_info for r in caplog.records)
    result = flows.cli("-l", "DEBUG", "graph", "nope")
    assert result.code == 2 and "error: flow 'nope' not found" in result.err
    assert any(r.exc_info and r.exc_info[0].__name__ == "UsageError" for r in caplog.records)


# -- graph --------------------------------------------------------------------------

def test_graph_text(weather):
    result = weather.cli("graph", "weather_observations_flow")
    assert result.code == 0, result.err
    out = result.out
    assert out.startswith("weather_observations_flow: 5 tasks in 3 levels")
    assert "<- get_lax_obs, get_sfo_obs, get_nyc_obs  [fan-in 3]" in out
    assert "level 1  (run in parallel)" in out
    assert out.index("get_lax_obs") < out.index("aggregate_data") < out.index("generate_synopsis")


def test_graph_dot(weather):
    result = weather.cli("graph", "weather_observations_flow", "--format", "dot")
    assert result.code == 0
    assert result.out.startswith('digraph "weather_observations_flow" {')
    assert '"get_nyc_obs" -> "aggregate_data";' in result.out
    assert '"aggregate_data" -> "generate_synopsis";' in result.out
    assert result.out.count(" -> ") == 4


def test_graph_mermaid(weather):
    result = weather.cli("graph", "--format", "mermaid", "weather_observations_flow")
    assert result.code == 0
    lines = result.out.splitlines()
    assert lines[0] == "flowchart LR"
    assert sum(" --> " in line for line in lines) == 4
    assert '["generate_synopsis"]' in result.out


def test_graph_of_an_invalid_flow(flows):
    result = flows.cli("graph", "broken")
    assert result.code == 2
    assert len(error_lines(result)) == 3


def test_graph_bad_format_is_a_usage_error(weather):
    result = weather.cli("graph", "weather_observations_flow", "--format", "png")
    assert result.code == 2
    assert "invalid choice" in result.err


# -- global options, version, help ------------------------------------------------------

def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"featherflow {__version__}"


def run_main(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_global_options_before_and_after_the_command(flows, capsys):
    dirs = ["-t", flows.tasks, "--config-dir", flows.home]
    code, out, _ = run_main(["-f", flows.flows, *dirs, "list"], capsys)
    assert code == 0 and "alpha" in out
    code, out, _ = run_main(["list", "--flows-dir", flows.flows, *dirs], capsys)
    assert code == 0 and "alpha" in out
    code, out, _ = run_main(["--log-level", "warning", "validate", "alpha", "-f", flows.flows, *dirs], capsys)
    assert code == 0 and out == "alpha: valid\n"
    # Given both, the one after the command wins.
    code, out, _ = run_main(["-f", flows.root / "elsewhere", "list", "-f", flows.flows, *dirs], capsys)
    assert code == 0 and "alpha" in out
    code, out, _ = run_main(["-f", flows.flows, "list", "-f", flows.root / "elsewhere", *dirs], capsys)
    assert code == 0 and "no flows in" in out


def test_relative_flows_dir_resolves_against_the_working_directory(flows, capsys, monkeypatch):
    monkeypatch.chdir(flows.root)
    code, out, _ = run_main(["validate", "alpha", "-f", "flows", "-t", "tasks", "--config-dir", "home"], capsys)
    assert code == 0 and out == "alpha: valid\n"


def test_no_command_prints_help_and_exits_2(capsys):
    code = cli.main([])
    assert code == 2
    assert "usage: featherflow" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def _subcommands(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name), sub


def test_every_command_and_option_has_help_text():
    """Every subcommand (at any depth) and every --option says what it is for."""
    parser = cli.build_parser()
    seen = set()
    todo = [("featherflow", parser)]
    while todo:
        prefix, current = todo.pop()
        for action in current._actions:
            if action.option_strings and action.help is not argparse.SUPPRESS:
                assert action.help and action.help.strip(), f"{prefix}: {action.option_strings}"
        for name, help_text, sub in _subcommands(current):
            if name.startswith("_"):  # hidden internals (_mark, _start-run): not for people
                continue
            assert help_text and help_text.strip(), f"{prefix} {name} has no help text"
            assert sub.format_help()
            seen.add(name)
            todo.append((f"{prefix} {name}", sub))
    assert {"list", "validate", "graph"} <= seen


def test_parsing_the_command_line_loads_neither_peewee_nor_the_store():
    """`featherflow --help`, a usage error and `featherflow _mark` stay fast: the CLI's
    modules import the facade, the store and what loads peewee (or croniter, curses)
    only inside the commands that need them (see cli/common.py)."""
    heavy = ("peewee", "playhouse", "croniter", "curses", "featherflow.store", "featherflow.api")
    code = ("import sys; from featherflow.cli import main; main.build_parser().format_help(); "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"building the parser loads {out}"



def test_the_command_table_is_what_the_modules_register():
    """main.COMMANDS (what `--help` lists without importing a command module) names every
    command the modules register, in their order, with the same help line; and the module
    it names for a command really registers it (else the command would always cost a
    second parse)."""
    full = [(name, help_text) for name, help_text, _ in _subcommands(cli.build_parser())]
    assert full == [(name, help_text) for name, _, help_text in cli.COMMANDS]
    assert cli.build_parser([]).format_help() == cli.build_parser().format_help()
    for name, _, _ in cli.COMMANDS:
        chosen = dict((n, sub) for n, _, sub in _subcommands(cli.build_parser([name])))[name]
        assert chosen.get_default("_unloaded") is None, f"{name}: its module does not register it"
        whole = dict((n, sub) for n, _, sub in _subcommands(cli.build_parser()))[name]
        assert chosen.format_help() == whole.format_help()


def test_a_command_after_a_value_that_looks_like_one_still_runs(flows, capsys, monkeypatch):
    """The module to load is guessed from the words; a flows dir named `run`, given with an
    abbreviated option, makes the guess wrong: the whole parser is built then, same result."""
    shutil.copytree(flows.flows, flows.root / "run")
    monkeypatch.chdir(flows.root)
    assert cli._module_named(["--flows", "run", "validate", "alpha"]) == "runs"
    code, out, _ = run_main(["--flows", "run", "-t", flows.tasks, "--config-dir", flows.home, "validate", "alpha"],
                            capsys)
    assert code == 0 and out == "alpha: valid\n"
    code, out, _ = run_main(["-f", "run", "-t", flows.tasks, "--config-dir", flows.home, "validate", "alpha"],
                            capsys)
    assert code == 0 and out == "alpha: valid\n"


def test_help_and_run_import_only_the_command_modules_they_need():
    """`featherflow --help` imports no command module; `featherflow run` only runs.py."""
    code = ("import sys; from featherflow.cli import main\n"
            "try:\n    main.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('featherflow.cli.') and m not in "
            "('featherflow.cli.main', 'featherflow.cli.common')), file=sys.stderr)")
    for argv, loaded in ((["--help"], "[]"), (["run", "--help"], "['featherflow.cli.runs']")):
        result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
        assert result.stderr.strip() == loaded, argv
        assert "usage: featherflow" in result.stdout


def test_serve_and_the_dashboard_load_neither_peewee_nor_openssl(flows):
    """The screens read through store/readconn's sqlite3 connection: peewee (some 8 MB of
    `featherflow serve`'s idle memory) is not imported, even once pages have been read;
    the status page loads no OpenSSL either (ssl, hmac: some 5 MB) while it needs no token."""
    assert flows.cli("runs", "list").code == 0  # the database exists
    heavy = ("peewee", "playhouse", "ssl", "_ssl", "hmac", "_hashlib")
    report = ("def report():\n"
              f"    sys.__stdout__.write(repr(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})))\n"
              "    sys.__stdout__.flush()\n")
    # The real `featherflow serve --port 0`: a thread reads its "serving" line, GETs pages
    # over a raw socket (urllib would import ssl itself), then reports and ends the process.
    serve = ("import io, os, re, socket, sys, threading\nfrom featherflow.cli import main\n" + report
             + "def probe(host, port):\n"
               "    for path in ('/', '/runs', '/api/schedules', '/healthz'):\n"
               "        with socket.create_connection((host, port)) as c:\n"
               "            c.sendall(f'GET {path} HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n'.encode())\n"
               "            while c.recv(65536):\n"
               "                pass\n"
               "    report(); os._exit(0)\n"
               "class Out(io.TextIOBase):\n"
               "    def write(self, text):\n"
               "        found = re.search(r'serving http://([^:/]+):([0-9]+)/', text)\n"
               "        if found:\n"
               "            threading.Thread(target=probe, args=(found.group(1), int(found.group(2)))).start()\n"
               "        return len(text)\n"
               "sys.stdout = Out()\nmain.main(sys.argv[1:])")
    dashboard = ("import sys\nfrom featherflow.cli import main\n" + report
                 + "from featherflow.dashboard import app\n"
                   "from featherflow.dashboard.keys import ViewState\n"
                   "from featherflow import clock\n"
                   "app.check_terminal = lambda: None\n"
                   "def instead(loop, poller, *rest):\n"
                   "    poller.poll(ViewState(), clock.now()); report()\n"
                   "app._with_screen = instead\nsys.exit(main.main(sys.argv[1:]))")
    for code, argv, unwanted in ((serve, ["serve", "--port", "0"], heavy),
                                 (dashboard, ["dashboard"], ("peewee", "playhouse"))):
        result = subprocess.run([sys.executable, "-c", code, *flows.args(), *argv], env=flows.env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        loaded = eval(result.stdout.strip())  # noqa: S307 (our own repr of a list of names)
        assert [m for m in loaded if m.split(".")[0] in unwanted] == [], argv


def test_the_scheduler_daemon_loads_no_openssl_nor_what_only_notify_flush_sends_with(flows):
    """`scheduler start` imports the daemon through scheduler.import_daemon: peewee's hashlib
    without OpenSSL's libcrypto (CPython's builtin md5/sha1 serve), no ssl, smtplib, email or
    urllib (deliveries go out through a `notify flush` child), and a 256 KiB page cache."""
    from featherflow import lean
    from featherflow.store import db as dbmod

    unwanted = ("ssl", "_ssl", "smtplib", "email", "urllib.request", "http", "curses")
    if lean.hashlib_builtins():
        unwanted += ("_hashlib",)
    code = ("import sys\nfrom featherflow.cli import main\nimport featherflow.scheduler as sched\n"
            "real = sched.import_daemon\n"
            "def report(self, ready_fd=None):\n"
            f"    loaded = sorted(m for m in sys.modules if m in {unwanted!r} or m.split('.')[0] in {unwanted!r})\n"
            "    cache = self.store.db.execute_sql('PRAGMA cache_size').fetchone()[0]\n"
            "    import hashlib\n"
            "    print(repr((loaded, 'peewee' in sys.modules, cache, hashlib.sha1(b'x').hexdigest())))\n"
            "    return 0\n"
            "def instead():\n"
            "    control, daemon = real()\n"
            "    daemon.Scheduler.serve = report\n"
            "    return control, daemon\n"
            "sched.import_daemon = instead\nsys.exit(main.main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, *flows.args(), "scheduler", "start", "--foreground",
                             "--allow-root"], env=flows.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    loaded, peewee, cache, digest = eval(result.stdout.strip().splitlines()[-1])  # noqa: S307 (our own repr)
    assert loaded == [] and peewee and cache == -dbmod.DAEMON_CACHE_KIB
    assert digest == "11f6ad8ec52a2984abaafd7c3b516503785c2072"


def test_a_run_on_a_current_database_loads_only_what_it_needs(flows):
    """`featherflow run` reads user_version and goes on: no migration file is loaded, and
    neither the schedules' nor the outbox's queries nor subprocess (it becomes bash)."""
    assert flows.cli("runs", "list").code == 0  # the database exists and is current
    unwanted = ("featherflow.store.schedules", "featherflow.store.outbox", "subprocess", "playhouse.migrate",
                "featherflow.migrations.0001_initial", "featherflow.cli.flows", "featherflow.cli.schedules")
    code = ("import sys; from featherflow.engine import launch; from featherflow.cli import main\n"
            "def instead(store, prepared):\n"
            f"    print(sorted(m for m in {unwanted!r} if m in sys.modules)); sys.stdout.flush(); raise SystemExit(0)\n"
            "launch.exec_script = instead\n"
            "main.main(sys.argv[1:])")
    result = subprocess.run([sys.executable, "-c", code, *flows.args(), "run", "alpha"], env=flows.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

# -- the installed console script ---------------------------------------------------------------

def test_installed_console_script(flows):
    exe = shutil.which("featherflow", path=os.path.dirname(sys.executable)) or shutil.which("featherflow")
    assert exe, "the featherflow console script is not installed next to the test interpreter"
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"featherflow {__version__}"
    proc = subprocess.run([exe, *flows.args(), "validate", "alpha", "broken"], cwd=flows.root,
                          env=flows.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == "alpha: valid\n"
    lines = proc.stderr.splitlines()
    assert len(lines) == 3 and all(line.startswith("error: broken: ") for line in lines)
    assert "Traceback" not in proc.stderr
