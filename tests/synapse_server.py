"""A real Synapse homeserver on loopback for the Matrix tests.

Installs ``matrix-synapse`` into its own venv (default ``.cache/synapse-venv``, gitignored; skipped
when present), writes a config (client listener on 127.0.0.1 only, SQLite, no stats, no key servers,
rate limits raised), starts and stops the server, and talks the admin/client API a test needs:
register a user with the shared secret, log in, create a room, read the room back.

Command line (outside pytest)::

    python tests/synapse_server.py install          # just the venv
    python tests/synapse_server.py run DIR          # start in DIR, print URL/token/room, wait
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VENV = REPO / ".cache" / "synapse-venv"
SERVER_NAME = "localhost"

# Generous but finite: the first start creates the SQLite schema, on a shared 2-core machine.
START_TIMEOUT_S = 120.0
_BIG = {"per_second": 10000, "burst_count": 10000}


class SynapseUnavailable(RuntimeError):
    """Synapse could not be installed or started (no network for pip, ...)."""


def venv_python(venv: Path = DEFAULT_VENV) -> Path:
    return venv / "bin" / "python"


def install(venv: Path = DEFAULT_VENV) -> Path:
    """Create the venv with matrix-synapse unless it is already importable there."""
    python = venv_python(venv)
    if python.exists():
        check = subprocess.run([str(python), "-c", "import synapse"], capture_output=True, check=False)
        if check.returncode == 0:
            return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "matrix-synapse"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SynapseUnavailable(f"pip install matrix-synapse failed: {result.stderr[-2000:]}")
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _yaml(value: Any) -> str:
    """JSON is YAML: the config is written without needing a YAML library here."""
    return json.dumps(value, indent=2)


class SynapseServer:
    def __init__(self, directory: Path, *, venv: Path = DEFAULT_VENV, port: int | None = None) -> None:
        self.dir = directory
        self.venv = venv
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.shared_secret = secrets.token_hex(16)
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_path = self.dir / "homeserver.yaml"

    # -- lifecycle ---------------------------------------------------------------------------
    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        log_config = self.dir / "log.yaml"
        log_config.write_text(
            _yaml(
                {
                    "version": 1,
                    "formatters": {"f": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
                    "handlers": {
                        "file": {
                            "class": "logging.FileHandler",
                            "formatter": "f",
                            "filename": str(self.dir / "homeserver.log"),
                        }
                    },
                    "root": {"level": "WARNING", "handlers": ["file"]},
                    "disable_existing_loggers": False,
                }
            )
        )
        config = {
            "server_name": SERVER_NAME,
            "pid_file": str(self.dir / "homeserver.pid"),
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": {"name": "sqlite3", "args": {"database": str(self.dir / "homeserver.db")}},
            "log_config": str(log_config),
            "media_store_path": str(self.dir / "media"),
            "signing_key_path": str(self.dir / "signing.key"),
            "registration_shared_secret": self.shared_secret,
            "macaroon_secret_key": secrets.token_hex(16),
            "form_secret": secrets.token_hex(16),
            "report_stats": False,
            "enable_metrics": False,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "presence": {"enabled": False},
            "rc_message": _BIG,
            "rc_registration": _BIG,
            "rc_login": {"address": _BIG, "account": _BIG, "failed_attempts": _BIG},
            "rc_joins": {"local": _BIG, "remote": _BIG},
            "rc_joins_per_room": _BIG,
            "rc_invites": {"per_room": _BIG, "per_user": _BIG, "per_issuer": _BIG},
            "rc_admin_redaction": _BIG,
        }
        self.config_path.write_text(_yaml(config))

    def start(self) -> None:
        python = venv_python(self.venv)
        if not self.config_path.exists():
            self.write_config()
            subprocess.run(
                [str(python), "-m", "synapse.app.homeserver", "-c", str(self.config_path), "--generate-keys"],
                check=True,
                capture_output=True,
                cwd=self.dir,
            )
        out = (self.dir / "stdout.log").open("ab")
        self.proc = subprocess.Popen(
            [str(python), "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
        )
        out.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SynapseUnavailable(f"synapse exited with {self.proc.returncode}: {self._log_tail()}")
            try:
                if httpx.get(f"{self.url}/_matrix/client/versions", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SynapseUnavailable(f"synapse did not answer within {START_TIMEOUT_S}s: {self._log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def _log_tail(self) -> str:
        texts = []
        for name in ("stdout.log", "homeserver.log"):
            path = self.dir / name
            if path.exists():
                texts.append(path.read_text(errors="replace")[-1500:])
        return "\n".join(texts)

    # -- client API --------------------------------------------------------------------------
    def register(self, username: str, password: str) -> str:
        """Register through the admin API with the shared-secret HMAC; return the access token."""
        endpoint = f"{self.url}/_synapse/admin/v1/register"
        nonce = httpx.get(endpoint, timeout=10).raise_for_status().json()["nonce"]
        mac = hmac.new(self.shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join([nonce.encode(), username.encode(), password.encode(), b"notadmin"]))
        body = {"nonce": nonce, "username": username, "password": password, "admin": False}
        body["mac"] = mac.hexdigest()
        return str(httpx.post(endpoint, json=body, timeout=30).raise_for_status().json()["access_token"])

    def login(self, username: str, password: str) -> str:
        body = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": username},
            "password": password,
        }
        response = httpx.post(f"{self.url}/_matrix/client/v3/login", json=body, timeout=30)
        return str(response.raise_for_status().json()["access_token"])

    def create_room(self, token: str, name: str = "supervisor") -> str:
        response = httpx.post(
            f"{self.url}/_matrix/client/v3/createRoom",
            json={"preset": "private_chat", "name": name},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        return str(response.raise_for_status().json()["room_id"])

    def messages(self, token: str, room_id: str) -> list[dict[str, Any]]:
        """Every m.room.message of the room, oldest first, paging through ``/messages``."""
        out: list[dict[str, Any]] = []
        params: dict[str, str] = {"dir": "f", "limit": "100"}
        url = f"{self.url}/_matrix/client/v3/rooms/{quote(room_id, safe='')}/messages"
        while True:
            response = httpx.get(url, params=params, headers={"Authorization": f"Bearer {token}"}, timeout=30)
            page = response.raise_for_status().json()
            out.extend(e for e in page.get("chunk", []) if e.get("type") == "m.room.message")
            if not page.get("chunk") or "end" not in page:
                return out
            params["from"] = page["end"]


def _main(argv: list[str]) -> int:
    if argv[:1] == ["install"]:
        print(install())
        return 0
    if len(argv) == 2 and argv[0] == "run":
        install()
        server = SynapseServer(Path(argv[1]).resolve())
        server.start()
        token = server.register("supervisor", "supervisor-password")
        room = server.create_room(token)
        print(f"homeserver={server.url}\nroom_id={room}\nMATRIX_TOKEN={token}", flush=True)
        try:
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        finally:
            server.stop()
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(_main(sys.argv[1:]))
