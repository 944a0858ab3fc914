"""Gather the counts into a report kept in the output dir (TMP_DIR is removed at the end)."""
import os
from pathlib import Path

tmp = Path(os.environ["TMP_DIR"])
counts = {p.stem: int(p.read_text()) for p in sorted(tmp.glob("*.count"))}
lines = [os.environ["REPORT_TITLE"]] + [f"  {name:<8} {value:>4}" for name, value in counts.items()]
report = "\n".join(lines) + "\n"
out = Path(os.environ["FEATHERFLOW_OUTPUT_DIR"]) / "quickstart-report.txt"
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(report)
print(report, end="")
print(f"written to {out}")
