"""The objects set: photographed tuxpaint stamps, labelled through WordNet, composited onto scenes.

Preparing it measures every stamp (:mod:`.stamps`), maps the photographs' names to ImageNet classes
(:mod:`.wordnet_labels`), stores each kept stamp shrunk to at most :data:`STAMP_SIDE` px (RGBA PNG)
and draws :data:`PER_STAMP` composite specs per stamp on the Debian scenes (:mod:`.composite`). The
composites themselves are made when an item's image is asked for (milliseconds each), so the cache
holds stamps and recipes, not hundreds of derived images. The folder is keyed by the package
versions, the override table and this recipe.
"""

from __future__ import annotations

import hashlib
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from fitguard.preprocess import decode_file, decode_rgba
from fitguard.training.data import composite as comp
from fitguard.training.data import stamps as st
from fitguard.training.data import wordnet_labels as wl
from fitguard.training.data.debian import default_data_dir, fetch_package
from fitguard.training.data.items import (
    Dataset,
    Item,
    read_folder_manifest,
    recipe_key,
    write_folder_manifest,
)
from fitguard.training.data.scenes import SCENE_PACKAGES, prepare_scenes

RECIPE = "objects/1"
STAMP_SIDE = 512
PER_STAMP = len(comp.COVERS)
SEED = 0


def _file_name(stamp_id: str) -> str:
    return stamp_id.replace("/", "__") + ".png"


def _recipe(version: str, scenes_folder: Path) -> list:
    overrides = hashlib.sha256(wl.OVERRIDES.read_bytes()).hexdigest()[:12]
    return [
        RECIPE,
        version,
        st.FLAT_MAX,
        st.STAT_SIDE,
        wl.MAX_CLASSES,
        overrides,
        STAMP_SIDE,
        PER_STAMP,
        SEED,
        comp.SIZE,
        comp.COVERS,
        comp.MAX_EXTENT,
        comp.CROP_RANGE,
        scenes_folder.name,
    ]


def prepare_objects(data_dir: str | Path | None = None, workers: int = 2) -> Path:
    """The prepared objects folder (``stamps/*.png`` + ``manifest.json``), made if absent."""
    base = Path(data_dir) if data_dir is not None else default_data_dir()
    pkg = fetch_package(st.STAMP_PACKAGE, base)
    scenes_folder = prepare_scenes(base)
    key = recipe_key(*_recipe(pkg.version, scenes_folder))
    folder = base / "sets" / f"objects-{key}"
    if read_folder_manifest(folder) is not None:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "stamps").mkdir(parents=True)
    scene_manifest = read_folder_manifest(scenes_folder) or {}
    backgrounds = {
        r["name"]: tuple(r["size"]) for r in scene_manifest["entries"] if r["package"] in SCENE_PACKAGES
    }
    mapper, overrides = wl.ImageNetWordNet(), wl.read_overrides()
    records = []
    for stamp in st.list_stamps(pkg.root, workers=workers):
        record = {
            "id": stamp.id,
            "file": stamp.file,
            "description": stamp.description,
            "flat": round(stamp.flat, 4),
            "photograph": stamp.photograph,
        }
        if stamp.id.endswith("_mirror"):
            record["dropped"] = "mirror image of another stamp"
        elif not stamp.photograph:
            record["dropped"] = "drawing"
        else:
            m = mapper.map_stamp(stamp.id, stamp.description, overrides)
            record |= {"term": m.term, "synsets": list(m.synsets), "labels": sorted(m.classes), "how": m.how}
            if not m.kept:
                record["dropped"] = m.how
        if "dropped" not in record:
            st.load_rgba(pkg.root / stamp.file, STAMP_SIDE).save(folder / "stamps" / _file_name(stamp.id))
            record["licence"] = pkg.licence(stamp.file)
            record["composites"] = [
                s.to_dict() for s in comp.draw_specs(stamp.id, backgrounds, PER_STAMP, SEED)
            ]
        records.append(record)
    write_folder_manifest(
        folder,
        {
            "set": "objects",
            "recipe": RECIPE,
            "key": key,
            "package": pkg.name,
            "version": pkg.version,
            "scenes": scenes_folder.name,
            "packages": {pkg.name: pkg.version, **scene_manifest["packages"]},
            "stamps": records,
        },
    )
    return folder


@lru_cache(maxsize=64)
def _open_rgb(path: str) -> Image.Image:
    return Image.fromarray(decode_file(path))


@lru_cache(maxsize=256)
def _open_rgba(path: str) -> Image.Image:
    return decode_rgba(Path(path).read_bytes())


def _composite_loader(stamp_path: Path, scene_path: Path, spec: comp.CompositeSpec):
    def load() -> np.ndarray:
        return comp.composite(_open_rgba(str(stamp_path)), _open_rgb(str(scene_path)), spec)

    return load


def stamp_image(item: Item) -> Image.Image:
    """The cut-out photograph (RGBA) behind an object item, to show it on other backgrounds."""
    return _open_rgba(item.meta["stamp_png"]).copy()


def load_objects(data_dir: str | Path | None = None, group_by: str = "stamp") -> Dataset:
    """The object composites: labels = the stamp's ImageNet classes; group = the stamp (``objects``)
    or the background scene (``composites``, for quality references)."""
    if group_by not in ("stamp", "scene"):
        raise ValueError(f"group_by must be 'stamp' or 'scene', got {group_by!r}")
    folder = prepare_objects(data_dir)
    manifest = read_folder_manifest(folder)
    assert manifest is not None
    scenes_dir = folder.parent / manifest["scenes"] / "images"
    name = "objects" if group_by == "stamp" else "composites"
    items = []
    for r in manifest["stamps"]:
        for k, spec_dict in enumerate(r.get("composites", [])):
            spec = comp.CompositeSpec(**{**spec_dict, "crop": tuple(spec_dict["crop"])})
            meta = {
                "stamp": r["id"],
                "stamp_png": str(folder / "stamps" / _file_name(r["id"])),
                "scene": spec.scene,
                "spec": spec_dict,
                "package": manifest["package"],
                "version": manifest["version"],
                "file": r["file"],
                "licence": r["licence"],
            }
            items.append(
                Item(
                    name=f"{r['id']}#{k}",
                    source=name,
                    group=r["id"] if group_by == "stamp" else spec.scene,
                    labels=frozenset(r["labels"]),
                    meta=meta,
                    load=_composite_loader(
                        folder / "stamps" / _file_name(r["id"]), scenes_dir / f"{spec.scene}.png", spec
                    ),
                )
            )
    provenance = {
        "folder": str(folder),
        "recipe": manifest["recipe"],
        "packages": manifest["packages"],
        "stamps": sum(1 for r in manifest["stamps"] if "composites" in r),
    }
    return Dataset(name, items, provenance)
