"""Random text reaches a task byte-exact, and nothing in it is ever run by the shell.

One real `featherflow run` per example, carrying many values at once: array
args, object-form option values, env values and param values (substituted into
both args and env). A Python task dumps its argv and environment; a canary file
that any command substitution in the payloads would create must stay absent.
"""

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

pytestmark = pytest.mark.slow

DUMP = """\
import json, os, sys
with open(os.environ["DUMP_TO"], "w", encoding="utf-8") as f:
    json.dump({"argv": sys.argv[1:], "env": dict(os.environ)}, f)
"""

# No NUL (cannot be in argv or environ), no surrogates (not text), and no `{{`
# in flow values (a placeholder there is validated); param values may hold it.
CHARS = st.characters(codec="utf-8", exclude_characters="\x00")
FLOW_VALUE = st.text(CHARS, max_size=24).filter(lambda s: "{{" not in s and "}}" not in s)
PARAM_VALUE = st.text(CHARS, max_size=24)


def payloads(canary):
    return [f"$(touch {canary})", f"`touch {canary}`", f"; touch {canary}", f"| touch {canary}",
            f"\ntouch {canary}\n", f"' ; touch {canary} ; '", f'" ; touch {canary} ; "', "-rf", "--", "*"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=st.lists(FLOW_VALUE, max_size=6), short=FLOW_VALUE, long=FLOW_VALUE,
       envs=st.lists(FLOW_VALUE, min_size=1, max_size=4), param=PARAM_VALUE)
def test_values_arrive_byte_exact(project, tmp_path, args, short, long, envs, param):
    canary = tmp_path / "canary file"
    dump = tmp_path / "dump.json"
    if dump.exists():
        dump.unlink()
    project.write_task("dump.py", DUMP)
    bad = payloads(canary)
    env = {f"V{i}": v for i, v in enumerate(envs + bad)}
    env.update({"P": "{{ params.p }}", "DUMP_TO": str(dump)})
    array = args + bad + ["{{ params.p }}"]
    project.write_flow({"name": "q", "params": {"p": "default"}, "tasks": [
        {"id": "arr", "script": "dump.py", "args": array, "env": env},
        {"id": "obj", "script": "dump.py", "depends_on": ["arr"],
         "args": {"s": short, "long-name": long, "p": "{{ params.p }}", "on": True, "off": False},
         "env": {"DUMP_TO": str(dump) + ".obj"}},
    ]})
    result = project.sh("run", "q", "--params", json.dumps({"p": param}))
    assert result.code == 0, result.out + result.err

    seen = json.loads(dump.read_text(encoding="utf-8"))
    assert seen["argv"] == args + bad + [param]
    for name, value in env.items():
        assert seen["env"][name] == (param if name == "P" else value)
    assert json.loads(seen["env"]["FEATHERFLOW_PARAMS"]) == {"p": param}

    obj = json.loads((tmp_path / "dump.json.obj").read_text(encoding="utf-8"))
    assert obj["argv"] == ["-s", short, f"--long-name={long}", "-p", param, "--on"]
    assert not canary.exists()
