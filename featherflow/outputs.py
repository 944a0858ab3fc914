"""Task outputs: read the file a task wrote, and start a task with the outputs it uses.

A task writes `KEY=VALUE` lines to the file named by $FEATHERFLOW_OUTPUT_FILE
(one file per attempt, in the run dir), or `KEY<<DELIMITER` followed by lines and
a line that is exactly DELIMITER, for a value with newlines (the format of GitHub
Actions' $GITHUB_OUTPUT). `_mark` stores them with the attempt when it succeeds.

    outputs.py --check FILE
        exit 0 when FILE is a valid outputs file; else exit 1 with the reason on stdout
        (the engine runs this when a task that wrote one exits 0).
    outputs.py DB RUN_ID SPEC COMMAND...
        put the outputs named by SPEC into the task's argv and env and exec COMMAND.

SPEC (JSON, written by engine/script.py) is {"argv": [WORD, ...], "env": [[NAME, WORD], ...]}
where a WORD is a list of parts: a string (as it is) or [TASK, KEY] (that task's output).
The values reach the task byte-exact: through execve, never through a shell.
Standard library only, run as `python -I -S`: it is on the path of a task's start.
"""

import json
import os
import sqlite3
import sys

MAX_BYTES = 64 * 1024  # the cap on a task's outputs file
KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


class OutputError(ValueError):
    """An outputs file that cannot be stored: over the cap, or not in the format."""


def valid_key(key: str) -> bool:
    return bool(key) and not key[0].isdigit() and set(key) <= KEY_CHARS


def parse(data: bytes) -> dict:
    """The outputs in `data`, a later KEY replacing an earlier one.

    Bytes that are not UTF-8 are kept (surrogateescape), so a value goes back to the
    same bytes in the downstream task's argv. Empty lines are ignored; a heredoc's
    value is its lines joined by newlines, without the last one.
    """
    if len(data) > MAX_BYTES:
        raise OutputError(f"outputs file is {len(data)} bytes, over the cap of {MAX_BYTES} bytes (64 KiB)")
    if b"\0" in data:
        raise OutputError("outputs file has a NUL byte (no argument or variable can hold one)")
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    found, at = {}, 0
    while at < len(lines):
        line, number = lines[at], at + 1
        at += 1
        if not line.strip():
            continue
        eq, here = line.find("="), line.find("<<")
        if here >= 0 and (eq < 0 or here < eq):
            key, delimiter = line[:here], line[here + 2:]
            if not delimiter:
                raise OutputError(f"outputs file line {number}: {key}<< needs a delimiter (KEY<<EOF)")
            end = at
            while end < len(lines) and lines[end] != delimiter:
                end += 1
            if end == len(lines):
                raise OutputError(f"outputs file line {number}: no line {delimiter!r} ends the value of {key}")
            value = "\n".join(lines[at:end])
            at = end + 1
        elif eq >= 0:
            key, value = line[:eq], line[eq + 1:]
        else:
            raise OutputError(f"outputs file line {number}: not KEY=VALUE nor KEY<<DELIMITER")
        if not valid_key(key):
            raise OutputError(f"outputs file line {number}: invalid key {key[:64]!r} "
                              "(valid: letters, digits, '_', not starting with a digit)")
        found[key] = value
    return found


def read(path: str):
    """The outputs in the file at `path`, or None when there is no such file."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_BYTES:  # refused by its size: a runaway writer's gigabytes are never read
                raise OutputError(f"outputs file is {size} bytes, over the cap of {MAX_BYTES} bytes (64 KiB)")
            data = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputError(f"outputs file cannot be read: {exc.strerror}") from None
    return parse(data)


def to_text(outputs: dict) -> str:
    """The stored form: JSON, ASCII only (kept bytes that are not UTF-8 survive it)."""
    return json.dumps(outputs, sort_keys=True)


def stored(db: str, run_id: int, tasks) -> dict:
    """{task: outputs} of the latest successful attempt of each of `tasks` in the run."""
    path = os.path.abspath(db)
    for char, code in (("%", "%25"), ("?", "%3f"), ("#", "%23")):
        path = path.replace(char, code)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    try:
        marks = ", ".join("?" for _ in tasks)
        rows = conn.execute(
            f"SELECT task_id, outputs FROM task_attempt WHERE run_id = ? AND state = 'success' "
            f"AND task_id IN ({marks}) ORDER BY attempt", [run_id] + list(tasks)).fetchall()
    finally:
        conn.close()
    found = {task: None for task in tasks}
    for task, text in rows:
        found[task] = json.loads(text) if text else {}
    return found


def fill(word, outputs) -> str:
    """A word of SPEC with the outputs put in; OutputError names a missing one."""
    out = []
    for part in word:
        if isinstance(part, str):
            out.append(part)
            continue
        task, key = part
        values = outputs.get(task)
        if values is None:
            raise OutputError(f"{{{{ tasks.{task}.outputs.{key} }}}}: task {task} has not succeeded in this run")
        if key not in values:
            known = ", ".join(sorted(values)) or "none"
            raise OutputError(f"{{{{ tasks.{task}.outputs.{key} }}}}: task {task} wrote no output {key} "
                              f"(it wrote: {known})")
        out.append(values[key])
    return "".join(out)


def prepare(db: str, run_id: int, spec: dict, command):
    """The argv and environment the task runs with."""
    words = list(spec.get("argv", [])) + [word for _, word in spec.get("env", [])]
    tasks = sorted({part[0] for word in words for part in word if not isinstance(part, str)})
    outputs = stored(db, run_id, tasks) if tasks else {}
    argv = list(command) + [fill(word, outputs) for word in spec.get("argv", [])]
    env = dict(os.environ)
    for name, word in spec.get("env", []):
        env[name] = fill(word, outputs)
    return argv, env


def main(argv) -> int:
    if len(argv) == 2 and argv[0] == "--check":
        try:
            read(argv[1])
        except OutputError as exc:
            print(exc)
            return 1
        return 0
    if len(argv) < 4:
        print("featherflow outputs: usage: outputs.py --check FILE | outputs.py DB RUN_ID SPEC COMMAND...",
              file=sys.stderr)
        return 2
    try:
        command, env = prepare(argv[0], int(argv[1]), json.loads(argv[2]), argv[3:])
    except (OutputError, sqlite3.Error, ValueError) as exc:
        print(f"featherflow: cannot start the task: {exc}", file=sys.stderr)
        return 2
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        print(f"featherflow: cannot start {command[0]}: {exc.strerror}", file=sys.stderr)
        return 126
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
