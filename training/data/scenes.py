"""Natural scenes: the photographs among three Debian wallpaper packages, plus the package photos.

The kept files are listed in ``scenes.tsv`` with a reason each (everything else in those packages is
rendered art). Each is downscaled (area-averaging, so a pristine photo stays pristine) until its longer
side is at most :data:`MAX_SIDE` and stored losslessly (PNG) in a folder keyed by the package
versions and this recipe. The photos shipped with scikit-image and scikit-learn
(:data:`fitguard.photos.PACKAGE_PHOTOS`) join them, so the set holds every scene the
project trains quality on. One scene is one group.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image

from fitguard.preprocess import decode_file
from fitguard.training.data.debian import Package, default_data_dir, fetch_package
from fitguard.training.data.items import (
    Dataset,
    Item,
    read_folder_manifest,
    recipe_key,
    write_folder_manifest,
)

SCENE_LIST = Path(__file__).with_name("scenes.tsv")
SCENE_PACKAGES: tuple[str, ...] = ("mate-backgrounds", "plasma-workspace-wallpapers", "ukui-wallpapers")
SHORT_NAMES = {"mate-backgrounds": "mate", "plasma-workspace-wallpapers": "plasma", "ukui-wallpapers": "ukui"}
MAX_SIDE = 1024
RECIPE = "scenes/2"  # 2: decoded as the server decodes (fitguard.preprocess.decode_file)


@dataclass(frozen=True)
class SceneEntry:
    package: str
    file: str
    reason: str

    @property
    def name(self) -> str:
        """``mate-Aqua``, ``plasma-BytheWater`` (plasma's name is the wallpaper's folder)."""
        parts = Path(self.file).parts
        stem = parts[parts.index("wallpapers") + 1] if "wallpapers" in parts else Path(self.file).stem
        return f"{SHORT_NAMES.get(self.package, self.package)}-{stem}"


def read_scene_list(path: Path = SCENE_LIST) -> list[SceneEntry]:
    rows = csv.reader(
        (line for line in path.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")),
        delimiter="\t",
    )
    entries = [SceneEntry(*row) for row in rows]
    bad = [e for e in entries if e.package not in SCENE_PACKAGES or not e.reason.strip()]
    if bad:
        raise ValueError(f"{path}: entries need a known package and a reason: {bad}")
    return entries


def downscale(img: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """The image with its longer side at most ``max_side`` (antialiased; never upscaled)."""
    scale = max_side / max(img.size)
    if scale >= 1.0:
        return img.convert("RGB")
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.convert("RGB").resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _photo_provenance(name: str) -> dict[str, str]:
    from fitguard.photos import SKIMAGE_PHOTOS

    dist = "scikit-image" if name in SKIMAGE_PHOTOS else "scikit-learn"
    meta = metadata.metadata(dist)
    licence = meta.get("License-Expression") or meta.get("License") or "see the package"
    return {
        "package": dist,
        "version": metadata.version(dist),
        "file": f"skimage.data.{name}" if dist == "scikit-image" else f"sklearn sample image {name}.jpg",
        "licence": f"License: {licence.splitlines()[0]} (package); sample image as distributed with it",
    }


def _write_scene(entry: SceneEntry, pkg: Package, images: Path) -> dict[str, object]:
    """One wallpaper, downscaled into ``images``; returns its manifest record."""
    small = downscale(Image.fromarray(decode_file(pkg.root / entry.file)))
    small.save(images / f"{entry.name}.png", optimize=False, compress_level=1)
    return {
        "name": entry.name,
        "package": pkg.name,
        "version": pkg.version,
        "file": entry.file,
        "licence": pkg.licence(entry.file),
        "reason": entry.reason,
        "size": list(small.size),
    }


def _write_photo(name: str, rgb: np.ndarray, images: Path) -> dict[str, object]:
    """One package photo, downscaled into ``images``; returns its manifest record."""
    small = downscale(Image.fromarray(rgb))
    small.save(images / f"photo-{name}.png", compress_level=1)
    return {
        "name": f"photo-{name}",
        **_photo_provenance(name),
        "size": list(small.size),
        "reason": "package photo (fitguard.photos.PACKAGE_PHOTOS)",
    }


def prepare_scenes(data_dir: str | Path | None = None) -> Path:
    """The prepared scenes folder (``images/*.png`` + ``manifest.json``), made if absent."""
    from fitguard.photos import PACKAGE_PHOTOS, package_photos

    base = Path(data_dir) if data_dir is not None else default_data_dir()
    packages = {name: fetch_package(name, base) for name in SCENE_PACKAGES}
    entries = read_scene_list()
    photo_versions = {d: metadata.version(d) for d in ("scikit-image", "scikit-learn")}
    key = recipe_key(
        RECIPE,
        MAX_SIDE,
        {n: p.version for n, p in packages.items()},
        photo_versions,
        [(e.package, e.file) for e in entries],
        PACKAGE_PHOTOS,
    )
    folder = base / "sets" / f"scenes-{key}"
    if read_folder_manifest(folder) is not None:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "images").mkdir(parents=True)
    records = [_write_scene(entry, packages[entry.package], folder / "images") for entry in entries]
    records += [_write_photo(name, rgb, folder / "images") for name, rgb in package_photos().items()]
    write_folder_manifest(
        folder,
        {
            "set": "scenes",
            "recipe": RECIPE,
            "key": key,
            "max_side": MAX_SIDE,
            "packages": {n: p.version for n, p in packages.items()} | photo_versions,
            "entries": records,
        },
    )
    return folder


def _png_loader(path: Path):
    def load() -> np.ndarray:
        return decode_file(path)

    return load


def load_scenes(data_dir: str | Path | None = None, debian_only: bool = False) -> Dataset:
    """The scenes set: one item per scene, group = scene name, no class labels.

    ``debian_only`` leaves out the package photos (the backgrounds of the object composites).
    """
    folder = prepare_scenes(data_dir)
    manifest = read_folder_manifest(folder)
    assert manifest is not None
    items = [
        Item(
            name=r["name"],
            source="scenes",
            group=r["name"],
            labels=None,
            load=_png_loader(folder / "images" / f"{r['name']}.png"),
            meta=r,
        )
        for r in manifest["entries"]
        if not (debian_only and r["package"] not in SCENE_PACKAGES)
    ]
    provenance = {"folder": str(folder), "recipe": manifest["recipe"], "packages": manifest["packages"]}
    return Dataset("scenes", items, provenance)
