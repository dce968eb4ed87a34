"""One decode: every photo that is classified or quality-scored is opened as the served step opens it.

The served preprocess step decodes with :func:`fitguard.preprocess.decode_image` (EXIF orientation, mode
conversion, transparency flattened onto white). A loader that opened files its own way would train on a
phone photo lying on its side while the server sees it upright. The first test finds every image opener
in the source; the others send an EXIF-rotated photo through the loaders and through the server.
"""

from __future__ import annotations

import ast
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("fitguard", "client", "export", "training", "scripts", "model_repository")
# The only places that may open image files or bytes themselves, each with its reason.
OPENERS_ALLOWED = {
    "fitguard/preprocess.py": "the served decode itself",
    "fitguard/dali_check.py": "reads the header only, to refuse a bad image before DALI decodes it",
    "training/data/sheets.py": "contact sheets of the data sets for the docs; nothing on them is scored",
}
# EXIF orientation 6: the stored pixels are the upright photo turned a quarter counter-clockwise.
ROTATE_90 = 6


def _openers(path: Path) -> list[int]:
    """Lines of ``Image.open(...)`` and ``*.imread(...)`` calls in one source file."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            owner_name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
            if (node.func.attr == "open" and owner_name == "Image") or node.func.attr == "imread":
                lines.append(node.lineno)
    return lines


def test_only_the_served_decode_opens_photos():
    found: dict[str, list[int]] = {}
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            lines = _openers(path)
            if lines:
                found[path.relative_to(ROOT).as_posix()] = lines
    stray = {p: lines for p, lines in found.items() if p not in OPENERS_ALLOWED}
    assert not stray, f"open photos with fitguard.preprocess.decode_file / decode_rgba instead: {stray}"
    stale = set(OPENERS_ALLOWED) - set(found)
    assert not stale, f"allowed openers that no longer open images: {stale}"


@pytest.fixture(scope="module")
def upright() -> np.ndarray:
    """A photo whose orientation shows: the top half of chelsea, wider than tall and not symmetric."""
    from skimage import data

    return np.ascontiguousarray(data.chelsea()[:200, :320])


def _rotated_png(upright: np.ndarray, *, alpha: bool = False) -> bytes:
    """The photo stored turned, with the EXIF tag that turns it back (PNG: lossless, so pixels compare)."""
    stored = np.ascontiguousarray(np.rot90(upright, k=1))
    img = Image.fromarray(stored)
    if alpha:
        img.putalpha(Image.fromarray(np.full(stored.shape[:2], 200, np.uint8)))
    exif = Image.Exif()
    exif[0x0112] = ROTATE_90
    buf = io.BytesIO()
    img.save(buf, format="PNG", exif=exif.tobytes())
    return buf.getvalue()


def test_the_rotated_photo_is_a_real_fixture(upright):
    """Without EXIF orientation the stored pixels are the turned photo: the loaders have work to do."""
    with Image.open(io.BytesIO(_rotated_png(upright))) as img:
        assert np.asarray(img.convert("RGB")).shape == (320, 200, 3)


def test_scene_and_object_loaders_decode_as_the_server(tmp_path, upright):
    from fitguard.preprocess import decode_image
    from fitguard.training.data import objects, scenes, stamps
    from fitguard.training.data.debian import Package

    data = _rotated_png(upright)
    assert np.array_equal(decode_image(data), upright)
    file = "usr/share/backgrounds/test/Rotated.png"
    (tmp_path / file).parent.mkdir(parents=True)
    (tmp_path / file).write_bytes(data)
    doc = tmp_path / "usr/share/doc/test-backgrounds/copyright"
    doc.parent.mkdir(parents=True)
    doc.write_text("Files: *\nCopyright: nobody\nLicense: public-domain\n")
    images = tmp_path / "images"
    images.mkdir()
    entry = scenes.SceneEntry("test-backgrounds", file, "test")
    scenes._write_scene(entry, Package("test-backgrounds", "1", tmp_path), images)
    assert np.array_equal(scenes._png_loader(images / f"{entry.name}.png")(), upright)
    assert np.array_equal(np.asarray(objects._open_rgb(str(tmp_path / file))), upright)

    stamp = tmp_path / "stamp.png"
    stamp.write_bytes(_rotated_png(upright, alpha=True))
    for rgba in (np.asarray(objects._open_rgba(str(stamp))), np.asarray(stamps.load_rgba(stamp))):
        assert rgba.shape == (*upright.shape[:2], 4)
        assert np.array_equal(rgba[..., :3], upright)
        assert (rgba[..., 3] == 200).all()  # compositing keeps the cut-out's alpha


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.server
def test_the_server_sees_the_rotated_photo_upright(tiny_server, upright):
    """The served answer about the turned file equals the answer about the upright pixels, and differs
    from the answer about the stored pixels read without their orientation."""
    from conftest import infer_ensemble

    from fitguard.contract import FIT_SCORE, TOP5_PROBS

    batch = [_rotated_png(upright), _png(upright), _png(np.rot90(upright))]
    scores = infer_ensemble(tiny_server.http_url, batch)
    for name in (TOP5_PROBS, FIT_SCORE):
        np.testing.assert_array_equal(scores[name][0], scores[name][1])
    assert not np.array_equal(scores[TOP5_PROBS][0], scores[TOP5_PROBS][2])
