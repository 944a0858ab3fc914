"""Tell a live process from a dead one with certainty, and find a run's leftovers.

Standard library only (used by `_mark`). A process is identified by its pid,
its start time (clock ticks since boot, from /proc/<pid>/stat) and the boot id:
another boot id, a missing pid, or the same pid with another start time all
mean the process we knew is gone. Without /proc (not Linux) only the pid can be
checked, so a reused pid can be mistaken for the original: see the README.
"""

import os

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def boot_id():
    try:
        with open(BOOT_ID_PATH) as f:
            return f.read().strip()
    except OSError:
        return None


def _stat_fields(pid):
    """Fields 3.. of /proc/<pid>/stat (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # The command name may contain spaces and ')': fields start after the last ')'.
        return stat[stat.rindex(b")") + 2:].split()
    except (OSError, ValueError):
        return None


def start_time(pid):
    fields = _stat_fields(pid)
    try:
        return int(fields[19])
    except (TypeError, ValueError, IndexError):
        return None


def is_zombie(pid) -> bool:
    """A process that has exited but was not reaped yet still answers kill(pid, 0)."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] in (b"Z", b"X")


def identity(pid):
    """(start time, boot id) of `pid`, as recorded with a run."""
    return start_time(pid), boot_id()


def is_alive(pid, pid_start, recorded_boot, current_boot=None) -> bool:
    """True while the very process that was recorded still exists."""
    if not pid:
        return False
    current_boot = boot_id() if current_boot is None else current_boot
    if recorded_boot and current_boot and recorded_boot != current_boot:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if is_zombie(pid):
        return False  # dead; its parent has not collected it yet
    if pid_start is not None and os.path.isdir("/proc"):
        now_start = start_time(pid)
        return now_start == pid_start
    return True


def each_process(what: str):
    """(pid, contents of /proc/<pid>/<what>) of every other process we can read."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/{what}", "rb") as f:
                yield int(entry), f.read()
        except OSError:
            continue


def processes_with_env(name: str, value: str):
    """Pids of processes whose environment holds NAME=value (Linux /proc only)."""
    needle = f"{name}={value}".encode()
    return [pid for pid, env in each_process("environ") if needle in env.split(b"\0")]


def processes_running_script(script: str):
    """Pids of bash processes running `script`: a run's main process and its forks.

    A subshell forked by the run's bash that has not exec'd yet (a task being
    launched) does not show the run's variables in its environment (bash
    exported them after it started); its command line (`bash <script>`) does.
    """
    found = []
    for pid, cmdline in each_process("cmdline"):
        argv = cmdline.split(b"\0")
        if argv[-1:] == [b""]:
            argv.pop()
        if (len(argv) == 2 and os.path.basename(argv[0]) in (b"bash", b"sh")
                and argv[1] == os.fsencode(script)):
            found.append(pid)
    return found


def kill_all(pids, sig=None) -> int:
    """Signal each pid, and the whole process group of each one that leads its group.

    Only groups led by one of `pids` are signalled as a group (a task runs in
    its own group, led by `timeout`): a run started without a group of its own
    (from a script, cron or a test harness) shares its group with its parent,
    which must survive. Returns how many were signalled.
    """
    import signal  # not at the top: `_mark` imports this module and signal costs it 5 ms

    sig = signal.SIGKILL if sig is None else sig
    done = 0
    for pid in pids:
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
            done += 1
        except OSError:
            continue
    return done


def detach(argv, env=None) -> None:
    """Start `argv` in a session of its own, its output to /dev/null, and do not wait for it.

    Two forks, so that the started process is nobody's child to reap (no zombie in a
    long-lived co-process) and no terminal signal of ours reaches it. Without imports:
    `_mark` calls this when a run's end wrote a notification event.
    """
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, 1024)
        os.execve(argv[0], argv, os.environ if env is None else env)
    finally:
        os._exit(127)
