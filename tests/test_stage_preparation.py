"""A pipeline stage whose job cannot even be prepared fails visibly, through the real CLI."""

from __future__ import annotations

from harness import Harness


def test_unwritable_attempt_dir_fails_the_stage_with_an_event(harness: Harness) -> None:
    config = harness.root / "cfg.yaml"
    config.write_text("output_dir: out\ndataset_prepared_path: prepared\n")
    work = harness.root / "work"
    work.mkdir()
    # The rendered script and derived config go under work/stages/: a file there makes that an OSError.
    (work / "stages").write_text("not a directory\n")
    spec = {
        "name": "blocked",
        "backend": "local",
        "workdir": str(work),
        "axolotl_config": str(config),
        "venv": str(harness.root / "venv"),
        "stages": [{"name": "prepare", "kind": "prepare", "max_attempts": 2, "retry_backoff": 0}],
    }
    assert harness.submit(spec) == "blocked"
    for _ in range(3):
        harness.cli("tick")
        if harness.show("blocked")["state"] == "failed":
            break

    data = harness.show("blocked")
    assert data["state"] == "failed"
    attempts = data["stages"][0]["attempts"]
    assert [a["state"] for a in attempts] == ["failed", "failed"]
    assert all(a["cause"] == "submit_rejected" and "stages" in (a["reason"] or "") for a in attempts)
    crashed = [e for e in data["events"] if e["kind"] == "crashed"]
    assert len(crashed) == 2 and "stages" in crashed[0]["message"]
