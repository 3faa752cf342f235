"""Every error the supervisor raises on purpose, with one base that says whether retrying can help.

``permanent`` follows healthchecks' transports: a permanent error will happen again if the same thing is
tried again (bad config, a request the cluster refuses); a transient one may not (a timeout, a busy
controller). Callers decide on ``exc.permanent``, never on the class name.
"""

from __future__ import annotations

from pathlib import Path


class SupervisorError(Exception):
    """Base of the supervisor's own errors."""

    permanent: bool = True

    def __init__(self, message: str, *, permanent: bool | None = None) -> None:
        super().__init__(message)
        if permanent is not None:
            self.permanent = permanent


class UserError(SupervisorError):
    """Something the user asked for cannot be done (unknown run, wrong state). Exit code 2, nothing changed."""


class SpecError(UserError):
    """A spec the user wrote cannot be used. The message is one line naming the file and the field."""

    def __init__(self, path: Path | str, field: str, problem: str) -> None:
        self.path, self.field, self.problem = str(path), field, problem
        where = f"{self.path}: {field}: " if field else f"{self.path}: "
        super().__init__(where + problem)


class SignatureError(SupervisorError, ValueError):
    """A signature entry is invalid. The message names the source, the entry and the field."""


class NotifyConfigError(SupervisorError, ValueError):
    """A channel cannot be built (missing variable or file). The message names it, never its value."""


class ClusterError(SupervisorError):
    """The cluster could not answer or refused."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message, permanent=permanent)


class NotifyError(SupervisorError):
    """A channel refused or could not be reached; ``retry_after`` is the wait it asked for, in seconds."""

    def __init__(self, message: str, *, permanent: bool, retry_after: float | None = None) -> None:
        super().__init__(message, permanent=permanent)
        self.retry_after = retry_after


class StageError(SupervisorError):
    """A stage cannot be started as configured (permanent unless flagged otherwise)."""


class AxolotlConfigError(StageError):
    """An axolotl config the pipeline cannot work with. Permanent: resubmitting will not help."""

    def __init__(self, path: Path, field: str, expected: str) -> None:
        super().__init__(f"{path}: {field}: expected {expected}")
        self.path = path
        self.field = field
        self.expected = expected


class CheckpointError(SupervisorError):
    """A checkpoint or model file that cannot be read as expected."""


class TransferError(SupervisorError):
    """rsync failed; ``exit_code`` is rsync's own."""

    def __init__(self, message: str, *, permanent: bool, exit_code: int | None = None) -> None:
        super().__init__(message, permanent=permanent)
        self.exit_code = exit_code


class AlreadyRunning(SupervisorError):
    """Another daemon holds this state directory's instance lock."""

    def __init__(self, lock_path: Path, holder: str) -> None:
        super().__init__(f"another supervisor holds {lock_path} (pid {holder or '?'}); one daemon per state directory")
        self.lock_path = lock_path
