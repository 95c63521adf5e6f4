"""Argo CD health checks, run by a real Lua 5.1 interpreter the way Argo CD runs them.

The scripts come from deploy/argocd/argocd-cm.yaml, the very file users merge into argocd-cm, so
these tests prove what ships. Each kind has fixtures in Argo CD's own layout
(fixtures/argocd/<group>/<Kind>/health_test.yaml + testdata/*.yaml, full objects with status).

Argo CD evaluates health scripts with gopher-lua (Lua 5.1) and loads only the base, table and a
reduced os library; the string, math, io, debug and coroutine libraries are absent. The sandbox
below reproduces that on lupa's Lua 5.1 runtime (`lupa.lua51`), including the missing string
methods, so a script that would fail inside Argo CD fails here too. Every fixture also runs
through gopher-lua itself (tests/harness/argocd-health, built from the Go module proxy at the
version Argo CD v3.5 embeds): the two interpreters print numbers differently past 14 significant
digits (Lua's %.14g against Go's shortest form), so fixtures that put numbers into messages keep
them short, and both must agree on every fixture.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51
from mnist_tuning.controller import conditions

ROOT = Path(__file__).resolve().parents[2]
ARGOCD_CM = ROOT / "deploy" / "argocd" / "argocd-cm.yaml"
FIXTURES = Path(__file__).parent / "fixtures" / "argocd"
HEALTH_KEY_PREFIX = "resource.customizations.health."
# The statuses Argo CD accepts from a script (gitops-engine's health codes).
VALID_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

# Runs one health script the way Argo CD's util/lua VM does: `obj` global, the script's return
# value is the result, and only what gopher-lua's base/table libraries and Argo CD's safe os
# library provide is in scope.
SANDBOX = """
local allowed = {
  "assert", "error", "getmetatable", "ipairs", "next", "pairs", "pcall", "print", "rawequal",
  "rawget", "rawset", "select", "setmetatable", "tonumber", "tostring", "type", "unpack",
  "xpcall", "_VERSION",
}
return function(source, object)
  local env = {}
  for _, name in ipairs(allowed) do env[name] = _G[name] end
  env.table = table
  env.os = {time = os.time, date = os.date}
  env._G = env
  env.obj = object
  local chunk, err = loadstring(source, "health.lua")
  if chunk == nil then error(err) end
  setfenv(chunk, env)
  return chunk()
end
"""


def group_kind_of_key(key: str) -> str:
    """Argo CD's reading of `resource.customizations.health.<group>_<Kind>` (util/settings)."""
    group_kind = key.split(".", 3)[3]
    parts = group_kind.split("_")
    if len(parts) == 2:
        return f"{parts[0]}/{parts[1]}"
    assert len(parts) == 1, f"{key}: Argo CD rejects more than one '_' in the group_kind"
    return group_kind


def health_scripts() -> dict[str, str]:
    """The health scripts in the shipped argocd-cm snippet, by Argo CD's `group/Kind` key."""
    config_map = yaml.safe_load(ARGOCD_CM.read_text())
    return {
        group_kind_of_key(key): script
        for key, script in config_map["data"].items()
        if key.startswith(HEALTH_KEY_PREFIX)
    }


class Lua:
    """A Lua 5.1 runtime with Argo CD's health-script sandbox."""

    def __init__(self) -> None:
        self.runtime = lua51.LuaRuntime(register_eval=False, register_builtins=False)
        assert self.runtime.lua_version == (5, 1)
        self._run = self.runtime.execute(SANDBOX)
        # gopher-lua without its string library has no string methods ("x"):upper() either.
        self.runtime.execute('getmetatable("").__index = nil')

    def table(self, value: Any) -> Any:
        """Convert decoded YAML to Lua values as Argo CD's decodeValue does (null drops out)."""
        if isinstance(value, Mapping):
            table = self.runtime.table()
            for key, item in value.items():
                if item is not None:
                    table[key] = self.table(item)
            return table
        if isinstance(value, list):
            return self.runtime.table(*[self.table(item) for item in value])
        return value

    def health(self, script: str, obj: Mapping[str, Any]) -> dict[str, str]:
        """Run `script` on `obj` and return the health as Argo CD reads it back."""
        result = self._run(script, self.table(obj))
        assert lua51.lua_type(result) == "table", f"a health script must return a table: {result!r}"
        return {str(key): value for key, value in result.items()}


@pytest.fixture(scope="module")
def lua() -> Lua:
    return Lua()


class GopherLua:
    """Argo CD's own interpreter, gopher-lua, with Argo CD's library set (a small Go program)."""

    def __init__(self, binary: Path, work_dir: Path) -> None:
        self.binary = binary
        self.work_dir = work_dir

    def health(self, script: str, obj: Mapping[str, Any]) -> dict[str, str]:
        script_file = self.work_dir / "health.lua"
        object_file = self.work_dir / "object.json"
        script_file.write_text(script)
        object_file.write_text(json.dumps(obj))
        result = subprocess.run(
            [str(self.binary), str(script_file), str(object_file)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
        return dict(json.loads(result.stdout))


@pytest.fixture(scope="module")
def gopher_lua(tmp_path_factory: pytest.TempPathFactory) -> GopherLua:
    build = subprocess.run(
        [str(ROOT / "tests" / "harness" / "argocd-health.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if build.returncode != 0:
        pytest.fail(f"building the gopher-lua runner failed: {build.stderr}", pytrace=False)
    return GopherLua(Path(build.stdout.strip()), tmp_path_factory.mktemp("gopher-lua"))


@dataclass(frozen=True)
class Case:
    group_kind: str
    input_path: Path
    status: str
    message: str

    def __str__(self) -> str:
        return f"{self.group_kind}:{self.input_path.stem}"


def fixture_dirs() -> Iterator[tuple[str, Path]]:
    for test_file in sorted(FIXTURES.glob("*/*/health_test.yaml")):
        directory = test_file.parent
        yield f"{directory.parent.name}/{directory.name}", directory


def cases() -> list[Case]:
    found = []
    for group_kind, directory in fixture_dirs():
        for entry in yaml.safe_load((directory / "health_test.yaml").read_text())["tests"]:
            expected = entry["healthStatus"]
            found.append(
                Case(
                    group_kind,
                    directory / entry["inputPath"],
                    expected["status"],
                    expected.get("message", ""),
                )
            )
    return found


CASES = cases()


def tuning_fixture(name: str) -> dict[str, Any]:
    path = FIXTURES / "tuning.mnist.dev" / "MnistTuning" / "testdata" / f"{name}.yaml"
    return dict(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_health_of_each_fixture(lua: Lua, case: Case) -> None:
    obj = yaml.safe_load(case.input_path.read_text())
    health = lua.health(health_scripts()[case.group_kind], obj)
    assert health["status"] in VALID_STATUSES
    assert (health["status"], health.get("message") or "") == (case.status, case.message)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_argo_cds_interpreter_agrees_on_each_fixture(gopher_lua: GopherLua, case: Case) -> None:
    obj = yaml.safe_load(case.input_path.read_text())
    health = gopher_lua.health(health_scripts()[case.group_kind], obj)
    assert (health["status"], health.get("message", "")) == (case.status, case.message)


def test_argo_cds_interpreter_lacks_the_string_library_too(gopher_lua: GopherLua) -> None:
    with pytest.raises(RuntimeError, match="format"):
        gopher_lua.health('return {status = string.format("%s", "Healthy")}', {})


def test_every_shipped_check_has_fixtures_and_every_fixture_a_check() -> None:
    assert set(health_scripts()) == {group_kind for group_kind, _ in fixture_dirs()}
    assert set(health_scripts()) >= {"tuning.mnist.dev/MnistTuning", "kubeflow.org/Experiment"}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_each_fixture_is_an_object_of_the_kind_its_check_is_keyed_by(case: Case) -> None:
    obj = yaml.safe_load(case.input_path.read_text())
    group = obj["apiVersion"].rpartition("/")[0]
    assert f"{group}/{obj['kind']}" == case.group_kind
    assert {"name", "namespace", "uid", "generation"} <= set(obj["metadata"])


def test_every_testdata_file_is_used() -> None:
    used = {case.input_path for case in CASES}
    on_disk = {path for _, directory in fixture_dirs() for path in directory.glob("testdata/*")}
    assert on_disk == used


@pytest.mark.parametrize(
    ("group_kind", "statuses"),
    [
        ("tuning.mnist.dev/MnistTuning", {"Healthy", "Progressing", "Degraded", "Unknown"}),
        ("kubeflow.org/Experiment", {"Healthy", "Progressing", "Degraded"}),
        ("argoproj.io/Application", {"Healthy", "Progressing", "Degraded"}),
    ],
)
def test_fixtures_cover_every_health_a_check_can_return(
    group_kind: str, statuses: set[str]
) -> None:
    assert {case.status for case in CASES if case.group_kind == group_kind} == statuses


def test_tuning_fixtures_cover_every_phase_and_the_no_status_case() -> None:
    phases = set()
    for case in CASES:
        if case.group_kind == "tuning.mnist.dev/MnistTuning":
            status = yaml.safe_load(case.input_path.read_text()).get("status")
            phases.add(status.get("phase") if status else None)
    assert {None, "Pending", "Running", "Succeeded", "Failed"} <= phases


def test_a_tuning_edited_after_it_succeeded_is_progressing_until_the_operator_catches_up(
    lua: Lua,
) -> None:
    script = health_scripts()["tuning.mnist.dev/MnistTuning"]
    obj = tuning_fixture("succeeded")
    assert lua.health(script, obj)["status"] == "Healthy"
    obj["metadata"]["generation"] += 1
    assert lua.health(script, obj) == {
        "status": "Progressing",
        "message": f"Waiting for the operator to act on generation {obj['metadata']['generation']}",
    }
    obj["status"]["observedGeneration"] = obj["metadata"]["generation"]
    assert lua.health(script, obj)["status"] == "Healthy"


def test_a_refusal_is_degraded_whichever_fault_comes_first(lua: Lua) -> None:
    script = health_scripts()["tuning.mnist.dev/MnistTuning"]
    obj = tuning_fixture("refused")
    refusal = next(c for c in obj["status"]["conditions"] if c["status"] == "False")
    missing = {"type": conditions.KATIB_AVAILABLE, "status": "False"}
    obj["status"]["conditions"].insert(0, {**missing, "reason": conditions.KATIB_NOT_INSTALLED})
    assert lua.health(script, obj) == {
        "status": "Degraded",
        "message": f"{refusal['reason']}: {refusal['message']}",
    }


# Every fault the operator reports (conditions.py), and whether a person must act on it.
OPERATOR_FAULTS = [
    (conditions.KATIB_AVAILABLE, conditions.KATIB_NOT_INSTALLED, "Progressing"),
    (conditions.NAMESPACE_ENABLED, conditions.NAMESPACE_NOT_ENABLED, "Degraded"),
    (conditions.EXPERIMENT_ACCEPTED, conditions.EXPERIMENT_REFUSED, "Degraded"),
    (conditions.EXPERIMENT_ACCEPTED, conditions.OPERATOR_FORBIDDEN, "Degraded"),
    (conditions.SPEC_VALID, conditions.SPEC_INVALID, "Degraded"),
    # A trial pod in trouble: Katib goes on (with other trials, or once the cause is gone).
    (conditions.PODS_HEALTHY, conditions.IMAGE_PULL_FAILED, "Progressing"),
    (conditions.PODS_HEALTHY, conditions.UNSCHEDULABLE, "Progressing"),
    (conditions.PODS_HEALTHY, conditions.OOM_KILLED, "Progressing"),
    (conditions.PODS_HEALTHY, conditions.DEADLINE_EXCEEDED, "Progressing"),
]


@pytest.mark.parametrize(("type_", "reason", "health"), OPERATOR_FAULTS)
def test_the_check_reads_the_operators_own_condition_names(
    lua: Lua, type_: str, reason: str, health: str
) -> None:
    script = health_scripts()["tuning.mnist.dev/MnistTuning"]
    obj = tuning_fixture("pending")
    fault = {"type": type_, "status": "False", "reason": reason, "message": "what to do"}
    obj["status"]["conditions"] = [fault]
    assert lua.health(script, obj) == {"status": health, "message": f"{reason}: what to do"}


@pytest.mark.parametrize(
    "snippet",
    ['return {status = string.format("%s", "Healthy")}', 'return {status = ("x"):upper()}'],
)
def test_the_sandbox_lacks_the_string_library_like_argo_cd(lua: Lua, snippet: str) -> None:
    with pytest.raises(lua51.LuaError):
        lua.health(snippet, {})


def test_the_sandbox_rejects_syntax_newer_than_lua_5_1(lua: Lua) -> None:
    with pytest.raises(lua51.LuaError):
        lua.health("local x = 7 // 2\nreturn {status = 'Healthy'}", {})


def test_argo_cd_parses_each_key_to_the_group_and_kind_of_our_objects() -> None:
    assert group_kind_of_key(HEALTH_KEY_PREFIX + "tuning.mnist.dev_MnistTuning") == (
        "tuning.mnist.dev/MnistTuning"
    )
    keys = yaml.safe_load(ARGOCD_CM.read_text())["data"]
    assert all(key.startswith(HEALTH_KEY_PREFIX) for key in keys)
