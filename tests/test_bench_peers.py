"""bench/peers.py runs and prints a table that parses: the smallest workload, once, on
Featherflow and plain bash (no timing is asserted: speed is measured in bench/, not here)."""

import subprocess
import sys
from pathlib import Path

import pytest

PEERS = Path(__file__).resolve().parent.parent / "bench" / "peers.py"


def _peers(tmp_path, *args):
    return subprocess.run([sys.executable, str(PEERS), "--dir", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=300)


def _rows(out):
    """The markdown tables of the output, as lists of cells (the separator lines dropped)."""
    return [[c.strip() for c in line.strip("|").split("|")]
            for line in out.splitlines() if line.startswith("|") and "---" not in line]


@pytest.mark.slow
def test_peers_runs_the_smallest_workload_and_prints_a_table_that_parses(tmp_path):
    done = _peers(tmp_path, "--tools", "featherflow,bash", "--workloads", "one",
                  "--repeat", "1", "--startup-repeat", "1")
    assert done.returncode == 0, done.stderr
    rows = _rows(done.stdout)
    header, one = rows[0], rows[1]
    assert header[:4] == ["workload", "tasks", "bash s", "featherflow s"]
    cells = dict(zip(header, one))
    assert cells["workload"] == "one" and cells["tasks"] == "1" and cells["floor"] == "bash"
    for column in ("bash s", "featherflow s", "featherflow ms/task over floor", "bash/ff"):
        assert float(cells[column]) > 0, column
    assert rows[2] == ["start-up", "median ms"]
    startup = {r[0]: float(r[1]) for r in rows[3:]}
    assert set(startup) == {"`featherflow --help`", "`featherflow runs list`"}
    assert list(tmp_path.iterdir()) == []  # its temp project is removed


def test_a_peer_that_is_not_installed_is_skipped_with_a_note(tmp_path):
    done = _peers(tmp_path, "--tools", "doit,luigi", "--venv", str(tmp_path / "none"),
                  "--workloads", "one", "--repeat", "1")
    assert done.returncode == 0, done.stderr
    assert "note: doit: skipped, not installed" in done.stdout
    assert "note: luigi: skipped, not installed" in done.stdout


def test_an_unknown_workload_is_refused_with_the_valid_ones(tmp_path):
    done = _peers(tmp_path, "--workloads", "nope")
    assert done.returncode == 2
    assert "unknown workload ['nope']" in done.stderr and "chain50" in done.stderr


FLOOR = PEERS.parent / "floor.py"


def test_floor_times_every_part_and_prints_the_floors(tmp_path):
    done = subprocess.run([sys.executable, str(FLOOR), "--dir", str(tmp_path), "--repeat", "1", "--commits", "5"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    parts = {r[0]: float(r[1]) for r in _rows(done.stdout)[1:]}
    assert {"`bash -c :`", "`python, import peewee`", "`featherflow --version`",
            "one commit, WAL, synchronous=FULL"} <= set(parts)
    assert all(ms > 0 for ms in parts.values())
    assert "fixed cost floor of a run" in done.stdout and "per-task floor" in done.stdout
    assert list(tmp_path.iterdir()) == []  # its temp database is removed
