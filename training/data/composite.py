"""Object composites: a cut-out stamp pasted onto a natural scene, as an object in an ImageNet photo.

The object's bounding box covers a chosen share of the square frame (``cover``), unless the object
is so elongated that it would then leave the frame: its longer side is capped at :data:`MAX_EXTENT`
of the frame. Resizing uses premultiplied alpha (Pillow converts RGBA to RGBa for it), so the edge
blends the object's own colour into the scene, with no dark or light fringe; pixels the stamp
leaves fully transparent keep the scene's exact values. Everything random comes from a
:class:`CompositeSpec`, drawn by :func:`draw_specs` from a seed: same seed, same bytes.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

SIZE = 320
COVERS: tuple[float, ...] = (0.3, 0.45, 0.6, 0.75)
MAX_EXTENT = 0.95
CROP_RANGE = (0.6, 1.0)  # scene crop side, as a share of the scene's shorter side


@dataclass(frozen=True)
class CompositeSpec:
    """How one composite is made.

    Attributes:
        scene: name of the background scene.
        crop: (left, top, side) of the square crop of the scene, in its pixels.
        cover: target share of the frame covered by the object's bounding box.
        fx, fy: position of the object in the free range (0 = left/top edge, 1 = right/bottom).
        flip: mirror the object.
    """

    scene: str
    crop: tuple[int, int, int]
    cover: float
    fx: float
    fy: float
    flip: bool

    def to_dict(self) -> dict:
        return asdict(self)


def draw_specs(
    key: str, scenes: dict[str, tuple[int, int]], count: int = len(COVERS), seed: int = 0
) -> list[CompositeSpec]:
    """``count`` specs for the object ``key`` on distinct scenes (name -> (width, height)), one per
    cover of :data:`COVERS`. Seeded by ``seed`` and the key, so one object's specs do not depend on
    which other objects exist."""
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    names = sorted(scenes)
    chosen = rng.choice(len(names), size=min(count, len(names)), replace=False)
    specs = []
    for k, index in enumerate(chosen):
        w, h = scenes[names[index]]
        side = int(round(rng.uniform(*CROP_RANGE) * min(w, h)))
        left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        specs.append(
            CompositeSpec(
                scene=names[index],
                crop=(left, top, side),
                cover=COVERS[k % len(COVERS)],
                fx=float(rng.uniform()),
                fy=float(rng.uniform()),
                flip=bool(rng.random() < 0.5),
            )
        )
    return specs


def object_size(box: tuple[int, int], cover: float, size: int = SIZE) -> tuple[int, int]:
    """The object's pasted (width, height): bounding box area ``cover * size**2``, longer side capped."""
    w, h = box
    scale = math.sqrt(cover * size * size / (w * h))
    scale = min(scale, MAX_EXTENT * size / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def composite(stamp: Image.Image, scene: Image.Image, spec: CompositeSpec, size: int = SIZE) -> np.ndarray:
    """The composite as RGB uint8 [size, size, 3] (``stamp`` RGBA, ``scene`` RGB)."""
    left, top, side = spec.crop
    background = scene.crop((left, top, left + side, top + side)).convert("RGB")
    background = background.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0).convert("RGBA")
    obj = stamp.convert("RGBA")
    bbox = obj.getchannel("A").getbbox()
    if bbox is None:
        raise ValueError("the stamp is fully transparent")
    obj = obj.crop(bbox)
    ow, oh = object_size(obj.size, spec.cover, size)
    obj = obj.resize((ow, oh), Image.Resampling.LANCZOS)
    if spec.flip:
        obj = obj.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    x, y = round(spec.fx * (size - ow)), round(spec.fy * (size - oh))
    background.alpha_composite(obj, (x, y))
    return np.asarray(background.convert("RGB"), dtype=np.uint8)
