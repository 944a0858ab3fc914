"""Every example validates and runs end to end offline, and its outputs are right.

Runs are real `python -m featherflow ... run` subprocesses (a run execs bash),
each with its own output dir and database under tmp_path. The weather example's
expected values are derived here from the bundled NWS sample responses, by the
conversions its README documents, not read back from the code under test.
"""

import csv
import json
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path
from statistics import mean

import pytest

from featherflow.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
WEATHER = EXAMPLES / "weather"
SAMPLES = WEATHER / "tasks" / "sample_data"
COMPAT = Path(__file__).parent / "data" / "weather_observations_flow.json"

# The flow file the original Featherflow shipped, as its users have it (the same
# data as COMPAT, which is used byte for byte when it is there).
ORIGINAL = {
    "name": "weather_observations_flow",
    "description": "Collect, aggregate and report weather observations",
    "tasks": [
        {"id": "get_lax_obs", "script": "get_observations.py", "args": {"station": "KLAX"}},
        {"id": "get_sfo_obs", "script": "get_observations.py", "args": {"station": "KSFO"}},
        {"id": "get_nyc_obs", "script": "get_observations.py", "args": {"station": "KNYC"}},
        {"id": "aggregate_data", "script": "aggregate_data_to_csv.py",
         "depends_on": ["get_lax_obs", "get_sfo_obs", "get_nyc_obs"], "args": {"output": "weather_data.csv"}},
        {"id": "generate_synopsis", "script": "generate_synopsis.py", "depends_on": ["aggregate_data"],
         "args": {"input": "weather_data.csv", "format": "fancy"}},
    ],
}

CSV_HEADER = ["station", "name", "observed_at", "temperature_c", "temperature_f", "wind_kmh",
              "wind_mph", "humidity_pct", "description", "present_weather", "source"]


def example_flows():
    return [(p.parent.parent.name, p.stem) for p in sorted(EXAMPLES.glob("*/flows/*.json"))]


class Ran:
    """One run of a flow in a private output dir and database."""

    def __init__(self, root: Path, flows: Path, tasks: Path):
        self.root, self.flows, self.tasks = root, flows, tasks
        self.out, self.home = root / "out", root / "home"
        self.code, self.stdout, self.stderr = None, "", ""

    def ff(self, *argv, env=None, timeout=120):
        environment = {k: v for k, v in os.environ.items()
                       if not k.startswith(("WEATHER_", "FEATHERFLOW_"))}  # offline, private db
        environment.update(env or {})
        proc = subprocess.run(
            [sys.executable, "-m", "featherflow", "-f", str(self.flows), "-t", str(self.tasks),
             "-o", str(self.out), "--config-dir", str(self.home)] + [str(a) for a in argv],
            cwd=self.root, env=environment, capture_output=True, text=True, timeout=timeout)
        return proc

    def run(self, flow, *argv, env=None):
        proc = self.ff("run", flow, *argv, env=env)
        self.code, self.stdout, self.stderr = proc.returncode, proc.stdout, proc.stderr
        return self

    def show(self, run_id=1):
        proc = self.ff("runs", "show", run_id, "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """ran(example, flow) runs that example flow once per module and returns the Ran."""
    done = {}

    def get(example, flow):
        if (example, flow) not in done:
            root = tmp_path_factory.mktemp(f"{example}-{flow}")
            done[example, flow] = Ran(root, EXAMPLES / example / "flows", EXAMPLES / example / "tasks").run(flow)
        return done[example, flow]

    return get


# -- every example ---------------------------------------------------------------

@pytest.mark.parametrize("example, flow", example_flows())
def test_every_example_flow_validates(example, flow, tmp_path, capsys):
    code = cli.main(["-f", str(EXAMPLES / example / "flows"), "-t", str(EXAMPLES / example / "tasks"),
                     "--config-dir", str(tmp_path), "validate", flow])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out == f"{flow}: valid\n"


def test_the_examples_are_the_ones_expected():
    found = example_flows()
    assert ("quickstart", "quickstart") in found
    assert ("weather", "weather_observations_flow") in found


@pytest.mark.slow
@pytest.mark.parametrize("example, flow", example_flows())
def test_every_example_flow_runs_offline(example, flow, ran):
    result = ran(example, flow)
    assert result.code == 0, result.stdout + result.stderr
    shown = result.show()
    assert shown["state"] == "success"
    assert {t["id"]: t["state"] for t in shown["tasks"]} == {t["id"]: "success" for t in shown["tasks"]}
    assert shown["tasks"], "a flow with no tasks ran"


# -- quickstart ---------------------------------------------------------------

@pytest.mark.slow
def test_quickstart_report(ran):
    result = ran("quickstart", "quickstart")
    assert result.code == 0, result.stdout + result.stderr
    text = json.loads((EXAMPLES / "quickstart" / "flows" / "quickstart.json").read_text())["params"]["text"]
    report = (result.out / "quickstart-report.txt").read_text()
    lines = report.splitlines()
    assert lines[0] == "Quickstart report for run 1"
    counts = {line.split()[0]: int(line.split()[1]) for line in lines[1:]}
    assert counts == {"words": len(text.split()), "letters": sum(c.isalpha() for c in text),
                      "vowels": sum(c in "aeiouAEIOU" for c in text)}


# -- weather: the CSV ------------------------------------------------------------

def _quantity(props, name):
    item = props[name]
    return item["value"], item["unitCode"]


def expected_rows():
    """The CSV rows the README promises, computed from the sample responses."""
    rows = []
    for path in sorted(SAMPLES.glob("*.json")):
        props = json.loads(path.read_text())["properties"]
        celsius, unit = _quantity(props, "temperature")
        assert unit == "wmoUnit:degC"
        kmh, unit = _quantity(props, "windSpeed")
        assert unit == "wmoUnit:km_h-1"
        humidity, _ = _quantity(props, "relativeHumidity")
        weather = []
        for item in props["presentWeather"]:
            words = [w.replace("_", " ") for w in (item["intensity"], item["modifier"], item["weather"]) if w]
            weather.append(" ".join(words))
        rows.append({
            "station": path.stem,
            "name": props["stationName"],
            "observed_at": props["timestamp"].replace("+00:00", "Z"),
            "temperature_c": "" if celsius is None else f"{celsius:.1f}",
            "temperature_f": "" if celsius is None else f"{celsius * 9 / 5 + 32:.1f}",
            "wind_kmh": "" if kmh is None else f"{kmh:.1f}",
            "wind_mph": "" if kmh is None else f"{kmh / 1.609344:.1f}",
            "humidity_pct": "" if humidity is None else str(round(humidity)),
            "description": props["textDescription"],
            "present_weather": "; ".join(weather),
            "source": "sample",
        })
    return rows


def test_the_sample_data_has_the_three_stations_and_nulls():
    stations = sorted(p.stem for p in SAMPLES.glob("*.json"))
    assert stations == ["KLAX", "KNYC", "KSFO"]
    props = {s: json.loads((SAMPLES / f"{s}.json").read_text())["properties"] for s in stations}
    assert any(p["windSpeed"]["value"] is None for p in props.values()), "no null value in the samples"
    assert any(p["presentWeather"] for p in props.values()), "no present weather in the samples"


@pytest.mark.slow
def test_weather_csv_is_durable_and_derived_from_the_samples(ran):
    result = ran("weather", "weather_observations_flow")
    assert result.code == 0, result.stdout + result.stderr
    path = result.out / "weather" / "weather_data.csv"
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [dict(zip(header, r)) for r in reader]
    assert header == CSV_HEADER
    assert rows == expected_rows()
    # The run's TMP_DIR is gone; the CSV is not.
    run_dir = Path(result.show()["tasks"][0]["attempts"][0]["log"]).parent.parent
    assert not (run_dir / "tmp").exists()


@pytest.mark.slow
def test_weather_fetches_run_in_parallel(ran):
    result = ran("weather", "weather_observations_flow")
    lines = [line.split(None, 1)[1] for line in result.stdout.splitlines() if line[:2].isdigit()]
    fetches = ("get_lax_obs", "get_sfo_obs", "get_nyc_obs")
    first_end = next(i for i, line in enumerate(lines)
                     if line.startswith(("ok ", "FAILED ")) and line.split()[1] in fetches)
    started = {line.split()[1] for line in lines[:first_end] if line.startswith("start ")}
    assert started == set(fetches), result.stdout


# -- weather: the synopsis --------------------------------------------------------

def display_width(text):
    """Columns on a terminal: wide East Asian characters 2, combining marks 0."""
    total = 0
    for ch in text:
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
            continue
        total += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return total


def assert_box(text):
    lines = text.rstrip("\n").split("\n")
    widths = {display_width(line) for line in lines}
    assert len(widths) == 1, "\n".join(f"{display_width(line):3} {line}" for line in lines)
    assert lines[0][0] == "╔" and lines[0][-1] == "╗"
    assert lines[-1][0] == "╚" and lines[-1][-1] == "╝"
    for line in lines[1:-1]:
        assert (line[0], line[-1]) in {("║", "║"), ("╠", "╣"), ("╟", "╢")}, line


def _stats(values):
    values = [v for v in values if v is not None]
    return mean(values), min(values), max(values)


def _num(row, key):
    return float(row[key]) if row[key] else None


@pytest.mark.slow
def test_weather_synopsis_numbers_and_box(ran):
    result = ran("weather", "weather_observations_flow")
    assert result.code == 0, result.stdout + result.stderr
    text = (result.out / "weather" / "synopsis.txt").read_text(encoding="utf-8")
    assert_box(text)
    flat = re.sub(r"[║╠╣╟╢═─╔╗╚╝]", " ", text)
    flat = re.sub(r"\s+", " ", flat)
    rows = expected_rows()
    by = {r["station"]: r for r in rows}
    avg_c, low_c, high_c = _stats(_num(r, "temperature_c") for r in rows)
    avg_f = mean(_num(r, "temperature_f") for r in rows)
    low_st = min(rows, key=lambda r: _num(r, "temperature_c"))["station"]
    high_st = max(rows, key=lambda r: _num(r, "temperature_c"))["station"]
    assert f"average {avg_c:.1f} °C ({avg_f:.1f} °F) over 3 stations" in flat
    assert f"lowest {low_c:.1f} °C ({_num(by[low_st], 'temperature_f'):.1f} °F) at {low_st}" in flat
    assert f"highest {high_c:.1f} °C ({_num(by[high_st], 'temperature_f'):.1f} °F) at {high_st}" in flat
    windy = [r for r in rows if r["wind_kmh"]]
    calm = sorted(r["station"] for r in rows if not r["wind_kmh"])
    assert calm, "the samples should have a station without wind"
    avg_w = mean(_num(r, "wind_kmh") for r in windy)
    avg_mph = mean(_num(r, "wind_mph") for r in windy)
    assert f"average {avg_w:.1f} km/h ({avg_mph:.1f} mph) over {len(windy)} stations" in flat
    assert f"no report: {', '.join(calm)}" in flat
    avg_h = mean(_num(r, "humidity_pct") for r in rows)
    assert f"average {avg_h:.0f} % over 3 stations" in flat
    for r in rows:
        assert r["name"] in flat and r["description"] in flat
    assert "source: bundled sample data" in flat
    # The task's log shows the synopsis too.
    log = Path(result.show()["tasks"][-1]["attempts"][-1]["log"]).read_text(encoding="utf-8")
    assert text in log


def _synopsis(tmp_path, rows, *argv):
    folder = tmp_path / "weather"
    folder.mkdir(exist_ok=True)
    with open(folder / "weather_data.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_HEADER)
        writer.writeheader()
        writer.writerows(rows)
    env = {**os.environ, "FEATHERFLOW_OUTPUT_DIR": str(tmp_path), "PYTHONIOENCODING": "ascii"}
    proc = subprocess.run([sys.executable, str(WEATHER / "tasks" / "generate_synopsis.py"), *argv],
                          env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    return (folder / "synopsis.txt").read_text(encoding="utf-8"), proc.stdout.decode("utf-8")


UNICODE_ROWS = [
    {**{k: "" for k in CSV_HEADER}, "station": "LSZH", "name": "Zürich-Kloten ✈", "temperature_c": "4.0",
     "temperature_f": "39.2", "description": "Überwiegend bewölkt", "source": "live"},
    {**{k: "" for k in CSV_HEADER}, "station": "RJTT", "name": "東京国際空港（羽田）" * 5, "temperature_c": "9.0",
     "temperature_f": "48.2", "wind_kmh": "11.1", "wind_mph": "6.9", "description": "晴れ", "source": "live"},
    {**{k: "" for k in CSV_HEADER}, "station": "XCMB", "name": "Ame\u0301lie e\u0301\u0301 \x1b[31mred",
     "source": "live"},
]


@pytest.mark.parametrize("box_width", [40, 60, 80, 120])
def test_fancy_box_is_aligned_with_unicode_station_names(tmp_path, box_width):
    text, stdout = _synopsis(tmp_path, UNICODE_ROWS, "--width", str(box_width))
    assert_box(text)
    assert display_width(text.split("\n")[0]) <= max(box_width, 24)
    assert "\x1b" not in text, "a control character from the data reached the terminal"
    assert "Zürich-Kloten ✈" in text and "晴れ" in text
    assert stdout.startswith(text), "the synopsis is printed to the log as UTF-8, whatever the locale"


def test_plain_synopsis_has_the_same_numbers_and_no_box(tmp_path):
    text, _ = _synopsis(tmp_path, expected_rows(), "--format", "plain")
    assert not re.search(r"[║╔╗╚╝═]", text)
    rows = expected_rows()
    avg_c = mean(_num(r, "temperature_c") for r in rows)
    assert re.search(rf"average\s+{avg_c:.1f} °C", text)
    assert text.startswith("WEATHER SYNOPSIS\n")


# -- weather: the original flow file and the live mode -----------------------------

def _original_project(tmp_path):
    flows = tmp_path / "flows"
    flows.mkdir()
    target = flows / "weather_observations_flow.json"
    if COMPAT.exists():
        assert json.loads(COMPAT.read_text()) == ORIGINAL
        target.write_bytes(COMPAT.read_bytes())
    else:
        target.write_text(json.dumps(ORIGINAL, indent=2))
    return Ran(tmp_path, flows, WEATHER / "tasks"), target


@pytest.mark.slow
def test_the_original_flow_file_runs_unchanged_with_these_tasks(tmp_path):
    project, target = _original_project(tmp_path)
    before = target.read_bytes()
    proc = project.ff("validate", "weather_observations_flow")
    assert proc.returncode == 0 and proc.stdout == "weather_observations_flow: valid\n", proc.stderr
    project.run("weather_observations_flow")
    assert project.code == 0, project.stdout + project.stderr
    assert target.read_bytes() == before
    with open(project.out / "weather" / "weather_data.csv", newline="", encoding="utf-8") as f:
        assert list(csv.DictReader(f)) == expected_rows()
    assert_box((project.out / "weather" / "synopsis.txt").read_text(encoding="utf-8"))


def _fetch_logs(shown):
    return {t["id"]: t for t in shown["tasks"] if t["id"].startswith("get_")}


@pytest.mark.slow
def test_live_mode_network_failure_is_a_clean_task_failure(tmp_path):
    project = Ran(tmp_path, WEATHER / "flows", WEATHER / "tasks")
    project.run("weather_observations_flow", "--params", '{"source": "live"}',
                env={"WEATHER_API_URL": "http://127.0.0.1:9/"})
    assert project.code == 1, project.stdout + project.stderr
    shown = project.show()
    assert shown["state"] == "failed"
    states = {t["id"]: t["state"] for t in shown["tasks"]}
    assert states["aggregate_data"] == states["generate_synopsis"] == "upstream_failed"
    for task_id, task in _fetch_logs(shown).items():
        assert task["state"] == "failed"
        assert len(task["attempts"]) == 2, "the flow retries a fetch once"
        station = {"get_lax_obs": "KLAX", "get_sfo_obs": "KSFO", "get_nyc_obs": "KNYC"}[task_id]
        for attempt in task["attempts"]:
            assert attempt["exit_code"] == 1
            log = Path(attempt["log"]).read_text()
            assert log.startswith(f"error: {station}: cannot reach http://127.0.0.1:9/stations/{station}/"), log
            assert len(log.splitlines()) == 1 and "Traceback" not in log, log
    assert "Traceback" not in project.stdout + project.stderr
    assert not (project.out / "weather" / "weather_data.csv").exists()


@pytest.mark.slow
def test_live_env_switch_works_for_the_original_flow_file(tmp_path):
    project, _ = _original_project(tmp_path)
    project.run("weather_observations_flow", env={"WEATHER_SOURCE": "live", "WEATHER_API_URL": "http://127.0.0.1:9"})
    assert project.code == 1, project.stdout + project.stderr
    fetches = _fetch_logs(project.show())
    assert {t["state"] for t in fetches.values()} == {"failed"}
    log = Path(fetches["get_lax_obs"]["attempts"][0]["log"]).read_text()
    assert log.startswith("error: KLAX: cannot reach http://127.0.0.1:9/stations/KLAX/"), log
    assert "Traceback" not in log


def test_fetch_sends_a_descriptive_user_agent_with_a_timeout(tmp_path):
    """A local server that accepts and never answers: the fetch gives up after --timeout."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    seen, got, release = [], threading.Event(), threading.Event()

    def accept():
        conn, _ = server.accept()
        conn.settimeout(30)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        seen.append(data.decode("latin-1"))
        got.set()
        release.wait(30)  # hold the connection open, never answering
        conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    env = {**os.environ, "TMP_DIR": str(tmp_path), "WEATHER_CONTACT": "ops@example.org",
           "WEATHER_API_URL": f"http://127.0.0.1:{server.getsockname()[1]}"}
    proc = subprocess.run([sys.executable, str(WEATHER / "tasks" / "get_observations.py"),
                           "--station=KLAX", "--source=live", "--timeout=0.5"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert got.wait(30), "the fetch never sent its request"
    release.set()
    thread.join(30)
    server.close()
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: KLAX: {env['WEATHER_API_URL']}/stations/KLAX/observations/latest: no answer within 0.5s"]
    request = seen[0]
    assert request.startswith("GET /stations/KLAX/observations/latest HTTP/1.1")
    agent = re.search(r"(?im)^user-agent: (.*)\r$", request).group(1)
    assert agent.startswith("featherflow-weather-example/") and "ops@example.org" in agent
