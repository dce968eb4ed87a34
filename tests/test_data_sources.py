"""The dataset interface over the real sources (tiny folders in their published layouts) and the
accuracy measure against acceptable label sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fitguard.labels import wnid_to_index
from fitguard.training.data import Dataset, Item, group_split, load_dataset
from fitguard.training.data.accuracy import accuracy


def _save(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb[:64, :64]).save(path)


def test_imagenet_folder(tmp_path, photos):
    _save(tmp_path / "n02123045" / "cat.png", photos["chelsea"])
    _save(tmp_path / "n07920052" / "cup.png", photos["coffee"])
    data = load_dataset("imagenet", root=tmp_path)
    labels = {it.name: it.labels for it in data}
    assert labels == {"n02123045/cat": {wnid_to_index()["n02123045"]}, "n07920052/cup": {967}}
    assert all(it.image().shape == (64, 64, 3) and it.source == "imagenet" for it in data)


def test_tid2013_folder(tmp_path, photos):
    for name, photo in (("i01_01_1.bmp", "chelsea"), ("i01_02_1.bmp", "chelsea"), ("i02_01_1.bmp", "coffee")):
        _save(tmp_path / "distorted_images" / name, photos[photo])
    (tmp_path / "mos_with_names.txt").write_text("5.5 i01_01_1.bmp\n3.5 i01_02_1.bmp\n7.0 i02_01_1.bmp\n")
    data = load_dataset("tid2013", root=tmp_path)
    assert [it.score for it in data] == [5.5 / 7, 3.5 / 7, 1.0]
    assert data.groups() == ["i01", "i02"] and all(it.labels is None for it in data)
    train, test = group_split(data, 0.5, seed=0)
    assert {it.group for it in train}.isdisjoint({it.group for it in test})


def test_real_sources_need_a_root():
    with pytest.raises(ValueError, match="root"):
        load_dataset("kadid10k")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("nope")


def test_package_photos():
    data = load_dataset("photos")
    assert len(data) == len(data.groups()) == 10


def test_accuracy_counts_any_acceptable_class():
    def item(name: str, labels: set[int]) -> Item:
        return Item(name, "t", name, frozenset(labels), lambda: np.zeros((1, 1, 3), np.uint8))

    data = Dataset("t", [item("a", {1}), item("b", {2, 3}), item("c", {9})])
    top5 = np.array([[1, 0, 4, 5, 6], [7, 3, 0, 4, 5], [0, 1, 4, 5, 6]])
    result = accuracy(data, top5)
    assert result["top1"] == pytest.approx(1 / 3) and result["top5"] == pytest.approx(2 / 3)
