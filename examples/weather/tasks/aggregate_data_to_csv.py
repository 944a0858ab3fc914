"""Aggregate the fetched observations into one CSV file that outlives the run.

Reads every $TMP_DIR/observations/<STATION>.json written by get_observations.py
and writes one row per station, sorted by station id, to
$FEATHERFLOW_OUTPUT_DIR/weather/<--output> (TMP_DIR is removed when the run ends;
the output dir is not). The file is replaced atomically, so a reader never sees
half of it.

Columns and conversions (an empty cell means the station reported no value):

    station          station id, e.g. KLAX
    name             the station's name, if the response has one
    observed_at      observation time, ISO 8601 UTC (2025-03-14T20:53:00Z)
    temperature_c    °C, 1 decimal
    temperature_f    °F = °C * 9/5 + 32 from the unrounded value, 1 decimal
    wind_kmh         km/h, 1 decimal
    wind_mph         mph = km/h / 1.609344 from the unrounded value, 1 decimal
    humidity_pct     relative humidity, whole percent
    description      the NWS text description ("Light Rain and Fog/Mist")
    present_weather  the present-weather list, "; "-joined ("light rain; fog mist")
    source           sample (bundled file) or live (the NWS API)

Values in other units the API may use (degF, K, m/s, knots) are converted first.
"""
import argparse
import csv
import io
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

COLUMNS = ("station", "name", "observed_at", "temperature_c", "temperature_f", "wind_kmh",
           "wind_mph", "humidity_pct", "description", "present_weather", "source")
KM_PER_MILE = 1.609344

TO_CELSIUS = {"degC": lambda v: v, "degF": lambda v: (v - 32) * 5 / 9, "K": lambda v: v - 273.15}
TO_KMH = {"km_h-1": lambda v: v, "m_s-1": lambda v: v * 3.6, "kt": lambda v: v * 1.852,
          "mi_h-1": lambda v: v * KM_PER_MILE}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="weather_data.csv",
                        help="CSV file name, relative to the weather output folder (default: weather_data.csv)")
    parser.add_argument("--output-dir", help="the weather output folder "
                                             "(default: $FEATHERFLOW_OUTPUT_DIR/weather)")
    args, _unknown = parser.parse_known_args()
    return args


def weather_dir(option) -> Path:
    if option:
        return Path(option)
    return Path(os.environ.get("FEATHERFLOW_OUTPUT_DIR") or "featherflow_output") / "weather"


def quantity(props: dict, name: str, converters: dict, station: str):
    """The value of an NWS quantity {"value", "unitCode"} in our unit, or None."""
    item = props.get(name)
    if not isinstance(item, dict):
        return None
    value = item.get("value")
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        print(f"warning: {station}: {name} is {value!r}, not a number; left empty", file=sys.stderr)
        return None
    unit = str(item.get("unitCode", "")).split(":")[-1]
    convert = converters.get(unit)
    if convert is None:
        print(f"warning: {station}: {name} in unknown unit {unit!r}; left empty", file=sys.stderr)
        return None
    return convert(value)


def present_weather(items) -> str:
    words = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        parts = [item.get("intensity"), item.get("modifier"), item.get("weather")]
        text = " ".join(str(p).replace("_", " ") for p in parts if p)
        if item.get("inVicinity"):
            text += " in the vicinity"
        if text:
            words.append(text)
    return "; ".join(words)


def utc(timestamp) -> str:
    try:
        moment = datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
    except ValueError:
        return str(timestamp or "")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def one_decimal(value):
    return "" if value is None else f"{round(value, 1):.1f}"


def row(record: dict) -> dict:
    station = str(record.get("station", "?"))
    props = record["observation"]["properties"]
    celsius = quantity(props, "temperature", TO_CELSIUS, station)
    kmh = quantity(props, "windSpeed", TO_KMH, station)
    humidity = quantity(props, "relativeHumidity", {"percent": lambda v: v}, station)
    return {
        "station": station,
        "name": props.get("stationName") or "",
        "observed_at": utc(props.get("timestamp")),
        "temperature_c": one_decimal(celsius),
        "temperature_f": one_decimal(None if celsius is None else celsius * 9 / 5 + 32),
        "wind_kmh": one_decimal(kmh),
        "wind_mph": one_decimal(None if kmh is None else kmh / KM_PER_MILE),
        "humidity_pct": "" if humidity is None else str(round(humidity)),
        "description": props.get("textDescription") or "",
        "present_weather": present_weather(props.get("presentWeather")),
        "source": record.get("source", ""),
    }


def write_atomically(path: Path, text: str) -> None:
    """Write a temp file next to `path`, then rename it over: readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def main() -> int:
    sys.stdout.reconfigure(encoding="utf-8", errors="replace")  # logs are UTF-8 whatever the locale
    args = parse_args()
    obs_dir = Path(os.environ.get("TMP_DIR") or "tmp") / "observations"
    files = sorted(obs_dir.glob("*.json"))
    if not files:
        print(f"error: no observations in {obs_dir} (the get_*_obs tasks of the same run write them)",
              file=sys.stderr)
        return 1
    rows = []
    for path in files:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            rows.append(row(record))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            print(f"error: {path} is not an observation written by get_observations.py ({exc!r})",
                  file=sys.stderr)
            return 1

    out = Path(args.output)
    if not out.is_absolute():
        out = weather_dir(args.output_dir) / out
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    try:
        write_atomically(out, text.getvalue())
    except OSError as exc:
        print(f"error: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(text.getvalue(), end="")
    print(f"{len(rows)} station(s) written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
