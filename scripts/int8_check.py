"""Would int8 static quantisation be acceptable? Quantise a repository's classifier and quality graphs
with ONNX Runtime (QDQ, per-channel int8 weights, uint8 activations, calibrated on photo crops) and
compare the whole pipeline with the fp32 one: top-1 agreement, verdict (FIT) agreement and speed.

The acceptance rule (docs/performance.md): top-1 and verdict agreement with fp32 >= 99% on the
evaluation images (package photos, each clean and under every TID2013-like distortion at levels 1/3/5).

    python scripts/int8_check.py build/model_repository --out /tmp/int8_repository [--method minmax]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np


def calibration_crops(seed: int = 1, per_photo: int = 4) -> np.ndarray:
    """224x224 uint8 crops at random scales, clean and distorted (seed distinct from the evaluation's)."""
    from PIL import Image

    from fitguard.photos import package_photos
    from fitguard.training.data.distortions import DISTORTIONS, distort

    rng = np.random.default_rng(seed)
    crops = []
    for rgb in package_photos().values():
        views = [rgb] + [distort(rgb, k, 2 + 2 * (i % 2), seed=99) for i, k in enumerate(DISTORTIONS)]
        for view in views[:per_photo]:
            h, w = view.shape[:2]
            side = int(min(h, w) * rng.uniform(0.4, 1.0))
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = Image.fromarray(view[top : top + side, left : left + side]).resize(
                (224, 224), Image.BILINEAR
            )
            crops.append(np.asarray(crop).transpose(2, 0, 1))
    return np.stack(crops)


def evaluation_images() -> list[bytes]:
    from fitguard.photos import package_photos
    from fitguard.preprocess import encode_image
    from fitguard.training.data.distortions import DISTORTIONS, distort

    out = []
    for rgb in package_photos().values():
        out.append(encode_image(rgb))
        out += [encode_image(distort(rgb, k, level, seed=7)) for k in DISTORTIONS for level in (1, 3, 5)]
    return out


def quantize(src: Path, dst: Path, input_name: str, samples: np.ndarray, method: str) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter({input_name: s[None]} for s in samples)

        def get_next(self) -> dict | None:
            return next(self.it, None)

    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method={
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[method],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="where to write the int8 copy")
    parser.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax")
    args = parser.parse_args(argv)

    from fitguard.contract import CLASS_ID, CLASSIFIER, CLASSIFIER_INPUT, FIT, IQA_PATCHES, QUALITY_MODEL
    from fitguard.manifest import checksums
    from fitguard.reference import OnnxPipeline
    from fitguard.repository import MANIFEST_NAME, model_path, repository_settings

    shutil.rmtree(args.out, ignore_errors=True)
    shutil.copytree(args.repository, args.out)
    crops = calibration_crops()
    patches = repository_settings(args.repository).patches
    patch_sets = crops[: len(crops) // patches * patches].reshape(-1, patches, *crops.shape[1:])
    for name, input_name, samples in (
        (CLASSIFIER, CLASSIFIER_INPUT, crops),
        (QUALITY_MODEL, IQA_PATCHES, patch_sets),
    ):
        quantize(
            model_path(args.repository, name),
            model_path(args.out, name),
            input_name=input_name,
            samples=samples,
            method=args.method,
        )
    manifest_path = args.out / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["files"] = checksums(args.out)
    manifest["arguments"]["precision"] = f"int8-static-{args.method} (experimental)"
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    images = evaluation_images()
    result = {}
    answers = {}
    for label, repo in (("fp32", args.repository), ("int8", args.out)):
        pipe = OnnxPipeline.from_repository(repo, threads=1)
        pipe.predict(images[:1])
        t0 = time.perf_counter()
        outs = [pipe.predict([img]) for img in images]
        result[f"{label}_images_per_s"] = round(len(images) / (time.perf_counter() - t0), 2)
        answers[label] = (
            np.concatenate([o[CLASS_ID].ravel() for o in outs]),
            np.concatenate([o[FIT].ravel() for o in outs]),
        )
    result["images"] = len(images)
    result["top1_agreement"] = round(float((answers["fp32"][0] == answers["int8"][0]).mean()), 4)
    result["verdict_agreement"] = round(float((answers["fp32"][1] == answers["int8"][1]).mean()), 4)
    result["accepted"] = result["top1_agreement"] >= 0.99 and result["verdict_agreement"] >= 0.99
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
