"""End to end: a secret a run's notify channel reads from the supervisor's environment never reaches the job.

The real CLI and daemon (tests/harness.py) on the local backend; tests/test_job_env_secrets.py checks the
same at the backend's level. OPS_HOOK_URL is a name no deny-list pattern catches: only the run's own
channels say it is a secret.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from harness import Harness


def test_notify_secret_of_a_run_is_not_in_its_jobs_environment(harness: Harness) -> None:
    # A closed port: the delivery fails, which is beside the point; the URL is what must not leak.
    secret = f"http://127.0.0.1:9/hook-{uuid.uuid4().hex}"
    harness.env["OPS_HOOK_URL"] = secret
    harness.env["PLAIN_SETTING"] = "plain-value"
    script = harness.script("env.sbatch", "printenv\n")
    harness.submit({
        "name": "envcheck",
        "backend": "local",
        "workdir": str(harness.root / "w"),
        "stages": [{"name": "only", "script": str(script), "max_attempts": 1}],
        "notify": [{"webhook": {"url_env": "OPS_HOOK_URL"}, "on": ["failed"]}],
    })
    harness.start_daemon(poll="0.5s")
    data = harness.wait_state("envcheck", ["succeeded", "failed"], timeout=90)
    assert data["state"] == "succeeded", data["events"]
    (attempt,) = data["stages"][0]["attempts"]
    log = Path(attempt["log"]).read_text()
    assert "PLAIN_SETTING=plain-value" in log  # printenv did print the supervisor's other variables
    assert "OPS_HOOK_URL" not in log
    assert secret not in log
    written = "".join(p.read_text(errors="replace") for p in (harness.root / "w").rglob("*") if p.is_file())
    assert secret not in written
