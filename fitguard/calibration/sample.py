"""The calibration sample: a deployment's image files, their acceptable classes when known, and the
detector's confidence on each, from the repository in-process or from a running server.

Labels come from a file, one image a line (``#`` starts a comment)::

    photos/cat.jpg      n02123045,281       # WordNet ids or ImageNet indices, comma-separated
    photos/sky.jpg      none                # no acceptable class: every answer is wrong
    photos/dog 2.jpg<TAB>207<TAB>walk-3     # tabs when a name has spaces; an optional group
    photos/gull.jpg     bird                # a name of the repository's labels file (a team's classes)

or from a folder per class (``<images>/<class>/<file>``). Classes are the repository's
(:class:`fitguard.labels.ClassTable`): a name of its labels file, an index, and for ImageNet's classes a
WordNet id. Images of one group stay on
one side of the calibration / check split (by default each image is its own group).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fitguard.contract import CLASS_ID, DETECTOR, FIT_SCORE
from fitguard.guarantee import CalibrationError
from fitguard.labels import ClassTable
from fitguard.parameters import THRESHOLD

NO_CLASS = "none"
_COMMENT = re.compile(r"\s+#.*$")  # a comment after whitespace: file names may hold '#'
BATCH_SIZE = 16


@dataclass(frozen=True)
class SampleImage:
    """One image of the sample: its file, its acceptable classes (None: unlabelled), its group."""

    path: Path
    labels: frozenset[int] | None = None
    group: str = ""


# ------------------------------------------------------------------------------------------------ labels


def parse_classes(text: str, where: str, classes: ClassTable) -> frozenset[int]:
    """``n02123045,281`` or ``mammal`` -> the class indices (:meth:`ClassTable.index`: a class name, an
    index, an ImageNet WordNet id); ``none`` -> no acceptable class. A class name with a comma is read
    whole before the text is split at its commas.

    Raises:
        CalibrationError: naming ``where`` and the token that is no class of ``classes``.
    """
    if text.strip().lower() == NO_CLASS:
        return frozenset()
    whole = classes.index(text.strip())
    if whole is not None:
        return frozenset({whole})
    found = set()
    for token in (t.strip() for t in text.split(",")):
        index = classes.index(token)
        if index is None:
            raise CalibrationError(f"{where}: {token!r} is not {classes.describe(repr(NO_CLASS))}")
        found.add(index)
    return frozenset(found)


def read_labels_file(labels: Path, root: Path, classes: ClassTable) -> list[SampleImage]:
    """The images a labels file names, with paths relative to ``root`` (the images folder)."""
    try:
        lines = labels.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CalibrationError(f"cannot read the labels file {labels}: {exc.strerror or exc}") from None
    out, missing = [], []
    for number, raw in enumerate(lines, 1):
        line = _COMMENT.sub("", raw).strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) not in (2, 3):
            raise CalibrationError(
                f"{labels}:{number}: expected '<image file> <classes> [<group>]', got {raw.strip()!r}"
            )
        path = root / fields[0]
        if not path.is_file():
            missing.append(fields[0])
        group = fields[2] if len(fields) == 3 else fields[0]
        out.append(SampleImage(path, parse_classes(fields[1], f"{labels}:{number}", classes), group))
    if missing:
        raise CalibrationError(
            f"{labels}: {len(missing)} image(s) not found under {root}: {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
        )
    return out


def read_class_folders(root: Path, files: Sequence[Path], classes: ClassTable) -> list[SampleImage]:
    """Images in a folder per class: ``<root>/<class name, index, wnid or none>/...``."""
    out = []
    for path in files:
        parts = path.relative_to(root).parts
        if len(parts) < 2:
            raise CalibrationError(
                f"{path}: not in a class folder; put each image in a folder named by its class "
                f"(<images>/<class>/...) or pass --labels FILE"
            )
        out.append(
            SampleImage(path, parse_classes(parts[0], f"folder {root / parts[0]}", classes), str(path))
        )
    return out


def read_sample(
    images: str | Path,
    labels: str | Path | None = None,
    labelled: bool = True,
    classes: ClassTable | None = None,
) -> list[SampleImage]:
    """The sample's images: every image file under ``images`` (unlabelled), the ones ``labels`` names,
    or a folder per class; classes are read as ``classes`` names them (ImageNet's by default).

    Raises:
        CalibrationError: no folder, no image, an unknown class, a labelled image missing.
    """
    from fitguard.client.images import expand_paths

    root = Path(images)
    if not root.is_dir():
        raise CalibrationError(f"{root}: no such folder")
    table = classes or ClassTable.imagenet()
    if labelled and labels is not None:
        sample = read_labels_file(Path(labels), root, table)
    else:
        files = expand_paths([root])
        sample = (
            read_class_folders(root, files, table)
            if labelled
            else [SampleImage(f, None, str(f)) for f in files]
        )
    if not sample:
        raise CalibrationError(f"{root}: no image files (or an empty labels file)")
    return sample


# ------------------------------------------------------------------------------------------------ scores


@dataclass
class ScoredSample:
    """The images that got a verdict, each with the detector's confidence (before any threshold) and
    the classifier's answer; ``failures`` are the images that got none, with the reason."""

    images: list[SampleImage]
    confidence: np.ndarray
    class_id: np.ndarray
    failures: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labelled(self) -> bool:
        return all(im.labels is not None for im in self.images)

    @property
    def wrong(self) -> np.ndarray:
        """True where the classifier's answer is not one of the image's acceptable classes."""
        return np.array(
            [int(c) not in (im.labels or ()) for c, im in zip(self.class_id, self.images, strict=True)], bool
        )

    def take(self, index: np.ndarray) -> ScoredSample:
        index = np.asarray(index, np.int64)
        return ScoredSample(
            [self.images[i] for i in index], self.confidence[index], self.class_id[index], self.failures
        )

    def one_per_group(self, seed: int = 0) -> ScoredSample:
        """One image of each group (a seeded choice): independent draws for the bounds, where images of
        one group (one object, scene or user) are not."""
        rng = np.random.default_rng([seed, 1])
        groups: dict[str, list[int]] = {}
        for i, im in enumerate(self.images):
            groups.setdefault(im.group or str(im.path), []).append(i)
        return self.take(np.sort([int(rng.choice(members)) for members in groups.values()]))

    def split(self, holdout: float, seed: int = 0) -> tuple[ScoredSample, ScoredSample]:
        """(calibration, check): about ``holdout`` of the images, whole groups, go to the check part."""
        groups = np.array([im.group or str(im.path) for im in self.images])
        unique = np.random.default_rng(seed).permutation(np.unique(groups))
        sizes = {g: int(n) for g, n in zip(*np.unique(groups, return_counts=True), strict=True)}
        check, count = set(), 0
        for g in unique:
            if count >= holdout * len(self):
                break
            check.add(g)
            count += sizes[g]
        in_check = np.isin(groups, list(check))
        return self.take(np.flatnonzero(~in_check)), self.take(np.flatnonzero(in_check))


def _detector_session(repository: Path, version: int) -> object:
    """The served detector version with its threshold set to 0, so FIT_SCORE is the confidence itself."""
    import onnx
    import onnxruntime as ort

    from fitguard.export.calibrated import detector_file, recalibrated_graph

    graph = recalibrated_graph(onnx.load(str(detector_file(repository, version))), 0.0, {})
    return ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])


def _read(image: SampleImage) -> bytes | str:
    try:
        return image.path.read_bytes()
    except OSError as exc:
        return f"cannot read file: {exc.strerror or exc}"


def _judge(pipeline: object, batch: list[SampleImage]) -> tuple[list, list]:
    """([(image, confidence, class id)], [(path, reason)]) for one batch: a bad image fails a whole
    batch, as on the server, so a failed batch is judged again one image at a time."""
    from fitguard.preprocess import BadImageError

    data = [_read(im) for im in batch]
    failed = [(str(im.path), d) for im, d in zip(batch, data, strict=True) if isinstance(d, str)]
    readable = [(im, d) for im, d in zip(batch, data, strict=True) if isinstance(d, bytes)]
    groups = [readable] if readable else []
    judged = []
    while groups:
        group = groups.pop()
        try:
            out = pipeline.predict([d for _, d in group])  # type: ignore[attr-defined]
        except BadImageError as exc:
            if len(group) == 1:
                failed.append((str(group[0][0].path), str(exc)))
            else:
                groups += [[item] for item in group]
            continue
        conf, cls = np.asarray(out[FIT_SCORE]).reshape(-1), np.asarray(out[CLASS_ID]).reshape(-1)
        judged += [(im, float(c), int(k)) for (im, _), c, k in zip(group, conf, cls, strict=True)]
    return judged, failed


def score_in_process(
    repository: str | Path, sample: Sequence[SampleImage], log: Callable[[str], None] | None = print
) -> ScoredSample:
    """Score the sample with the repository's graphs in ONNX Runtime and the served preprocessing
    (:class:`fitguard.reference.OnnxPipeline`), with the detector version the ensemble serves."""
    from fitguard.export.calibrated import served_version
    from fitguard.reference import OnnxPipeline

    repository = Path(repository)
    pipeline = OnnxPipeline.from_repository(repository)
    pipeline.sessions[DETECTOR] = _detector_session(repository, served_version(repository))
    judged, failures = [], []
    for start in range(0, len(sample), BATCH_SIZE):
        ok, failed = _judge(pipeline, list(sample[start : start + BATCH_SIZE]))
        judged += ok
        failures += failed
        if log is not None and (start // BATCH_SIZE) % 10 == 9:
            log(f"scored {min(start + BATCH_SIZE, len(sample))}/{len(sample)} images")
    order = {id(im): i for i, im in enumerate(sample)}
    judged.sort(key=lambda row: order[id(row[0])])
    return _scored(
        [r[0] for r in judged],
        [np.array([r[1] for r in judged])],
        [np.array([r[2] for r in judged])],
        failures,
    )


def _scored(kept: list, conf: list, cls: list, failures: list) -> ScoredSample:
    if not kept:
        reasons = "; ".join(f"{p}: {r}" for p, r in failures[:3])
        raise CalibrationError(f"no image of the sample could be judged ({reasons})")
    return ScoredSample(kept, np.concatenate(conf), np.concatenate(cls), failures)


def served_threshold(url: str, protocol: str = "grpc", timeout: float = 30.0) -> float:
    """The threshold a running server's detector answers with (its config's ``threshold`` parameter)."""
    from fitguard.client.transport import Connection, open_transport

    transport = open_transport(Connection(url=url, protocol=protocol, timeout=timeout))  # type: ignore[arg-type]
    try:
        parameters = transport.model_config(DETECTOR).get("parameters") or {}
    finally:
        transport.close()
    value = (parameters.get(THRESHOLD) or {}).get("string_value")
    if value is None:
        raise CalibrationError(
            f"the detector at {url} does not say its threshold (no {THRESHOLD!r} parameter)"
        )
    return float(value)


def score_with_server(
    url: str, sample: Sequence[SampleImage], *, threshold: float, protocol: str = "grpc"
) -> ScoredSample:
    """Score the sample through a running server; confidence = FIT_SCORE + the served ``threshold``."""
    from fitguard.client import FitClient

    with FitClient(url, protocol=protocol) as client:  # type: ignore[arg-type]
        results = client.classify_many([im.path for im in sample], concurrency=2)
    kept = [im for im, r in zip(sample, results, strict=True) if r.ok]
    failures = [(str(im.path), r.reason) for im, r in zip(sample, results, strict=True) if not r.ok]
    verdicts = [r for r in results if r.ok]
    conf = [np.array([v.fit_score + threshold for v in verdicts], np.float64)]
    cls = [np.array([v.class_id for v in verdicts], np.int64)]
    return _scored(kept, conf, cls, failures)
