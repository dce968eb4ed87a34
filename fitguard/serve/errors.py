"""What can go wrong starting the embedded server, and reading the reasons out of Triton's log."""

from __future__ import annotations

import re


class EmbeddedServerError(RuntimeError):
    """The embedded server could not start or stopped unexpectedly. ``log`` holds the server's output."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


class PortInUseError(EmbeddedServerError):
    """A port the server needs is taken."""


class InvalidRepositoryError(EmbeddedServerError):
    """The model repository is missing or Triton rejected it."""


class ModelLoadError(EmbeddedServerError):
    """One or more models failed to load; ``failures`` maps model name to the reason Triton gave."""

    def __init__(self, failures: dict[str, str], log: str = "") -> None:
        lines = "\n".join(f"  {name}: {reason}" for name, reason in failures.items())
        super().__init__(f"model(s) failed to load:\n{lines}", log)
        self.failures = failures


FAILED_LOAD = re.compile(r"failed to load '(?P<name>[^']+)'(?: version \d+)?: (?P<reason>.*?)\"?$")
POLL_FAILED = re.compile(r"Poll failed for model directory '(?P<name>[^']+)': (?P<reason>.*?)\"?$")
TABLE_ROW = re.compile(r"^\|\s*(?P<name>[^|]+?)\s*\|\s*\d+\s*\|\s*UNAVAILABLE: (?P<reason>.*?)\s*\|$")
PORT_IN_USE = re.compile(r"Socket '([^']*)' already in use|address already in use", re.IGNORECASE)


def short_reason(reason: str) -> str:
    """Triton's reason without the Python traceback the stub appends ("\n\nAt:\n  file(line): ...")."""
    return reason.split("\n\nAt:")[0].strip()


def log_failures(log: str) -> dict[str, str]:
    """Model name -> why it failed to load, from every form Triton reports it in."""
    failures: dict[str, str] = {}
    parse_error = ""
    for line in log.splitlines():
        if line.startswith("[libprotobuf ERROR") and "] " in line:
            parse_error = line.split("] ", 1)[1].strip()  # says where a config.pbtxt is malformed
        m = FAILED_LOAD.search(line) or POLL_FAILED.search(line) or TABLE_ROW.search(line.strip())
        if m:
            reason = short_reason(m.group("reason"))
            if "text proto" in reason and parse_error:
                reason, parse_error = f"{reason}: {parse_error}", ""
            failures.setdefault(m.group("name").strip(), reason)
    return failures


def exit_error(code: int | None, log: str, repository: object) -> EmbeddedServerError:
    """The error to raise for a server that exited during startup, from what its log says."""
    in_use = PORT_IN_USE.search(log)
    if in_use:
        return PortInUseError(
            f"tritonserver could not bind {in_use.group(1) or 'a port'}: already in use", log
        )
    failures = log_failures(log)
    if failures:
        return ModelLoadError(failures, log)
    tail = "\n".join(log.splitlines()[-30:])
    if re.search(r"model[ _]repository", log, re.IGNORECASE) and "failed" in log:
        return InvalidRepositoryError(
            f"tritonserver rejected model repository {repository}; last log lines:\n{tail}", log
        )
    return EmbeddedServerError(
        f"tritonserver exited with code {code} during startup; last log lines:\n{tail}", log
    )
