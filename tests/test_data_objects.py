"""The objects set: photograph rule, WordNet labels, composites, counts (real package files)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fitguard.cli import main
from fitguard.training.data import composite as comp
from fitguard.training.data import fetch_package, group_split, load_dataset
from fitguard.training.data.stamps import STAMP_DIR, STAMP_PACKAGE, flat_fraction, read_stamp
from fitguard.training.data.wordnet_labels import MAX_CLASSES, ImageNetWordNet, read_overrides, terms

PHOTOGRAPHS = (
    "animals/mammals/cats/tiger",
    "hobbies/music/string/cello",
    "food/vegetables/broccoli",
    "animals/mammals/rhino_black",  # few colours, still camera texture
    "plants/flowers/flower7",  # a photograph stored with a 256-colour palette
)
DRAWINGS = (
    "food/fruit/cartoon/apple",  # the package's own cartoon/ folder
    "clothes/t_shirt",  # flat shading outside any cartoon/ folder
    "clothes/hats/tophat",
    "food/pizza",
    "medical/tooth",
)


@pytest.fixture(scope="session")
def stamp_package():
    return fetch_package(STAMP_PACKAGE)


@pytest.fixture(scope="session")
def objects():
    return load_dataset("objects")


@pytest.fixture(scope="session")
def wordnet():
    return ImageNetWordNet()


@pytest.mark.parametrize("stamp_id", PHOTOGRAPHS)
def test_photograph_rule_keeps_photographs(stamp_package, stamp_id):
    stamp = read_stamp(stamp_package.root, stamp_package.root / STAMP_DIR / f"{stamp_id}.png")
    assert stamp.photograph, stamp


@pytest.mark.parametrize("stamp_id", DRAWINGS)
def test_photograph_rule_drops_drawings(stamp_package, stamp_id):
    stamp = read_stamp(stamp_package.root, stamp_package.root / STAMP_DIR / f"{stamp_id}.png")
    assert not stamp.photograph, stamp


def test_flat_fraction_of_flat_and_noisy_images():
    flat = np.zeros((40, 40, 4), np.uint8)
    flat[..., 0], flat[..., 3] = 200, 255
    noisy = np.random.default_rng(0).integers(0, 256, (40, 40, 4), dtype=np.uint8)
    noisy[..., 3] = 255
    assert flat_fraction(flat) == 1.0 and flat_fraction(noisy) < 0.01


def test_wordnet_known_names(wordnet):
    assert wordnet.lookup("tiger") == ("tiger.n.02", frozenset({292}))  # sense 1 is a fierce person
    name, dogs = wordnet.lookup("dog")
    assert name == "dog.n.01" and dogs == frozenset(range(151, 269))  # the 118 dog classes
    assert wordnet.lookup("penguin")[1] == frozenset({145})  # king penguin
    assert wordnet.lookup("woodlouse")[1] == frozenset({126})  # nearest class above: isopod
    assert wordnet.lookup("giraffe") is None  # a name with no ImageNet class
    assert len(wordnet.lookup("animal")[1]) > MAX_CLASSES


def test_stamp_mapping_rules(wordnet):
    assert wordnet.map_stamp("x/tiger_sumatran", "A Sumatran tiger.", {}).classes == {292}
    broad = wordnet.map_stamp("x/animal", "An animal.", {})
    assert not broad.kept and broad.how.startswith("too broad")
    assert not wordnet.map_stamp("space/planets/3_earth", "The Earth. Our planet!", {}).kept
    rooster = wordnet.map_stamp("animals/birds/rooster", "A colorful rooster.")
    assert rooster.how == "override" and rooster.classes == {7}
    assert terms("A head of lettuce.", "x") == ["lettuce"]
    assert terms("Venus—the second planet in the solar system.", "x") == ["venus"]


def test_override_table_is_valid(wordnet):
    overrides = read_overrides()
    assert len(overrides) <= 60
    for stamp, (synsets, reason) in overrides.items():
        assert reason.strip(), stamp
        for name in synsets:
            assert wordnet.classes(wordnet.wn.synset(name)), (stamp, name)


def test_composite_edge_is_clean_and_deterministic():
    """A red disc with a soft edge on a grey scene: outside pixels stay exactly grey, edge pixels are
    mixes of red and grey (premultiplied resizing: no dark fringe), same spec gives the same bytes."""
    yy, xx = np.mgrid[:300, :300]
    alpha = np.clip(140 - np.hypot(yy - 150, xx - 150), 0, 20) / 20 * 255
    stamp = np.zeros((300, 300, 4), np.uint8)
    stamp[..., 0], stamp[..., 3] = np.where(alpha > 0, 255, 0), alpha.astype(np.uint8)  # black outside
    scene = Image.new("RGB", (800, 600), (90, 90, 90))
    spec = comp.draw_specs("disc", {"grey": (800, 600)}, count=1, seed=5)[0]
    out = comp.composite(Image.fromarray(stamp, "RGBA"), scene, spec)
    assert out.shape == (comp.SIZE, comp.SIZE, 3)
    r, g, b = (out[..., i].astype(float) for i in range(3))
    assert np.abs(g - b).max() <= 1
    # each pixel is grey + a * (red - grey) for one a in [0, 1]: red follows from green exactly
    assert np.abs(r - (90 + (90 - g) * (255 - 90) / 90)).max() <= 2
    assert (out == 90).all(axis=-1).mean() > 0.2  # the scene's exact values where the stamp is clear
    assert np.array_equal(out, comp.composite(Image.fromarray(stamp, "RGBA"), scene, spec))
    assert comp.draw_specs("disc", {"grey": (800, 600)}, 1, seed=5) == [spec]
    assert comp.draw_specs("disc", {"grey": (800, 600)}, 1, seed=6) != [spec]


def test_object_size_follows_cover():
    assert comp.object_size((100, 100), 0.5) == (round(320 * 0.5**0.5),) * 2
    w, h = comp.object_size((400, 100), 0.75)  # elongated: capped to stay in the frame
    assert w == round(comp.MAX_EXTENT * comp.SIZE) and h == round(w / 4)


@pytest.mark.slow
def test_objects_set(objects):
    assert objects.provenance["stamps"] >= 150 and len(objects.classes()) >= 100
    by_stamp: dict[str, frozenset] = {}
    for item in objects:
        assert item.labels and by_stamp.setdefault(item.group, item.labels) == item.labels
        assert item.meta["licence"].startswith("License: GPL") and item.meta["version"]
        assert item.meta["spec"]["cover"] in comp.COVERS
    first = objects[0]
    assert np.array_equal(first.image(), first.image())  # regenerated, same bytes


@pytest.mark.slow
def test_splits_hold_out_whole_stamps_and_scenes(objects):
    train, test = group_split(objects, 0.2, seed=1)
    assert not {it.meta["stamp"] for it in train} & {it.meta["stamp"] for it in test}
    composites = load_dataset("composites")
    train, test = group_split(composites, 0.2, seed=1)
    assert not {it.meta["scene"] for it in train} & {it.meta["scene"] for it in test}
    assert len(composites.groups()) >= 20


@pytest.mark.slow
def test_describe_json_done_counts(capsys):
    assert main(["data", "describe", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["objects"]["stamps"] >= 150 and described["objects"]["classes"] >= 100
    assert described["scenes"]["images"] >= 30
    assert described["objects"]["packages"]["tuxpaint-stamps-default"]
