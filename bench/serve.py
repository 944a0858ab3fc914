"""Status page benchmark: idle RSS of `featherflow serve`, and one page with 100,000 runs.

    python bench/serve.py [--runs 100000] [--repeat 21] [--dir DIR]

1. Generates a database with RUNS finished runs (3 attempts each), 3 running ones,
   5 schedules with 200 slots each and a scheduler row (bench_dashboard.generate:
   rows by executemany in one transaction).
2. Starts the real `featherflow serve --port 0` on it and reads its RSS (VmRSS; and PSS) once
   it has answered one request and sat idle for 2 s.
3. Times one request of each page and document over a fresh connection, against a
   baseline in the same rounds: /static/style.css (a request that reads nothing:
   the server's fixed cost). Medians, interleaved per round.

Targets (issue 19): under 25 MB idle, a page under 50 ms.
"""

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_dashboard import generate  # noqa: E402


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmRSS")))


def pss_kb(pid: int) -> int:
    """PSS: shared libraries counted by share (the fair "what this process adds")."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return int(next(line.split()[1] for line in f if line.startswith("Pss:")))
    except (OSError, StopIteration):
        return 0


def fetch(port: int, path: str) -> float:
    start = time.perf_counter()
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    con.request("GET", path)
    resp = con.getresponse()
    body = resp.read()
    con.close()
    elapsed = time.perf_counter() - start
    if resp.status not in (200, 503):
        raise SystemExit(f"{path}: HTTP {resp.status}: {body[:200]!r}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000, help="finished runs to generate (default: 100000)")
    parser.add_argument("--repeat", type=int, default=21, help="rounds of page timing (default: 21)")
    parser.add_argument("--dir", help="where to put the database (default: a temp dir, removed after)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "bench.db"
        start = time.perf_counter()
        generate(path, args.runs, datetime.utcnow())
        print(f"generated {args.runs:,} runs in {time.perf_counter() - start:.1f}s "
              f"({path.stat().st_size / 1e6:.1f} MB)")
        env = dict(os.environ, PYTHONPATH=str(ROOT), FEATHERFLOW_HOME=tmp)
        server = subprocess.Popen([sys.executable, "-m", "featherflow", "--db", str(path), "serve", "--port", "0"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            line = server.stdout.readline()
            if not line.startswith("serving http://"):
                raise SystemExit(f"serve did not start: {line}{server.stderr.read()}")
            port = int(line.split(":")[2].split("/")[0])
            fetch(port, "/healthz")
            time.sleep(2)
            idle = rss_kb(server.pid)
            print(f"idle RSS of featherflow serve: {idle / 1024:.1f} MB (target < 25 MB); "
                  f"PSS {pss_kb(server.pid) / 1024:.1f} MB")
            newest = args.runs + 3
            cases = ["/static/style.css", "/", "/runs", f"/runs/{newest}", f"/runs/{args.runs}",
                     f"/runs/{args.runs}/logs/extract/1", "/schedules/sched-0", "/api/runs", f"/api/runs/{newest}",
                     "/api/schedules", "/healthz"]
            samples = {case: [] for case in cases}
            for _ in range(args.repeat):
                for case in cases:
                    samples[case].append(fetch(port, case))
            for case in cases:
                label = case + ("  (baseline: reads nothing)" if case.startswith("/static") else "")
                print(f"GET {label:<48} {statistics.median(samples[case]) * 1000:7.2f} ms "
                      f"(median of {args.repeat})")
            print(f"RSS after {args.repeat * len(cases)} requests: {rss_kb(server.pid) / 1024:.1f} MB")
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
