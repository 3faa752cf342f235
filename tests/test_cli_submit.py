"""`submit` registers a run as the service's `register` does, without importing the service."""

from __future__ import annotations

from typing import Any

from supervisor.app.service import Supervisor

from harness import Harness


def spec(name: str) -> dict[str, Any]:
    return {"name": name, "backend": "local", "notify": [{"webhook": {"url": "https://example.invalid/hook"}}],
            "stages": [{"name": "prep", "command": ["true"]}, {"name": "merge", "command": ["true"]}]}


def same_shape(data: dict[str, Any], name: str) -> dict[str, Any]:
    """``show --json`` without what differs between two registrations: the name and the times."""
    kept = {k: v for k, v in data.items() if k not in ("created_at", "updated_at", "events")}
    text = repr(kept).replace(name, "NAME")
    return {"shown": text, "events": [(e["kind"], e["message"].replace(name, "NAME")) for e in data["events"]]}


def test_submit_registers_what_the_service_registers(harness: Harness) -> None:
    by_cli, by_service = (harness.write_spec(spec(name), f"{name}.yaml") for name in ("by-cli", "by-service"))
    assert harness.cli("submit", str(by_cli)).out == "by-cli\n"
    assert Supervisor(harness.home).register(by_service, "local") == "by-service"
    shown = same_shape(harness.show("by-cli"), "by-cli")
    assert shown == same_shape(harness.show("by-service"), "by-service")
    assert [kind for kind, _ in shown["events"]] == ["registered"]
