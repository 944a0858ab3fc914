"""Write a readable synopsis of the aggregated weather CSV, plain or in a box.

Reads <weather folder>/<--input> (written by aggregate_data_to_csv.py), writes
<weather folder>/<--output> and prints it (so the task's log shows it too). The
weather folder is $FEATHERFLOW_OUTPUT_DIR/weather unless --output-dir says otherwise.

Numbers: averages, lowest and highest are taken over the CSV's values (already
rounded to 1 decimal; humidity to whole percent) and shown with 1 decimal
(humidity: whole percent). A station without a value is left out of that
average and named under "no report".

--format fancy draws a box with box-drawing characters. Lines are padded by
their display width on a terminal (a CJK character takes two columns, a
combining accent none), so the right edge lines up whatever the station names;
a line longer than --width is cut with "…".
"""
import argparse
import csv
import os
import re
import sys
import unicodedata
from pathlib import Path
from statistics import mean


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default="weather_data.csv",
                        help="the CSV, relative to the weather folder (default: weather_data.csv)")
    parser.add_argument("--format", choices=("plain", "fancy"), default="fancy",
                        help="plain text, or a box-drawing box (default: fancy)")
    parser.add_argument("--output", default="synopsis.txt",
                        help="where to keep the synopsis, relative to the weather folder (default: synopsis.txt)")
    parser.add_argument("--output-dir", help="the weather folder (default: $FEATHERFLOW_OUTPUT_DIR/weather)")
    parser.add_argument("--width", type=int, default=80, help="widest line of the fancy box, borders included (default: 80)")
    args, _unknown = parser.parse_known_args()
    return args


def weather_dir(option) -> Path:
    if option:
        return Path(option)
    return Path(os.environ.get("FEATHERFLOW_OUTPUT_DIR") or "featherflow_output") / "weather"


# -- display width -------------------------------------------------------------

def char_width(ch: str) -> int:
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def width(text: str) -> int:
    return sum(char_width(ch) for ch in text)


def clean(text: str) -> str:
    """NFC, and no control characters: text from the network never moves the cursor."""
    text = unicodedata.normalize("NFC", text)
    return "".join("?" if unicodedata.category(ch) == "Cc" else ch for ch in text)


def fit(text: str, limit: int) -> str:
    """`text` cut to at most `limit` columns, ending in "…" when cut."""
    if width(text) <= limit:
        return text
    out, used = [], 0
    for ch in text:
        w = char_width(ch)
        if used + w > limit - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


def pad(text: str, columns: int) -> str:
    return text + " " * (columns - width(text))


# -- the synopsis -------------------------------------------------------------

def number(row, key):
    try:
        return float(row[key]) if row.get(key) not in (None, "") else None
    except ValueError:
        return None


def fmt(value, unit, digits=1):
    return "n/a" if value is None else f"{value:.{digits}f} {unit}"


def sections(rows):
    """[(heading or None, [lines])]: the synopsis before any formatting."""
    ids = [r["station"] for r in rows]
    times = sorted(r["observed_at"] for r in rows if r.get("observed_at"))
    sources = sorted({r.get("source") or "?" for r in rows})
    source = {"sample": "bundled sample data", "live": "live data from api.weather.gov"}
    when = ""
    if times:
        first, last = times[0].replace("T", " ").rstrip("Z"), times[-1].replace("T", " ").rstrip("Z")
        when = f"observed {first[:16]} UTC" if first[:16] == last[:16] else \
            f"observed {first[:16]} to {last[11:16] if first[:10] == last[:10] else last[:16]} UTC"
    overview = [f"{len(rows)} station{'s' if len(rows) != 1 else ''}: {', '.join(ids)}"]
    if when:
        overview.append(when)
    overview.append("source: " + ", ".join(source.get(s, s) for s in sources))
    out = [(None, overview)]

    def stats(key_c, key_f, unit_c, unit_f, what, digits=1):
        have = [(r, number(r, key_c), number(r, key_f) if key_f else None) for r in rows]
        have = [h for h in have if h[1] is not None]
        missing = [r["station"] for r in rows if number(r, key_c) is None]
        if not have:
            return [f"no station reported {what}"]
        seconds_known = [h[2] for h in have if h[2] is not None]
        avg = (mean(h[1] for h in have), mean(seconds_known) if seconds_known else None)
        low = min(have, key=lambda h: h[1])
        high = max(have, key=lambda h: h[1])
        plural = "s" if len(have) != 1 else ""
        table = [("average", avg, f"over {len(have)} station{plural}")]
        if len(have) > 1:
            table += [("lowest", low[1:], f"at {low[0]['station']}"), ("highest", high[1:], f"at {high[0]['station']}")]
        # Right-align the numbers of a section so they read as a column.
        firsts = [fmt(c, unit_c, digits) for _, (c, _f), _ in table]
        seconds = [f"({fmt(f, unit_f, digits)})" if key_f else "" for _, (_c, f), _ in table]
        w1, w2 = max(map(len, firsts)), max(map(len, seconds))
        lines = [" ".join(x for x in (f"{label:<8}", a.rjust(w1), b.rjust(w2), where) if x)
                 for (label, _, where), a, b in zip(table, firsts, seconds)]
        if missing:
            lines.append(f"no report: {', '.join(missing)}")
        return lines

    out.append(("TEMPERATURE", stats("temperature_c", "temperature_f", "°C", "°F", "a temperature")))
    out.append(("WIND", stats("wind_kmh", "wind_mph", "km/h", "mph", "wind")))
    out.append(("HUMIDITY", stats("humidity_pct", None, "%", None, "humidity", digits=0)))

    counts = {}
    for r in rows:
        text = r.get("description") or "no description"
        counts[text] = counts.get(text, 0) + 1
    out.append(("CONDITIONS", [f"{text}: {n} station{'s' if n != 1 else ''}"
                               for text, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]))

    details = []
    for r in rows:
        details.append(f"{r['station']}  {r['name']}" if r.get("name") else r["station"])
        temp, wind, humidity = number(r, "temperature_c"), number(r, "wind_kmh"), number(r, "humidity_pct")
        details.append(
            "  " + (f"{fmt(temp, '°C')} / {fmt(number(r, 'temperature_f'), '°F')}" if temp is not None
                    else "temperature: no report")
            + (f", wind {fmt(wind, 'km/h')} / {fmt(number(r, 'wind_mph'), 'mph')}" if wind is not None
               else ", wind: no report")
            + (f", humidity {fmt(humidity, '%', 0)}" if humidity is not None else ", humidity: no report"))
        weather = r.get("description") or ""
        if r.get("present_weather"):
            weather = f"{weather} ({r['present_weather']})" if weather else r["present_weather"]
        if weather:
            details.append(f"  {weather}")
    out.append(("STATIONS", details))
    return [(heading, [clean(line) for line in lines]) for heading, lines in out]


def plain(parts) -> str:
    lines = ["WEATHER SYNOPSIS", "================"]
    for heading, body in parts:
        lines.append("")
        if heading:
            lines.append(heading)
            lines.extend("  " + line for line in body)
        else:
            lines.extend(body)
    return "\n".join(lines) + "\n"


def wrap(text: str, limit: int):
    """`text` as lines of at most `limit` columns, broken at spaces; continuation
    lines indented two more; a single word too long is cut with "…"."""
    if width(text) <= limit:
        return [text]
    lead = text[: len(text) - len(text.lstrip(" "))]
    lines, current = [], lead
    for word in re.findall(r"\S+\s*", text[len(lead):]):  # each word keeps the spaces after it
        if width((current + word).rstrip()) <= limit or not current.strip():
            current += word
        else:
            lines.append(current.rstrip())
            current = f"{lead}  {word}"
    lines.append(current.rstrip())
    return [fit(line, limit) for line in lines]


def fancy(parts, max_width: int) -> str:
    inner_max = max(20, max_width - 4)  # "║ " + text + " ║"
    texts = []  # a text line, or a rule: "╠═╣" between sections, "╟─╢" under a heading
    for heading, body in parts:
        texts.append("╠═╣")
        if heading:
            texts += [heading, "╟─╢"]
        texts += [b if heading is None else "  " + b for b in body]
    rules = ("╠═╣", "╟─╢")
    title = "WEATHER SYNOPSIS"
    inner = min(inner_max, max(width(t) for t in texts + [title] if t not in rules))
    out = ["╔" + "═" * (inner + 2) + "╗", "║ " + pad(" " * ((inner - width(title)) // 2) + title, inner) + " ║"]
    for text in texts:
        if text in rules:
            out.append(text[0] + text[1] * (inner + 2) + text[2])
        else:
            out.extend("║ " + pad(line, inner) + " ║" for line in wrap(text, inner))
    out.append("╚" + "═" * (inner + 2) + "╝")
    return "\n".join(out) + "\n"


def main() -> int:
    sys.stdout.reconfigure(encoding="utf-8", errors="replace")  # logs are UTF-8 whatever the locale
    args = parse_args()
    folder = weather_dir(args.output_dir)
    source = Path(args.input)
    source = source if source.is_absolute() else folder / source
    try:
        with open(source, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        print(f"error: {source} not found (the aggregate_data task writes it)", file=sys.stderr)
        return 1
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        print(f"error: cannot read {source}: {exc}", file=sys.stderr)
        return 1
    rows = [r for r in rows if r.get("station")]
    if not rows:
        print(f"error: {source} has no station rows", file=sys.stderr)
        return 1
    parts = sections(rows)
    text = fancy(parts, args.width) if args.format == "fancy" else plain(parts)
    target = Path(args.output)
    target = target if target.is_absolute() else folder / target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, target)  # readers see the old or the new synopsis, never half
    except OSError as exc:
        print(f"error: cannot write {target}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    print(f"written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
