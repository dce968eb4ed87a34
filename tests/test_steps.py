"""What the served Python steps share (fitguard.steps) and the one config writer (fitguard.repository),
without a server: pb_utils is faked."""

from __future__ import annotations

from pathlib import Path

from fitguard import contract as c
from fitguard.export.repository import SOURCE
from fitguard.monitoring import REASON_BAD_IMAGE, REFUSALS
from fitguard.parameters import MONITORING, Parameters
from fitguard.repository import config_comments, config_path, config_text, read_config, write_config
from fitguard.steps import (
    bad_image_counter,
    bad_image_response,
    error_response,
    failure_response,
    overload_response,
)


class _Error:
    INVALID_ARG, UNAVAILABLE = "invalid-arg", "unavailable"

    def __init__(self, message: str, code: str | None = None) -> None:
        self.message, self.code = message, code


class _OldError:  # a Python backend from before Triton's error codes
    def __init__(self, message: str) -> None:
        self.message, self.code = message, None


class _Response:
    def __init__(self, error: _Error) -> None:
        self.error = error


class _Metric:
    def __init__(self, labels: dict) -> None:
        self.labels, self.value = labels, 0

    def increment(self, n: int) -> None:
        self.value += n


class _Family:
    COUNTER = "counter"

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name = name

    def Metric(self, labels: dict) -> _Metric:  # noqa: N802 - Triton's name
        return _Metric(labels)


class _PbUtils:
    TritonError, InferenceResponse, MetricFamily = _Error, _Response, _Family


class _OldPbUtils(_PbUtils):
    TritonError = _OldError


def test_each_refusal_gets_its_code_and_the_message_unchanged() -> None:
    bad, full = bad_image_response(_PbUtils, "bad image: x"), overload_response(_PbUtils, "overloaded")
    assert (bad.error.message, bad.error.code) == ("bad image: x", _Error.INVALID_ARG)
    assert (full.error.message, full.error.code) == ("overloaded", _Error.UNAVAILABLE)
    failed = failure_response(_PbUtils, c.PREPROCESS, KeyError("k"))
    assert (failed.error.message, failed.error.code) == ("preprocess failed: KeyError: 'k'", None)
    old = bad_image_response(_OldPbUtils, "bad image: x")  # the code is left out, the answer still goes
    assert (old.error.message, old.error.code) == ("bad image: x", None)
    assert error_response(_PbUtils, "m", "NO_SUCH_CODE").error.code is None


def test_the_bad_image_counter_follows_the_monitoring_parameter() -> None:
    args = {"model_version": 3}
    assert bad_image_counter(_PbUtils, args, Parameters({})) is None
    assert bad_image_counter(_PbUtils, args, Parameters({MONITORING: "false"})) is None
    counter = bad_image_counter(_PbUtils, args, Parameters({MONITORING: "true"}))
    assert counter is not None and counter._family.name == REFUSALS
    counter.add(2)
    assert counter._metric.labels == {"reason": REASON_BAD_IMAGE, "version": "3"}
    assert counter._metric.value == 2


def test_a_written_config_parses_back_and_keeps_its_comments(tmp_path: Path) -> None:
    config = read_config(config_path(SOURCE, c.DETECTOR))
    path = tmp_path / "config.pbtxt"
    write_config(path, config, ["first", "second: with `code`"])
    assert path.read_text(encoding="utf-8").startswith("# first\n# second: with `code`\nname: ")
    assert read_config(path) == config and config_comments(path) == ["first", "second: with `code`"]
    assert config_text(config, config_comments(path)) == path.read_text(encoding="utf-8")
