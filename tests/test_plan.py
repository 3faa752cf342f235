"""`supervisor plan`: the example campaign against golden files, nothing written, nothing queued, and what the
real cluster would refuse."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from harness import Harness
from slurm_fixtures import require_slurm

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "jobs" / "example" / "campaign.yaml"
GOLDEN = Path(__file__).resolve().parent / "golden" / "plan"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; rerun with UPDATE_GOLDEN=1 if intended"


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_the_example_campaign_plan_matches_its_golden_files_and_writes_nothing(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    before = tree(EXAMPLE.parent)
    as_json = h.cli("plan", "--offline", "--json", str(EXAMPLE)).out.replace(str(REPO), "<repo>")
    as_text = h.cli("plan", "--offline", str(EXAMPLE)).out.replace(str(REPO), "<repo>")
    check_golden("example-campaign.json", as_json)
    check_golden("example-campaign.txt", as_text)
    found = json.loads(as_json)
    assert [g["runs"] for g in found["shared_prepares"]] == [
        ["llama-8b-1m-1ep.prepare", "llama-8b-1m-4ep.prepare"],
        ["llama-8b-full-1ep.prepare", "llama-8b-full-4ep.prepare"]]
    train = found["runs"][0]["stages"][1]
    assert "--nodes=32" in train["script"] and train["argv"][0] == "sbatch"
    assert "+bf16: false" in found["runs"][0]["stages"][0]["axolotl_config_diff"]
    assert not h.home.exists(), "plan opened (or created) a state directory"
    assert tree(EXAMPLE.parent) == before, "plan wrote next to the spec"


def test_plan_reports_what_the_cluster_would_refuse_and_queues_nothing(tmp_path: Path) -> None:
    require_slurm()
    h = Harness(tmp_path)
    script = h.script("s.sbatch", "echo hi\n")
    spec = h.write_spec({"campaign": "refused", "defaults": {"backend": "slurm"}, "runs": [
        {"name": "ok", "workdir": str(tmp_path / "w1"),
         "stages": [{"name": "s", "script": str(script), "partition": "lrd_all_serial"}]},
        {"name": "wrong", "workdir": str(tmp_path / "w2"),
         "stages": [{"name": "s", "script": str(script), "partition": "no_such_partition"}]}]}, "c.yaml")
    done = h.cli("plan", "--json", str(spec), check=False)
    assert done.code == 2, done.err
    problems: list[dict[str, Any]] = json.loads(done.out)["problems"]
    assert [(p["run"], p["stage"], p["field"]) for p in problems] == [("wrong", "s", "partition")]
    assert "'no_such_partition' does not exist on this cluster" in problems[0]["problem"]
    assert "lrd_all_serial" in problems[0]["problem"]
    queued = subprocess.run(["squeue", "--noheader", "--format=%j"], capture_output=True, text=True, check=True,
                            timeout=60).stdout.split()
    assert not [j for j in queued if j.startswith(("ok.", "wrong."))]
    assert not h.home.exists()


def test_a_bad_spec_is_the_same_one_line_error_as_submit_gives(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    spec = h.write_spec({"campaign": "c", "runs": [{"name": "r", "stages": [{"name": "s"}]}]}, "c.yaml")
    planned = h.cli("plan", "--offline", str(spec), check=False)
    submitted = h.cli("submit", str(spec), check=False)
    assert planned.code == submitted.code == 2
    assert planned.err == submitted.err and "runs[0].stages[0]" in planned.err
    assert yaml.safe_load(spec.read_text())["campaign"] == "c"
