"""Importing a module without an optional extension it can do without: a process's memory.

`featherflow serve` and the scheduler daemon run for months on a 512 MB machine. Two
standard modules load OpenSSL only for something these processes never use:
http.client (imported by http.server) imports ssl only to offer HTTPSConnection, and
hashlib (imported by peewee) loads `_hashlib`, OpenSSL's libcrypto, although md5 and
sha1, all Featherflow hashes, are built into CPython. Each costs some 2-4 MB of RSS.
"""

import importlib.util
import sys
from contextlib import contextmanager
from typing import Iterator

# What hashlib builds its always-there constructors from without OpenSSL (one missing and
# it logs an error at import): md5 and sha1 are Featherflow's own (peewee, backfill ids).
HASHLIB_BUILTINS = ("_md5", "_sha1", "_blake2", "_sha3") + (
    ("_sha2",) if sys.version_info >= (3, 12) else ("_sha256", "_sha512"))


@contextmanager
def without(*names: str) -> Iterator[None]:
    """Within, `import NAME` raises ImportError for each of `names` not imported yet, so a
    module imported here that treats NAME as optional goes without it; afterwards NAME
    imports as usual again (only those modules keep going without).

    For a process that does one thing (serve, the daemon): a module imported here keeps
    the poorer form for the whole process."""
    blocked = [name for name in names if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # the documented way to make an import fail
    try:
        yield
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def hashlib_builtins() -> bool:
    """Whether this Python has the builtin hashes hashlib uses without OpenSSL (CPython's
    default build; a build without them keeps OpenSSL's)."""
    return all(importlib.util.find_spec(name) is not None for name in HASHLIB_BUILTINS)
