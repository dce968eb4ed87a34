"""A team's labelled photos (``--labelled``): read as folders or a labels file, refused in one line when
they cannot fit and hold out a detector, and a team classifier's detector fitted on them end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from fitguard.training.data.labelled import MIN_GROUPS, LabelledError, labelled_digest, load_labelled  # noqa: E402

CLASSES = ("cat", "astronaut", "coffee cup")


def write_photos(root: Path, photos: dict[str, np.ndarray], per_class: int = 3) -> Path:
    """``root/<class>/<i>.jpg``: crops of one package photo per class, each crop a group of its own."""
    for (_, rgb), name in zip(sorted(photos.items()), CLASSES, strict=False):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        h, w = rgb.shape[:2]
        for i in range(per_class):
            top, left = i * h // 10, i * w // 10
            Image.fromarray(rgb[top : top + h * 3 // 4, left : left + w * 3 // 4]).save(folder / f"{i}.jpg")
    return root


def test_folders_and_a_labels_file_give_the_same_items(tmp_path: Path, photos) -> None:
    root = write_photos(tmp_path / "photos", photos)
    by_folder = load_labelled(root, CLASSES)
    assert len(by_folder) == 9 and by_folder.classes() == {0, 1, 2}
    assert {it.meta["class"] for it in by_folder if it.labels == frozenset({2})} == {"coffee cup"}
    lines = [f"{it.name}\t{it.meta['class']}\tsame-{i // 2}" for i, it in enumerate(by_folder)]
    (root / "labels.txt").write_text("# a comment\n" + "\n".join(lines) + "\n", encoding="utf-8")
    by_file = load_labelled(root / "labels.txt", CLASSES)
    assert [it.labels for it in by_file] == [it.labels for it in by_folder]
    assert len(by_file.groups()) == 5  # the group column keeps photos of one group together
    assert by_file[0].image().shape == by_folder[0].image().shape
    before = labelled_digest(by_folder)
    Image.fromarray(photos["coffee"][:300, :300]).save(root / "cat" / "0.jpg")
    assert labelled_digest(load_labelled(root, CLASSES)) != before


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown folder", "folder 'dog' is not a class of the classes file"),
        ("empty class", "no photos of class 'coffee cup'"),
        ("too small", f"3 photo group(s); holding out needs at least {MIN_GROUPS}"),
        ("loose photo", "not in a class folder"),
    ],
)
def test_a_set_that_cannot_fit_and_hold_out_is_one_line(
    tmp_path: Path, photos, case: str, message: str
) -> None:
    root = write_photos(tmp_path / "photos", photos, per_class=1 if case == "too small" else 2)
    if case == "unknown folder":
        (root / "cat").rename(root / "dog")
    elif case == "empty class":
        for f in (root / "coffee cup").iterdir():
            f.unlink()
    elif case == "loose photo":
        Image.fromarray(photos["coffee"]).save(root / "loose.jpg")
    with pytest.raises(LabelledError) as info:
        load_labelled(root, CLASSES)
    assert message in str(info.value) and "\n" not in str(info.value)
