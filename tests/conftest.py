"""Shared fixtures: a project folder on tmp_path with its own database.

`project.cli(...)` runs the CLI in-process through main(argv) (fast; never for
`run`, which replaces its process with bash); `project.sh(...)` runs the real
command in a subprocess, with a private FEATHERFLOW_HOME.
"""

import contextlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from featherflow.cli import main as cli
from featherflow.api import Featherflow


@dataclass
class Result:
    code: int
    out: str
    err: str


class Project:
    def __init__(self, root: Path):
        self.root = root
        self.flows = root / "flows"
        self.tasks = root / "tasks"
        self.output = root / "featherflow_output"
        self.home = root / "home"
        self.db = self.home / "featherflow.db"
        self.flows.mkdir()
        self.tasks.mkdir()

    @property
    def env(self):
        env = dict(os.environ)
        env.pop("FEATHERFLOW_DB", None)
        env["FEATHERFLOW_HOME"] = str(self.home)
        return env

    def args(self):
        return ["-f", str(self.flows), "-t", str(self.tasks), "-o", str(self.output),
                "--config-dir", str(self.home)]

    def write_flow(self, flow: dict, name: str = None) -> Path:
        path = self.flows / f"{name or flow['name']}.json"
        path.write_text(json.dumps(flow, indent=2))
        return path

    def write_task(self, name: str, text: str, executable: bool = True) -> Path:
        path = self.tasks / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if executable:
            path.chmod(0o755)
        return path

    def app(self) -> Featherflow:
        return Featherflow(self.flows, self.tasks, self.output, config_dir=self.home, env={})

    def cli(self, *argv) -> Result:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(self.args() + [str(a) for a in argv])
        return Result(code, out.getvalue(), err.getvalue())

    def sh(self, *argv, timeout=120, **kwargs) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "featherflow"] + self.args() + [str(a) for a in argv],
            cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout, **kwargs)
        return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def project(tmp_path) -> Project:
    return Project(tmp_path)


@pytest.fixture
def store(project):
    app = project.app()
    yield app.store
    app.close()
