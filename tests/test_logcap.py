"""The cap on one attempt's log (featherflow/logcap.py and the engine's watcher).

Unit tests cut files written here; the end-to-end ones run real tasks that print
100 MiB and read the logs the run left, and what the disk held while it ran.
"""

import os
import re
import signal
import subprocess
import sys
import threading

import pytest
from hypothesis import given, settings, strategies as st

from featherflow import config as configmod, flow as flowmod, logcap
from featherflow.engine import script
from featherflow.errors import UsageError, ValidationError
from helpers import alive, wait_for

MARKER = re.compile(rb"\[featherflow: (\d+) bytes cut here; max_log_bytes=(\d+)\]\n")
MiB = 1024 * 1024
WAIT = 60  # seconds: the bound on every wait here


def write(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def check_capped(data: bytes, printed: bytes, cap: int):
    """head + exactly one marker + tail, the marker's count exact, the size within the cap."""
    found = MARKER.findall(data)
    assert len(found) == 1, found
    match = MARKER.search(data)
    head, tail = data[:match.start()], data[match.end():]
    assert printed.startswith(head) and printed.endswith(tail)
    assert int(match.group(1)) == len(printed) - len(head) - len(tail)
    assert int(match.group(2)) == cap
    assert len(head) <= cap // 4 and len(tail) <= cap - cap // 4
    assert len(data) <= cap + len(match.group(0))
    return head, tail


# -- sizes and validation ------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (0, 0), (None, 0), (4096, 4096), ("10MiB", 10 * MiB), ("512KiB", 512 * 1024), ("1 GiB", 1024 * MiB),
    ("2MB", 2_000_000), ("8192", 8192), ("0", 0), ("4k", 4096), ("1k", None),
    (4095, None), (-1, None), (True, None), (1.5, None), ("ten", None), ("10 XB", None), ([], None)])
def test_parse_size(value, expected):
    assert logcap.parse_size(value) == expected


def test_the_flow_field_is_validated_with_what_is_valid():
    base = {"name": "f", "tasks": [{"id": "a", "script": "a.sh"}]}
    assert flowmod.validate(base).max_log_bytes is None
    assert flowmod.validate({**base, "max_log_bytes": "1MiB"}).max_log_bytes == MiB
    assert flowmod.validate({**base, "max_log_bytes": 0}).max_log_bytes == 0
    assert flowmod.validate({**base, "max_log_bytes": None}).max_log_bytes == 0
    with pytest.raises(ValidationError) as caught:
        flowmod.validate({**base, "max_log_bytes": "lots"})
    assert caught.value.errors == [f'max_log_bytes: is "lots" (valid: {logcap.SIZE_HELP})']


def test_validate_prints_one_error_line(project):
    project.write_task("a.sh", "echo hi\n")
    project.write_flow({"name": "f", "max_log_bytes": 100, "tasks": [{"id": "a", "script": "a.sh"}]})
    result = project.cli("validate", "f")
    assert result.code == 2
    lines = [line for line in result.err.splitlines() if "max_log_bytes" in line]
    assert len(lines) == 1 and "at least 4096 bytes" in lines[0], result.err


def test_the_global_default_comes_from_the_environment():
    assert configmod.resolve(env={}).max_log_bytes == logcap.DEFAULT_MAX_LOG_BYTES == 10 * MiB
    assert configmod.resolve(env={"FEATHERFLOW_MAX_LOG_BYTES": "2MiB"}).max_log_bytes == 2 * MiB
    for off in ("0", "null", "none"):
        assert configmod.resolve(env={"FEATHERFLOW_MAX_LOG_BYTES": off}).max_log_bytes == 0
    bad = configmod.resolve(env={"FEATHERFLOW_MAX_LOG_BYTES": "12 parsecs"})  # only a run reads it
    with pytest.raises(UsageError, match="FEATHERFLOW_MAX_LOG_BYTES='12 parsecs' is not a log cap"):
        bad.max_log_bytes


def test_a_bad_global_default_is_one_error_line(project, monkeypatch):
    project.write_task("a.sh", "echo hi\n")
    project.write_flow({"name": "f", "tasks": [{"id": "a", "script": "a.sh"}]})
    monkeypatch.setenv("FEATHERFLOW_MAX_LOG_BYTES", "huge")
    assert project.sh("list").code == 0
    result = project.sh("run", "f")
    assert result.code == 2 and not project.output.joinpath("runs").exists()
    assert result.err.strip().splitlines() == [
        f"error: FEATHERFLOW_MAX_LOG_BYTES='huge' is not a log cap (valid: {logcap.SIZE_HELP})"]


@pytest.mark.parametrize("flow_cap, default, expected", [(None, 5 * MiB, 5 * MiB), (MiB, 5 * MiB, MiB),
                                                         (0, 5 * MiB, 0), (None, 0, 0)])
def test_the_script_gets_the_flow_cap_or_the_default(flow_cap, default, expected):
    data = {"name": "f", "tasks": [{"id": "a", "script": "a.sh"}]}
    if flow_cap is not None:
        data["max_log_bytes"] = flow_cap
    spec = script.RunSpec(run_id=1, run_uid="u", trigger="manual", params={}, max_parallel=1, python="python3",
                          mark="/x/featherflow/mark.py", db="/db", tasks_dir="/t", run_dir="/r",
                          max_log_bytes=default)
    text = script.render(flowmod.validate(data), spec)
    assert f"\nMAX_LOG_BYTES={expected}\n" in text
    assert "\nFF_LOGCAP=/x/featherflow/logcap.py\n" in text


# -- cutting a file --------------------------------------------------------------------------

def lines(count, start=0):
    return b"".join(b"line %06d of the output\n" % i for i in range(start, start + count))


def test_a_log_under_the_cap_is_left_alone(tmp_path):
    path = tmp_path / "a.log"
    write(path, lines(100))
    assert not logcap.cut(str(path), 8192, False) and not logcap.cut(str(path), 8192, True)
    assert path.read_bytes() == lines(100)


def test_punched_while_running_then_compacted_at_the_end(tmp_path):
    path, cap = str(tmp_path / "a.log"), 64 * 1024
    printed = b""
    for round_ in range(20):
        chunk = lines(4000, round_ * 4000)
        write(path, chunk)
        printed += chunk
        assert logcap.cut(path, cap, False)
        assert os.stat(path).st_size == len(printed)  # the writer's end never moves
        assert os.stat(path).st_blocks * 512 <= cap + 2 * 65536  # the middle's blocks are freed
        seen = logcap.read(path)
        assert seen.count(b"bytes cut here so far]") == 1 and b"\0" not in seen
        assert seen.endswith(printed[-1000:]) and seen.startswith(printed[:1000])
    logcap.cut(path, cap, True)
    head, tail = check_capped(open(path, "rb").read(), printed, cap)
    assert head.endswith(b"\n") and tail.startswith(b"line ")  # the cut falls between lines


def test_without_holes_the_tail_is_copied_down(tmp_path, monkeypatch):
    monkeypatch.setattr(logcap, "_punch", lambda fd, offset, length: False)
    path, cap = str(tmp_path / "a.log"), 16 * 1024
    printed = b""
    for round_ in range(10):
        chunk = lines(1000, round_ * 1000)
        write(path, chunk)
        printed += chunk
        logcap.cut(path, cap, False)
        check_capped(open(path, "rb").read(), printed, cap)  # one marker, its count kept up
    logcap.cut(path, cap, True)
    check_capped(open(path, "rb").read(), printed, cap)


def test_output_without_line_ends_is_cut_at_the_byte(tmp_path):
    path, cap = str(tmp_path / "a.log"), 8192
    printed = bytes(range(11, 256)) * 400  # no b"\n"
    write(path, printed)
    logcap.cut(path, cap, True)
    head, tail = check_capped(open(path, "rb").read(), printed, cap)
    assert len(head) == cap // 4 and len(tail) == cap - cap // 4


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=0, max_size=6000).map(lambda b: b.replace(b"\0", b"-")),
                          st.sampled_from(["write", "cut", "copy"])), min_size=1, max_size=25),
       st.sampled_from([4096, 8192, 20000]))
def test_any_sequence_of_writes_and_cuts_ends_as_head_marker_tail(tmp_path_factory, steps, cap):
    path = str(tmp_path_factory.mktemp("cap") / "a.log")
    write(path, b"")
    printed, copied = b"", False
    real_punch = logcap._punch
    try:
        for data, action in steps:
            write(path, data)
            printed += data
            copied = copied or action == "copy"
            logcap._punch = (lambda fd, o, n: False) if copied else real_punch
            if action != "write":
                logcap.cut(path, cap, False)
        logcap.cut(path, cap, True)
    finally:
        logcap._punch = real_punch
    final = open(path, "rb").read()
    if len(printed) <= cap:
        assert final == printed
    else:
        check_capped(final, printed, cap)


def test_a_follower_skips_the_hole_and_survives_the_compaction(tmp_path):
    path, cap = str(tmp_path / "a.log"), 64 * 1024
    write(path, lines(100))
    got, position = logcap.read_from(path, 0)
    assert got == lines(100)
    write(path, lines(20000, 100))
    logcap.cut(path, cap, False)
    more, position = logcap.read_from(path, position)
    assert more.startswith(lines(100, 100)[:100]) or b"bytes cut here]" in more
    assert b"\0" not in more and more.endswith(lines(1, 20099))
    write(path, lines(1, 20100))
    logcap.cut(path, cap, True)  # shrinks the file below the follower's position
    rest, position = logcap.read_from(path, position)
    assert rest == b"" and position == os.stat(path).st_size
    write(path, b"late line\n")
    assert logcap.read_from(path, position)[0] == b"late line\n"


def test_the_dashboard_tail_shows_no_zeros_from_the_hole(tmp_path):
    from featherflow.dashboard.poller import LogTail

    path, cap = str(tmp_path / "a.log"), 64 * 1024
    write(path, lines(100))
    tail = LogTail(tmp_path / "a.log")
    tail.poll()
    write(path, lines(20000, 100))
    logcap.cut(path, cap, False)
    shown, _, _, error = tail.poll()
    assert error is None and shown and not any("\0" in line for line in shown)
    assert shown[-1] == lines(1, 20099).decode().rstrip("\n")


# -- end to end ------------------------------------------------------------------------------

BIG = """\
echo "first line"
yes "{text}" | head -c {size}
echo "the last line"
exit {code}
"""


def run_flow(project, flow, timeout=WAIT):
    project.write_flow(flow)
    return project.sh("run", flow["name"], timeout=timeout)


def log_of(project, task="big"):
    found = list(project.output.glob(f"runs/*/logs/{task}.1.log"))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
def test_a_task_printing_100_mib_keeps_head_marker_and_tail(project):
    project.write_task("big.sh", BIG.format(text="0123456789 abcdefghij", size=100 * MiB, code=3))
    result = run_flow(project, {"name": "big", "max_log_bytes": "1MiB",
                                "tasks": [{"id": "big", "script": "big.sh"}]})
    assert result.code == 1, result.err  # the run failed: the task's own exit code, not a kill
    app = project.app()
    try:
        attempt = app.store.runs.attempts(app.store.runs.list_runs()[0].id)[0]
        assert (attempt.state, attempt.exit_code, attempt.reason) == ("failed", 3, "exit code 3")
    finally:
        app.close()
    printed = b"first line\n" + (b"0123456789 abcdefghij\n" * (100 * MiB // 22 + 1))[:100 * MiB] + \
        b"the last line\n"
    data = log_of(project).read_bytes()
    head, tail = check_capped(data, printed, MiB)
    assert head.startswith(b"first line\n") and tail.endswith(b"abcdefghij\n0123456789 athe last line\n")
    assert "the last line" in result.out  # the failure tail on the terminal
    logs = project.cli("runs", "logs", "1", "big")
    assert logs.code == 0 and logs.out.count("bytes cut here") == 1 and logs.out.endswith("the last line\n")


SLOW_WRITER = """\
import os, sys, time
line = b"x" * 1023 + b"\\n"
for i in range({chunks}):
    os.write(1, line * 256)  # 256 KiB
    time.sleep(0.025)
os.write(1, b"the last line\\n")
"""


@pytest.mark.slow
def test_the_disk_holds_about_the_cap_while_the_task_prints(project):
    chunks = 160  # 40 MiB in about 4 s
    project.write_task("big.py", SLOW_WRITER.format(chunks=chunks))
    project.write_flow({"name": "big", "max_log_bytes": MiB, "tasks": [{"id": "big", "script": "big.py"}]})
    samples, done = [], threading.Event()

    def sample():
        while not done.is_set():
            for path in project.output.glob("runs/*/logs/big.1.log"):
                try:
                    st = os.stat(path)
                    samples.append((st.st_size, st.st_blocks * 512))
                except FileNotFoundError:
                    pass
            done.wait(0.02)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        result = project.sh("run", "big", timeout=WAIT)
    finally:
        done.set()
        thread.join()
    assert result.code == 0, result.err
    assert samples and max(size for size, _ in samples) > 20 * MiB  # sampled while it ran
    # the cap, an eighth of it, and what the task printed in one quick poll (0.25 s): ~3 MiB
    # Before the first look (a second at most), the log holds what the task printed (~10 MiB
    # here); from then on the cap, an eighth of it, and about what it prints in a quarter second.
    assert max(disk for _, disk in samples) < 14 * MiB, max(samples, key=lambda s: s[1])
    first_cut = next(i for i, (size, disk) in enumerate(samples) if disk < size - MiB)
    steady = [disk for _, disk in samples[first_cut:]]
    assert max(steady) < 8 * MiB, [round(d / MiB, 1) for d in steady]
    data = log_of(project).read_bytes()
    assert data.count(b"bytes cut here") == 1 and data.endswith(b"x\nthe last line\n")
    assert len(data) <= MiB + 100 and os.stat(log_of(project)).st_blocks * 512 <= MiB + 128 * 1024


@pytest.mark.slow
def test_zero_means_no_cap_and_the_environment_sets_the_default(project, monkeypatch):
    project.write_task("big.sh", BIG.format(text="y", size=3 * MiB, code=0))
    monkeypatch.setenv("FEATHERFLOW_MAX_LOG_BYTES", "64KiB")
    assert run_flow(project, {"name": "big", "max_log_bytes": 0,
                              "tasks": [{"id": "big", "script": "big.sh"}]}).code == 0
    assert os.stat(log_of(project)).st_size == 3 * MiB + len("first line\nthe last line\n")
    assert run_flow(project, {"name": "other", "tasks": [{"id": "big", "script": "big.sh"}]}).code == 0
    capped = [p for p in project.output.glob("runs/*/logs/big.1.log") if "1-" not in p.parent.parent.name]
    assert len(capped) == 1
    data = capped[0].read_bytes()
    assert data.count(b"max_log_bytes=65536]") == 1 and len(data) <= 65536 + 100


FOREVER = """\
import os, sys, time
open(sys.argv[1], "w").write(str(os.getpid()))
line = b"z" * 1023 + b"\\n"
os.write(1, b"first line\\n")
while True:
    os.write(1, line * 256)
    time.sleep(0.01)
"""


def start_run(project, name):
    """`featherflow run` as a child we can signal: it execs bash, so its pid is the script's."""
    return subprocess.Popen([sys.executable, "-m", "featherflow"] + project.args() + ["run", name],
                            cwd=project.root, env=project.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def script_processes(project):
    """Live processes running one of the project's run.sh (the script and its watcher)."""
    needle = str(project.output / "runs")
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and alive(int(p), needle)]


@pytest.mark.slow
def test_a_cancelled_run_still_compacts_its_logs(project, tmp_path):
    project.write_task("forever.py", FOREVER)
    project.write_flow({"name": "f", "max_log_bytes": MiB, "tasks": [
        {"id": "big", "script": "forever.py", "args": [str(tmp_path / "pid")]}]})
    proc = start_run(project, "f")
    try:
        def punched():
            found = list(project.output.glob("runs/*/logs/big.1.log"))
            st = found and os.stat(found[0])
            return bool(st) and st.st_size > 4 * MiB and st.st_blocks * 512 < 3 * MiB
        wait_for(punched, "the watcher to cut the log while the task prints", WAIT)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 5, out + err
    data = log_of(project).read_bytes()
    assert data.startswith(b"first line\n") and data.count(b"bytes cut here;") == 1 and b"\0" not in data
    assert len(data) <= MiB + 100 and data.endswith(b"z\n")


@pytest.mark.slow
def test_kill_9_of_the_script_ends_its_watcher(project, tmp_path):
    project.write_task("forever.py", FOREVER.replace("0.01", "0.5").replace("line * 256", "b'.\\n'"))
    project.write_flow({"name": "f", "tasks": [
        {"id": "big", "script": "forever.py", "args": [str(tmp_path / "pid")]}]})
    proc = start_run(project, "f")
    try:
        wait_for(lambda: (tmp_path / "pid").exists() and len(script_processes(project)) == 2,
                 "the task, the script and its watcher", WAIT)
        proc.kill()
        proc.wait(timeout=WAIT)
        wait_for(lambda: script_processes(project) == [], "the watcher to end with its script", 10)
    finally:
        if proc.poll() is None:
            proc.kill()
        task = int((tmp_path / "pid").read_text() or 0) if (tmp_path / "pid").exists() else 0
        if task and alive(task):
            os.kill(task, signal.SIGKILL)
