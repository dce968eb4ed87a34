"""``fitguard demo``: the main job. Build once, serve the ensemble, classify sample photos.

Each sample photo is sent as it is and in degraded versions (heavy blur, noise, JPEG). Fit means the
classifier's answer is right, so the table shows each answer's rightness (from the photo's acceptable
ImageNet classes) beside the verdict: the guard should pass right answers and refuse wrong ones.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SAMPLES = ("chelsea", "coffee", "rocket", "astronaut")
DEGRADATIONS = (("gaussian_blur", 5), ("white_noise", 5), ("jpeg", 5))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--build", default="build", help="build folder (made by `fitguard build` if missing)")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="backbone for a missing build")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument(
        "--images", nargs="*", default=None, help="your own image files instead of the samples"
    )


Sample = tuple[str, bytes, "frozenset[int] | None"]  # name, encoded image, acceptable classes if known


def sample_images(names: tuple[str, ...] = SAMPLES) -> list[Sample]:
    """Sample photos and degraded versions, encoded as PNG (lossless, so only the degradation counts)."""
    from fitguard.photos import PHOTO_LABELS, package_photos
    from fitguard.preprocess import encode_image
    from fitguard.training.data.distortions import distort

    images: list[Sample] = []
    for name, rgb in package_photos(names).items():
        labels = PHOTO_LABELS.get(name)
        images.append((name, encode_image(rgb), labels))
        for kind, level in DEGRADATIONS:
            degraded = encode_image(distort(rgb, kind, level))
            images.append((f"{name} + {kind.replace('_', ' ')} {level}", degraded, labels))
    return images


def _answer(class_id: int, labels: frozenset[int] | None) -> str:
    if labels is None:
        return "?"
    return "right" if class_id in labels else "wrong"


def run(args: argparse.Namespace) -> int:
    from fitguard.client import FitClient
    from fitguard.repository import MANIFEST_NAME
    from fitguard.serve import EmbeddedServer

    repository = Path(args.build) / "model_repository"
    if not (repository / MANIFEST_NAME).exists():
        from fitguard.build import build

        build(Path(args.build), backbone=args.backbone)
    images = (
        [(Path(p).name, Path(p).read_bytes(), None) for p in args.images] if args.images else sample_images()
    )

    with EmbeddedServer(repository, http_port=0, grpc_port=0, metrics_port=0) as server:
        url = server.grpc_url if args.protocol == "grpc" else server.http_url
        print(f"fitguard ensemble served at {url} ({args.protocol}); classifying {len(images)} images\n")
        with FitClient(url, protocol=args.protocol) as client:
            results = client.classify_many([data for _, data, _ in images])
    width = max(len(name) for name, _, _ in images)
    print(f"{'image':<{width}}  {'label':<22} {'conf':>5}  {'quality':>7}  answer  verdict")
    failed = 0
    for (name, _, labels), v in zip(images, results, strict=True):
        if not v.ok:
            failed += 1
            print(f"{name:<{width}}  error: {v.reason}")
            continue
        verdict = "fit" if v.fit else "UNFIT"
        answer = _answer(v.class_id, labels)
        scores = f"{v.confidence:>5.2f}  {v.quality:>7.3f}"
        print(f"{name:<{width}}  {v.label[:22]:<22} {scores}  {answer:<6}  {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(
        run(argparse.Namespace(build="build", backbone="efficientnet_lite0", protocol="grpc", images=None))
    )
