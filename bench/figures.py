"""The figures of the fault-injection tests, as the Markdown table in the README's "Reliability".

Runs the fault tests with FEATHERFLOW_FIGURES pointing at a temp file (each
test appends one JSON line of counts: kills performed, stuck runs, duplicate
slots, lost transitions, integrity checks passed, ...) and prints one row per
scenario, a total, and the scenarios pytest skipped here with its reason.

    python bench/figures.py [--soak] [TEST_FILE ...]   (default: tests/test_faults.py)

--soak sets FEATHERFLOW_SOAK=1: the same tests, with their loops run many
more times (minutes, not seconds). Any test file whose tests write lines in
the same format (see record_figures in tests/test_faults.py) can be added.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict

COLUMNS = [("kills", "kills performed"), ("stuck_runs", "stuck runs"), ("duplicate_slots", "duplicate slots"),
           ("lost_transitions", "lost transitions"), ("integrity_checks_passed", "integrity checks passed")]


def collect(lines):
    """{scenario: summed counts}, in first-seen order; extra keys become notes."""
    rows = OrderedDict()
    for line in lines:
        line = line.strip()
        if not line:
            continue
        data = json.loads(line)
        row = rows.setdefault(data.pop("test"), {})
        for key, value in data.items():
            row[key] = row.get(key, 0) + value
    return rows


def table(rows) -> str:
    head = "| scenario | " + " | ".join(title for _, title in COLUMNS) + " | also |"
    out = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    totals = {key: 0 for key, _ in COLUMNS}
    for name, counts in rows.items():
        cells = []
        for key, _ in COLUMNS:
            totals[key] += counts.get(key, 0)
            cells.append(str(counts.get(key, 0)))
        extra = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items() if k not in dict(COLUMNS))
        out.append(f"| {name} | " + " | ".join(cells) + f" | {extra} |")
    out.append("| **total** | " + " | ".join(f"**{totals[k]}**" for k, _ in COLUMNS) + " | |")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", default=["tests/test_faults.py"], help="test files to run")
    parser.add_argument("--soak", action="store_true", help="FEATHERFLOW_SOAK=1: the long variant")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        figures = os.path.join(tmp, "figures.jsonl")
        env = {**os.environ, "FEATHERFLOW_FIGURES": figures}
        if args.soak:
            env["FEATHERFLOW_SOAK"] = "1"
        began = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *args.files],
                              env=env, capture_output=True, text=True)
        took = time.monotonic() - began
        lines = open(figures).read().splitlines() if os.path.exists(figures) else []
    print(table(collect(lines)))
    print()
    summary = [line for line in done.stdout.splitlines() if " passed" in line or " failed" in line]
    outcome = summary[-1].strip("= ").split(" in ")[0] if summary else "no summary"
    skipped = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    print(f"{'soak' if args.soak else 'CI'} run of {', '.join(args.files)}: {outcome} in {took:.0f}s")
    for line in skipped:
        print(f"- {line}")
    if done.returncode:
        print(done.stdout[-4000:], file=sys.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
