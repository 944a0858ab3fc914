"""lean.without: an optional import fails inside, and imports as usual again afterwards."""

import subprocess
import sys

from featherflow import lean


def test_without_blocks_an_import_inside_and_restores_it_after():
    code = ("import sys\nfrom featherflow import lean\n"
            "with lean.without('csv', 'os'):\n"
            "    try:\n        import csv\n        raise SystemExit('csv imported')\n"
            "    except ImportError:\n        pass\n"
            "    import os  # already imported: not blocked\n"
            "assert 'csv' not in sys.modules\nimport csv\nprint('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_this_python_has_the_builtin_hashes_the_daemon_relies_on():
    # CPython's default build; where it does not, import_daemon keeps OpenSSL's hashlib.
    assert lean.hashlib_builtins() in (True, False)
    assert all(isinstance(name, str) for name in lean.HASHLIB_BUILTINS)
