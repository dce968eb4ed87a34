"""``fitguard classify``: the command a new user runs, against the real embedded server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fitguard.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_folder(root: Path, photos: dict[str, np.ndarray]) -> tuple[list[Path], Path]:
    """A folder as users have them: JPEG and PNG in subfolders, a corrupt file, a text file to ignore."""
    good = []
    for i, (name, rgb) in enumerate(sorted(photos.items())):
        sub = root / ("holiday" if i % 2 else "pets") / f"{name}.{'png' if i % 2 else 'jpg'}"
        sub.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(sub)
        good.append(sub)
    bad = root / "pets" / "truncated.jpg"
    bad.write_bytes(good[0].read_bytes()[:200] if good[0].suffix == ".jpg" else b"\xff\xd8\xff not a jpeg")
    (root / "README.txt").write_text("not an image")
    return sorted(good), bad


def test_server_down_fails_fast_with_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    start = time.monotonic()
    code = main(["classify", "--url", f"127.0.0.1:{free_port()}", "--retries", "2", str(image)])
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 2
    assert "ServerUnavailable" in err and "127.0.0.1" in err
    assert elapsed < 5


def test_no_images_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("x")
    assert main(["classify", str(tmp_path)]) == 2
    assert "no image files" in capsys.readouterr().err


@pytest.mark.server
def test_classify_folder_table(
    tiny_server, tmp_path: Path, photos: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = write_folder(tmp_path, photos)
    code = main(
        ["classify", "--url", tiny_server.grpc_url, "--batch-size", "2", "--concurrency", "2", str(tmp_path)]
    )
    out, err = capsys.readouterr()
    assert code == 1  # one file failed
    lines = out.splitlines()
    assert lines[0].split() == ["file", "label", "confidence", "quality", "fit", "score"]
    for path in good:
        assert any(line.startswith(str(path)) for line in lines[2:]), path
    assert str(bad) not in out and "README" not in out
    assert "1 of 5 image(s) failed" in err and str(bad) in err


@pytest.mark.server
def test_classify_json_over_http_as_a_subprocess(
    tiny_server, tmp_path: Path, photos: dict[str, np.ndarray]
) -> None:
    good, bad = write_folder(tmp_path, photos)
    cmd = [
        sys.executable,
        "-m",
        "fitguard.cli",
        "classify",
        "--protocol",
        "http",
        "--url",
        tiny_server.http_url,
    ]
    out = subprocess.run([*cmd, "--json", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["source"] for r in rows] == sorted(str(p) for p in [*good, bad])
    by_source = {r["source"]: r for r in rows}
    assert by_source[str(bad)]["error"] == "BadImage" and by_source[str(bad)]["reason"]
    for path in good:
        r = by_source[str(path)]
        assert (
            r["class_id"] == r["top5"][0]["class_id"] and len(r["top5"]) == 5 and isinstance(r["fit"], bool)
        )
        assert r["fit"] == (r["fit_score"] >= 0)
        assert r["quality_range"] == [0.0, 1.0] and r["model_version"]
    assert str(bad) in out.stderr

    # Only good files: exit code 0.
    ok = subprocess.run([*cmd, "--json", *map(str, good)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert len(ok.stdout.splitlines()) == len(good)
