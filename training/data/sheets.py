"""Contact sheets of kept and dropped stamps and scenes (small PNGs for the docs)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from PIL import Image, ImageDraw

from fitguard.preprocess import image_files
from fitguard.training.data.debian import fetch_package
from fitguard.training.data.items import read_folder_manifest
from fitguard.training.data.scenes import SCENE_PACKAGES, read_scene_list
from fitguard.training.data.stamps import STAMP_PACKAGE, load_rgba


def contact_sheet(tiles: Iterable[tuple[Image.Image, str]], thumb: int, cols: int) -> Image.Image:
    """Thumbnails on a light grey grid, a caption under each; quantised to 256 colours to stay small."""
    tiles = list(tiles)
    cap = 11
    rows = max(1, -(-len(tiles) // cols))
    sheet = Image.new("RGB", (cols * thumb, rows * (thumb + cap)), (215, 215, 215))
    draw = ImageDraw.Draw(sheet)
    for i, (img, caption) in enumerate(tiles):
        img = img.copy()
        img.thumbnail((thumb - 2, thumb - 2), Image.Resampling.LANCZOS)
        x, y = (i % cols) * thumb, (i // cols) * (thumb + cap)
        ox, oy = x + (thumb - img.width) // 2, y + (thumb - img.height) // 2
        sheet.paste(img, (ox, oy), img if img.mode == "RGBA" else None)
        draw.text((x + 1, y + thumb), caption[: thumb // 6], fill=(0, 0, 0))
    return sheet.quantize(256, method=Image.Quantize.MEDIANCUT)


def candidate_scenes(data_dir: str | Path | None = None) -> list[tuple[str, Path]]:
    """Every image of the wallpaper packages, one file per plasma wallpaper: (package-relative path, file)."""
    out = []
    for name in SCENE_PACKAGES:
        pkg = fetch_package(name, data_dir)
        files = image_files(pkg.root / "usr/share")
        files = [p for p in files if p.is_file() and not p.is_symlink() and "screenshot" not in p.name]
        files = [p for p in files if "images_dark" not in p.parts and "locale" not in p.parts]
        if name == "plasma-workspace-wallpapers":
            largest: dict[str, Path] = {}
            for p in files:
                key = p.parts[p.parts.index("wallpapers") + 1]
                if key not in largest or p.stat().st_size > largest[key].stat().st_size:
                    largest[key] = p
            files = sorted(largest.values())
        out += [(p.relative_to(pkg.root).as_posix(), p) for p in files]
    return out


def _open_small(path: Path, side: int) -> Image.Image:
    with Image.open(path) as img:
        img.draft("RGB", (side * 2, side * 2))
        small = img.convert("RGB")
    small.thumbnail((side, side))
    return small


def scene_sheets(out: Path, data_dir: str | Path | None = None) -> list[Path]:
    kept_files = {e.file for e in read_scene_list()}
    kept, dropped = [], []
    for rel, path in candidate_scenes(data_dir):
        caption = path.parts[-4] if "wallpapers" in path.parts else path.stem
        (kept if rel in kept_files else dropped).append((_open_small(path, 160), caption))
    return _save(out, {"scenes-kept.png": (kept, 160, 8), "scenes-dropped.png": (dropped, 120, 10)})


def stamp_sheets(objects_folder: Path, out: Path, data_dir: str | Path | None = None) -> list[Path]:
    manifest = read_folder_manifest(objects_folder)
    assert manifest is not None
    root = fetch_package(STAMP_PACKAGE, data_dir).root
    kept, drawings, unlabelled = [], [], []
    for r in manifest["stamps"]:
        if r["id"].startswith("symbols/alphabets/") or r["id"].endswith("_mirror"):
            continue  # letters and mirror copies: many, and nothing to see
        name = r["id"].rsplit("/", 1)[-1]
        if "dropped" not in r:
            kept.append((r["id"], name))
        elif not r["photograph"]:
            drawings.append((r["id"], f"{r['flat']:.2f} {name}"))
        else:
            unlabelled.append((r["id"], name))

    def tiles(rows: list[tuple[str, str]], side: int) -> list[tuple[Image.Image, str]]:
        return [(load_rgba(root / "usr/share/tuxpaint/stamps" / f"{i}.png", side * 2), c) for i, c in rows]

    return _save(
        out,
        {
            "stamps-kept.png": (tiles(kept, 72), 72, 16),
            "stamps-drawings.png": (tiles(drawings, 56), 56, 20),
            "stamps-unlabelled.png": (tiles(unlabelled, 56), 56, 20),
        },
    )


def _save(out: Path, sheets: dict[str, tuple[list, int, int]]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (tiles, thumb, cols) in sheets.items():
        contact_sheet(tiles, thumb, cols).save(out / name, optimize=True)
        paths.append(out / name)
    return paths
