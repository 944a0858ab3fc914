"""The cap on one attempt's log: keep its head and its latest output, cut the middle.

A task writes straight into its log file, opened in append mode (`>>`): no pipe,
no extra process per task, and nothing ever limits or kills a task for printing.
While a run with a cap has tasks running, the engine's watcher (a bash loop in
engine.bash, one per run) checks their logs' sizes about once a second and runs
this file (`python -I -S logcap.py cut CAP LOG...`) for a log that outgrew the
cap: the middle, from the end of the head to the start of the latest
TAIL_SHARE of the cap, becomes a hole (fallocate PUNCH_HOLE|KEEP_SIZE): its
blocks are freed and the writer, which always writes at the end, is not moved.
Where the file system cannot punch holes, the latest bytes are copied down
behind the head instead (bytes the task writes during that copy are lost).
When the attempt has ended (`logcap.py end CAP LOG...`), the log is compacted:
head + one marker line + tail, at most the cap plus the marker's length.

    head: the first HEAD_SHARE of the cap, up to its last line end when it has one
    tail: the last TAIL_SHARE of the cap, from its first line end when that is in
          its first half (so that the marker sits between whole lines)

Readers of a log whose attempt still runs (`runs logs`, its --follow) skip the
hole with read() and read_from(). The layout is read from the file itself each
time (where its hole is, or the marker a copy left), so the watcher keeps no
state in Python and a cut costs one short process only when a log is over its cap.

Standard library and kernel only: the engine runs this file with `python -I -S`.
"""

import errno
import os
import re
import sys
from typing import Optional, Tuple

DEFAULT_MAX_LOG_BYTES = 10 * 1024 * 1024  # the global default (FEATHERFLOW_MAX_LOG_BYTES overrides it)
MIN_MAX_LOG_BYTES = 4096  # a smaller cap (other than 0, no cap) is refused
HEAD_SHARE = 4  # the head is 1/4 of the cap, the tail the other 3/4
CHUNK = 1024 * 1024  # bytes copied at a time: compacting never holds a whole tail in memory
BLOCK = 65536  # how far around a hole to look for the zeros a punch leaves in partial blocks
MARKER_RE = re.compile(rb"\[featherflow: (\d+) bytes cut here; max_log_bytes=(\d+)\]\n")
SIZE_RE = re.compile(r"\s*(\d+)\s*(B|KB|KIB|K|MB|MIB|M|GB|GIB|G)?\s*", re.IGNORECASE)
UNITS = {"": 1, "B": 1, "K": 1024, "KIB": 1024, "KB": 1000, "M": 1024 ** 2, "MIB": 1024 ** 2,
         "MB": 1000 ** 2, "G": 1024 ** 3, "GIB": 1024 ** 3, "GB": 1000 ** 3}
SIZE_HELP = ("0 or null for no cap, or a size of at least 4096 bytes: a whole number of bytes "
             "or a string such as \"512KiB\", \"10MiB\", \"1GiB\" (or kB, MB, GB: powers of 1000)")
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2
SEEK_DATA = getattr(os, "SEEK_DATA", None)
SEEK_HOLE = getattr(os, "SEEK_HOLE", None)


def parse_size(value) -> Optional[int]:
    """A cap in bytes (0 for none) from an int, a size string or None; None when invalid."""
    if value is None:
        return 0
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        match = SIZE_RE.fullmatch(value)
        if not match:
            return None
        number = int(match.group(1)) * UNITS[(match.group(2) or "").upper()]
    else:
        return None
    if number == 0:
        return 0
    return number if number >= MIN_MAX_LOG_BYTES else None


def shares(cap: int) -> Tuple[int, int]:
    """(head, tail) byte budgets of a cap: they add up to the cap."""
    head = cap // HEAD_SHARE
    return head, cap - head


def marker(cut: int, cap: int) -> bytes:
    return b"[featherflow: %d bytes cut here; max_log_bytes=%d]\n" % (cut, cap)


# -- the layout of a log: where its head ends and its kept output begins -------------------

def _pread(fd: int, count: int, offset: int) -> bytes:
    parts = []
    while count > 0:
        chunk = os.pread(fd, min(count, CHUNK), offset)
        if not chunk:
            break
        parts.append(chunk)
        count -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _hole(fd: int, size: int) -> Optional[Tuple[int, int]]:
    """(first byte of the hole, first byte of data after it), zeros around it included,
    or None when the file has no hole before its end."""
    if SEEK_HOLE is None:
        return None
    try:
        start = os.lseek(fd, 0, SEEK_HOLE)
    except OSError:
        return None
    if start >= size:
        return None
    try:
        end = os.lseek(fd, start, SEEK_DATA)
    except OSError:  # ENXIO: nothing but hole up to the end
        end = size
    before = os.pread(fd, min(BLOCK, start), start - min(BLOCK, start))
    start -= len(before) - len(before.rstrip(b"\0"))
    after = os.pread(fd, min(BLOCK, size - end), end)
    end += len(after) - len(after.lstrip(b"\0"))
    return start, end


def layout(fd: int, size: int, cap: int) -> Tuple[int, int, int, bool]:
    """(end of the head, first byte of output kept after it, bytes already cut before that,
    whether a marker is there: copied down, the log can no longer take a hole).

    A punched log has a hole after its head; a copied-down one a marker; a fresh one
    neither: its head ends at its last line end within the head's share."""
    head, _ = shares(cap)
    hole = _hole(fd, size)
    if hole is not None:
        return hole[0], hole[1], hole[1] - hole[0], False
    window = os.pread(fd, head + 200, 0)
    found = None
    for found in MARKER_RE.finditer(window):
        pass
    if found is not None and found.start() <= head:
        return found.start(), found.end(), int(found.group(1)), True
    first = window[:head]
    end = first.rfind(b"\n") + 1 or len(first)
    return end, end, 0, False


def _punch(fd: int, offset: int, length: int) -> bool:
    """Free [offset, offset + length) without moving the file's end; False if unsupported."""
    if length <= 0:
        return True
    try:
        import ctypes  # lazy: only a cut pays for it

        libc = ctypes.CDLL(None, use_errno=True)
        fallocate = getattr(libc, "fallocate64", None) or libc.fallocate
        fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
        fallocate.restype = ctypes.c_int
    except (OSError, AttributeError, ImportError):
        return False
    if fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    if ctypes.get_errno() in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def _move(fd: int, source: int, dest: int, count: int) -> None:
    """Copy `count` bytes from `source` to `dest` in the same file (like memmove)."""
    if dest == source or count <= 0:
        return
    if dest < source:
        done = 0
        while done < count:
            chunk = os.pread(fd, min(CHUNK, count - done), source + done)
            if not chunk:
                break
            os.pwrite(fd, chunk, dest + done)
            done += len(chunk)
        return
    left = count
    while left > 0:
        step = min(CHUNK, left)
        left -= step
        os.pwrite(fd, os.pread(fd, step, source + left), dest + left)


def cut(path: str, cap: int, final: bool) -> bool:
    """Bring one log back under its cap; True if anything was cut.

    While the attempt runs (final=False) the middle is punched out; at its end
    (final=True), or where holes are not supported, the kept output is copied
    down behind the head with the marker, and the file truncated there."""
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return False
    try:
        size = os.fstat(fd).st_size
        head_end, body, before, copied = layout(fd, size, cap)
        if size <= cap and body == head_end:
            return False  # under the cap and never cut
        _, tail = shares(cap)
        start = max(body, size - tail)
        if not final and not copied and _punch(fd, head_end, start - head_end):
            return True
        if final:
            window = os.pread(fd, min(tail, size - start) // 2, start)
            newline = window.find(b"\n")
            if 0 <= newline < len(window) - 1:
                start += newline + 1
        total = before + (start - body)
        if total == 0 and body == head_end:
            return False
        mark = marker(total, cap)
        _move(fd, start, head_end + len(mark), size - start)
        os.pwrite(fd, mark, head_end)
        os.ftruncate(fd, head_end + len(mark) + size - start)
        return True
    finally:
        os.close(fd)


# -- readers: a log whose attempt still runs may hold a hole --------------------------------

def read(path: str) -> bytes:
    """The whole log as a reader should see it: a hole is one line saying what was cut."""
    with open(path, "rb") as handle:
        fd = handle.fileno()
        size = os.fstat(fd).st_size
        hole = _hole(fd, size)
        if hole is None:  # (lseek moved the handle's offset: read by position)
            return _pread(fd, size, 0)
        return (_pread(fd, hole[0], 0) + b"[featherflow: %d bytes cut here so far]\n" % (hole[1] - hole[0])
                + _pread(fd, size - hole[1], hole[1]))


def read_from(path: str, position: int) -> Tuple[bytes, int]:
    """What was written from `position` on, and the position after it; a hole skipped says so.
    A log that shrank (compacted at its attempt's end) is read from its new end."""
    with open(path, "rb") as handle:
        fd = handle.fileno()
        size = os.fstat(fd).st_size
        if position >= size:
            return b"", size
        hole = _hole(fd, size)
        if hole is not None and hole[0] <= position < hole[1]:
            note = b"[featherflow: %d bytes cut here]\n" % (hole[1] - position)
            return note + _pread(fd, size - hole[1], hole[1]), size
        end = hole[0] if hole is not None and position < hole[0] else size
        data = _pread(fd, end - position, position)
        if end < size:
            data += b"[featherflow: %d bytes cut here]\n" % (hole[1] - hole[0])
            data += _pread(fd, size - hole[1], hole[1])
        return data, size


def main(argv) -> int:
    """`logcap.py cut|end CAP LOG...`: cut each log over the cap (end: compact it)."""
    if len(argv) < 2 or argv[0] not in ("cut", "end"):
        print("usage: logcap.py cut|end CAP LOG...", file=sys.stderr)
        return 2
    cap, status = int(argv[1]), 0
    for path in argv[2:]:
        try:
            cut(path, cap, argv[0] == "end")
        except OSError as exc:  # the task is never stopped for its log; the run says why
            print(f"featherflow: cannot cap the log {path}: {exc.strerror or exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
