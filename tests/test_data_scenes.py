"""Offline data from Debian packages: fetching, licences, the scenes set, group-respecting splits.

The session fixture fetches and prepares the sets once (cached in the data cache across runs).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fitguard.cli import main
from fitguard.training.data import (
    PackageFetchError,
    fetch_package,
    group_folds,
    group_split,
    load_dataset,
)
from fitguard.training.data.debian import licence_line
from fitguard.training.data.scenes import MAX_SIDE, SCENE_PACKAGES, read_scene_list


@pytest.fixture(scope="session")
def scenes():
    return load_dataset("scenes")


def test_missing_package_error_names_it(tmp_path):
    with pytest.raises(PackageFetchError, match="fitguard-no-such-package"):
        fetch_package("fitguard-no-such-package", tmp_path)
    assert not (tmp_path / "packages" / "fitguard-no-such-package").exists()


def test_missing_package_error_from_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("fitguard.training.data.scenes.SCENE_PACKAGES", ("fitguard-no-such-package",))
    assert main(["data", "prepare", "--data-dir", str(tmp_path)]) == 2
    assert "fitguard-no-such-package" in capsys.readouterr().err


def test_licence_line_follows_dep5_last_match():
    text = (
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
        "Files: *\nCopyright: 2014 Group\nLicense: GPL-2+\n\n"
        "Files: nature/Aqua.jpg\n nature/Garden.jpg\nCopyright: 2008, Someone\nLicense: CC-BY-SA-4.0\n\n"
        "Files: debian/*\nCopyright: 2020 Packager\nLicense: GPL-3\n"
    )
    assert licence_line(text, "usr/share/backgrounds/mate/nature/Garden.jpg") == (
        "License: CC-BY-SA-4.0; Copyright: 2008, Someone"
    )
    assert licence_line(text, "usr/share/wallpapers/Kite/2560x1600.jpg").startswith("License: GPL-2+")


def test_scene_list_has_a_reason_per_entry_and_one_file_per_wallpaper():
    entries = read_scene_list()
    assert all(e.reason.startswith("photograph") for e in entries)
    assert len({e.name for e in entries}) == len(entries)
    assert {e.package for e in entries} <= set(SCENE_PACKAGES)


@pytest.mark.slow
def test_scenes_set(scenes):
    assert len(scenes) >= 30 and len(scenes.groups()) == len(scenes)
    assert scenes.provenance["packages"]["plasma-workspace-wallpapers"]
    for item in scenes:
        rgb = item.image()
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        assert max(rgb.shape[:2]) <= MAX_SIDE
        assert item.meta["licence"].startswith("License: ") and item.meta["version"]
        assert item.labels is None and item.source == "scenes"


@pytest.mark.slow
def test_describe_json_counts(capsys):
    assert main(["data", "describe", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["scenes"]["images"] >= 30 and described["scenes"]["groups"] >= 30


@pytest.mark.slow
def test_group_split_keeps_groups_whole(scenes):
    train, test = group_split(scenes, test_fraction=0.25, seed=3)
    assert train and test and len(train) + len(test) == len(scenes)
    assert not {it.group for it in train} & {it.group for it in test}
    assert [it.name for it in group_split(scenes, 0.25, seed=3)[1]] == [it.name for it in test]
    folds = group_folds(scenes, folds=5, seed=0)
    held = [it.group for _, test in folds for it in test]
    assert sorted(held) == sorted(it.group for it in scenes)  # each group held out exactly once
    for train, test in folds:
        assert not {it.group for it in train} & {it.group for it in test}
