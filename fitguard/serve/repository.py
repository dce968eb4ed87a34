"""Triton's model repository API over HTTP, as the embedded server and its supervisor use it.

In explicit model control mode anyone who reaches the HTTP or gRPC port could load a model through this API
(with its files in the request, which for a Python model is code). The embedded server therefore restricts
the ``model-repository`` API to requests that carry :data:`KEY_HEADER` with a key that only this process
knows; clients keep inference, health, metadata and config.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Callable

KEY_HEADER = "fitguard-repository-key"
RESTRICTED = "model-repository"


def new_key() -> str:
    return secrets.token_hex(16)


def restriction_args(key: str) -> tuple[str, str]:
    """The ``tritonserver`` flags that lock the repository API behind ``key`` on HTTP and gRPC."""
    rule = f"{RESTRICTED}:{KEY_HEADER}={key}"
    return (f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}")


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status of a GET of ``url``; None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (OSError, ValueError):
        return None


def index_failures(index: list[dict], shorten: Callable[[str], str]) -> dict[str, str] | None:
    """Models of the index that failed to load, with Triton's reason; None while some still (un)load."""
    if any(entry.get("state") in ("LOADING", "UNLOADING") for entry in index):
        return None
    return {
        entry["name"]: shorten(entry["reason"])
        for entry in index
        if entry.get("state") == "UNAVAILABLE" and entry.get("reason")
    }


class RepositoryError(RuntimeError):
    """Triton refused or failed a load or unload."""


class RepositoryApi:
    """``index``, ``load`` and ``unload`` of the server at ``http_url`` (``host:port``)."""

    def __init__(self, http_url: str, key: str | None = None) -> None:
        self.http_url = http_url
        self.key = key

    def _post(self, path: str, timeout: float) -> bytes:
        headers = {KEY_HEADER: self.key} if self.key else {}
        req = urllib.request.Request(
            f"http://{self.http_url}/v2/repository{path}", data=b"{}", method="POST", headers=headers
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()

    def index(self, timeout: float = 5.0) -> list[dict]:
        """Per model its ``name``, ``version``, ``state`` and ``reason``."""
        return list(json.loads(self._post("/index", timeout)))

    def _control(self, action: str, model: str, timeout: float) -> None:
        try:
            self._post(f"/models/{model}/{action}", timeout)
        except urllib.error.HTTPError as e:
            raise RepositoryError(f"{action} {model}: [{e.code}] {e.read().decode(errors='replace')}") from e
        except OSError as e:
            raise RepositoryError(f"{action} {model}: {e}") from e

    def unload(self, model: str, timeout: float = 10.0) -> None:
        """Ask Triton to unload ``model`` (it answers at once; the unload finishes in the background)."""
        self._control("unload", model, timeout)

    def load(self, model: str, timeout: float = 60.0) -> None:
        """Load ``model`` and return once it is ready (after a pending unload of it has finished)."""
        self._control("load", model, timeout)
