"""Fetch the latest observation of one weather station into TMP_DIR.

Offline by default: the observation comes from sample_data/<STATION>.json next to
this script, a saved response of the US National Weather Service API. With
--source=live (or, when the flow passes no --source, WEATHER_SOURCE=live in the
environment) it asks the API itself:

    GET https://api.weather.gov/stations/<STATION>/observations/latest

with a descriptive User-Agent (the NWS asks for one; put your e-mail address in
WEATHER_CONTACT) and a timeout. WEATHER_API_URL replaces https://api.weather.gov
(a mirror, or a test).

It writes $TMP_DIR/observations/<STATION>.json: {"station", "source", "url",
"fetched_at", "observation": <the response as received>}. A failure (no
network, HTTP error, not JSON) is one `error:` line on stderr and exit code 1,
so Featherflow retries it if the task has retries.
"""
import argparse
import http.client
import json
import os
import re
import socket
import sys
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

DEFAULT_API = "https://api.weather.gov"
SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"
STATION_RE = re.compile(r"[A-Z0-9]{3,6}")
MAX_BYTES = 2_000_000  # an observation is a few kB; refuse anything absurd


class Failure(Exception):
    """Fetching failed; the message is the one line the log shows."""


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--station", required=True, help="station id, e.g. KLAX")
    parser.add_argument("--source", choices=("sample", "live"),
                        help="sample: the bundled file (default); live: the NWS API "
                             "(default: $WEATHER_SOURCE, else sample)")
    parser.add_argument("--api-url", help=f"API base URL (default: $WEATHER_API_URL, else {DEFAULT_API})")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the API (default: 10)")
    args, _unknown = parser.parse_known_args()  # Featherflow may pass options we do not use
    return args


def user_agent() -> str:
    contact = os.environ.get("WEATHER_CONTACT") or "no contact given: set WEATHER_CONTACT"
    return f"featherflow-weather-example/1.0 (Featherflow example flow; {contact})"


def from_sample(station: str):
    path = SAMPLE_DIR / f"{station}.json"
    if not path.is_file():
        have = ", ".join(sorted(p.stem for p in SAMPLE_DIR.glob("*.json"))) or "none"
        raise Failure(f"no sample observation for {station} in {SAMPLE_DIR} "
                      f"(have: {have}; use --source=live for other stations)")
    return str(path), path.read_bytes()


def from_api(station: str, api_url: str, timeout: float):
    if not api_url.startswith(("http://", "https://")):
        raise Failure(f"API URL {api_url!r} must start with http:// or https://")
    url = f"{api_url.rstrip('/')}/stations/{station}/observations/latest"
    request = urllib.request.Request(url, headers={"User-Agent": user_agent(),
                                                   "Accept": "application/geo+json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        hint = " (is the station id right?)" if exc.code == 404 else ""
        raise Failure(f"{url}: HTTP {exc.code} {exc.reason}{hint}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise Failure(f"{url}: no answer within {timeout:g}s") from None
        raise Failure(f"cannot reach {url}: {getattr(reason, 'strerror', None) or reason}") from None
    except (socket.timeout, TimeoutError):
        raise Failure(f"{url}: no answer within {timeout:g}s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise Failure(f"{url}: connection failed: {exc or type(exc).__name__}") from None
    if len(body) > MAX_BYTES:
        raise Failure(f"{url}: the answer is larger than {MAX_BYTES} bytes; not an observation")
    return url, body


def parse(origin: str, body: bytes) -> dict:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Failure(f"{origin}: not a JSON observation ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("properties"), dict):
        raise Failure(f"{origin}: not an observation (no 'properties' object)")
    return data


def summary(station: str, props: dict) -> str:
    def value(name, fallback="n/a"):
        item = props.get(name)
        number = item.get("value") if isinstance(item, dict) else None
        if not isinstance(number, (int, float)) or isinstance(number, bool):
            return fallback
        unit = str(item.get("unitCode", "")).split(":")[-1]
        return f"{number:g} {unit}"

    return (f"{station}: temperature {value('temperature')}, wind {value('windSpeed')}, "
            f"humidity {value('relativeHumidity')}, {props.get('textDescription') or 'no description'} "
            f"(observed {props.get('timestamp') or 'at an unknown time'})")


def main() -> int:
    sys.stdout.reconfigure(encoding="utf-8", errors="replace")  # logs are UTF-8 whatever the locale
    args = parse_args()
    station = args.station.strip().upper()
    if not STATION_RE.fullmatch(station):
        print(f"error: invalid station id {args.station!r} (valid: 3-6 letters or digits, e.g. KLAX)",
              file=sys.stderr)
        return 2
    source = args.source or os.environ.get("WEATHER_SOURCE") or "sample"
    if source not in ("sample", "live"):
        print(f"error: WEATHER_SOURCE={source!r} (valid: sample, live)", file=sys.stderr)
        return 2
    try:
        if source == "live":
            api = args.api_url or os.environ.get("WEATHER_API_URL") or DEFAULT_API
            origin, body = from_api(station, api, args.timeout)
        else:
            origin, body = from_sample(station)
        data = parse(origin, body)
    except Failure as exc:
        print(f"error: {station}: {exc}", file=sys.stderr)
        return 1

    out_dir = Path(os.environ.get("TMP_DIR") or "tmp") / "observations"
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"station": station, "source": source, "url": origin,
              "fetched_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "observation": data}
    path = out_dir / f"{station}.json"
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(partial, path)  # the aggregate task never sees half a file
    print(summary(station, data["properties"]))
    print(f"{source} data from {origin} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
