"""The tensor contract: model names, tensor names, dtypes and shapes, in one place.

Every other module (export, the model repository configs, the preprocess backend, the client, the
benchmark) reads names from here, so a rename is one edit. Shapes exclude the batch dimension: every
model is served with ``max_batch_size > 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

# Model names. The quality model is QUALITY_MODEL: the tensor it answers is named QUALITY (QUALITY_SCORE).
ENSEMBLE = "fitguard"
PREPROCESS = "preprocess"
CLASSIFIER = "classifier"
QUALITY_MODEL = "quality"
DETECTOR = "detector"
MODELS: tuple[str, ...] = (PREPROCESS, CLASSIFIER, QUALITY_MODEL, DETECTOR)
# Optional step after the detector that counts verdicts for Prometheus (`fitguard export --monitoring`).
MONITOR = "monitor"
# A DALI repository (`fitguard export --preprocess dali`): `preprocess` is the validating Python step, which
# hands each image to the batching DALI model and retries a failed one alone on its non-batching twin.
DALI_PREPROCESS = "preprocess_dali"
DALI_PREPROCESS_SINGLE = "preprocess_dali_single"

# Tensor names.
IMAGE = "IMAGE"
CLASSIFIER_INPUT = "CLASSIFIER_INPUT"
IQA_PATCHES = "IQA_PATCHES"
IQA_FEATURES = "IQA_FEATURES"
PROBS = "PROBS"
ENERGY = "ENERGY"  # logsumexp of the logits: the scale softmax removes, which the detector reads
QUALITY_SCORE = "QUALITY"
CLASS_ID = "CLASS_ID"
TOP5_IDS = "TOP5_IDS"
TOP5_PROBS = "TOP5_PROBS"
FIT = "FIT"
FIT_SCORE = "FIT_SCORE"

# ImageNet's: the default. A repository's classifier sets its own N (its classes file) and K = min(5, N);
# the shapes below are ImageNet's, `signatures(num_classes=N)` gives any repository's.
NUM_CLASSES = 1000
TOP_K = 5
QUALITY_BINS = 70  # DTNIQ-f: 70-way softmax over MOS bins 1..70
DEFAULT_PATCHES = 4
INPUT_SIZE = 224  # classifier crop and IQA patch side

# Where the quality head reads its backbone features. ``patches``: DTNIQ-f runs the backbone again on P
# native-resolution patches (the paper's method). ``shared``: the classifier's own pass over the centre crop
# also returns the quality features (IQA_FEATURES), so an image costs one backbone pass.
PATCHES_MODE = "patches"
SHARED_MODE = "shared"
QUALITY_MODES: tuple[str, ...] = (PATCHES_MODE, SHARED_MODE)


@dataclass(frozen=True)
class Tensor:
    """A named tensor: Triton datatype string and shape without the batch dimension (-1 = dynamic)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def classifier_input_tensor() -> Tensor:
    return Tensor(CLASSIFIER_INPUT, "UINT8", (3, INPUT_SIZE, INPUT_SIZE))


def iqa_patches_tensor(patches: int = -1) -> Tensor:
    return Tensor(IQA_PATCHES, "UINT8", (patches, 3, INPUT_SIZE, INPUT_SIZE))


def iqa_features_tensor(dim: int = -1) -> Tensor:
    return Tensor(IQA_FEATURES, "FP32", (dim,))


def top_k(num_classes: int = NUM_CLASSES) -> int:
    """K: the classes a verdict lists, min(5, N)."""
    return min(TOP_K, num_classes)


ENSEMBLE_INPUTS: tuple[Tensor, ...] = (Tensor(IMAGE, "BYTES", (1,)),)
ENSEMBLE_OUTPUTS: tuple[Tensor, ...] = (
    Tensor(CLASS_ID, "INT64", (1,)),
    Tensor(TOP5_IDS, "INT64", (TOP_K,)),
    Tensor(TOP5_PROBS, "FP32", (TOP_K,)),
    Tensor(QUALITY_SCORE, "FP32", (1,)),
    Tensor(FIT, "BOOL", (1,)),
    Tensor(FIT_SCORE, "FP32", (1,)),
)

# The class probabilities, with the classifier's labels file: sent only to a client that asks for them
# (Triton's classification extension answers `class_count=k` with "score:index:label").
ENSEMBLE_PROBS = Tensor(PROBS, "FP32", (NUM_CLASSES,))

PREPROCESS_INPUTS = ENSEMBLE_INPUTS
PREPROCESS_OUTPUTS: tuple[Tensor, ...] = (classifier_input_tensor(), iqa_patches_tensor())
CLASSIFIER_INPUTS: tuple[Tensor, ...] = (classifier_input_tensor(),)
CLASSIFIER_OUTPUTS: tuple[Tensor, ...] = (Tensor(PROBS, "FP32", (NUM_CLASSES,)), Tensor(ENERGY, "FP32", (1,)))
QUALITY_INPUTS: tuple[Tensor, ...] = (iqa_patches_tensor(),)
QUALITY_OUTPUTS: tuple[Tensor, ...] = (Tensor(QUALITY_SCORE, "FP32", (1,)),)
DETECTOR_INPUTS: tuple[Tensor, ...] = CLASSIFIER_OUTPUTS + QUALITY_OUTPUTS
DETECTOR_OUTPUTS: tuple[Tensor, ...] = (
    Tensor(CLASS_ID, "INT64", (1,)),
    Tensor(TOP5_IDS, "INT64", (TOP_K,)),
    Tensor(TOP5_PROBS, "FP32", (TOP_K,)),
    Tensor(FIT, "BOOL", (1,)),
    Tensor(FIT_SCORE, "FP32", (1,)),
)

# The monitor passes the verdict through unchanged: the answer a client gets is the one that was counted.
MONITOR_INPUTS: tuple[Tensor, ...] = (
    Tensor(CLASS_ID, "INT64", (1,)),
    Tensor(QUALITY_SCORE, "FP32", (1,)),
    Tensor(FIT, "BOOL", (1,)),
    Tensor(FIT_SCORE, "FP32", (1,)),
)
MONITOR_OUTPUTS = MONITOR_INPUTS

SIGNATURES: dict[str, tuple[tuple[Tensor, ...], tuple[Tensor, ...]]] = {
    ENSEMBLE: (ENSEMBLE_INPUTS, (*ENSEMBLE_OUTPUTS, ENSEMBLE_PROBS)),
    PREPROCESS: (PREPROCESS_INPUTS, PREPROCESS_OUTPUTS),
    CLASSIFIER: (CLASSIFIER_INPUTS, CLASSIFIER_OUTPUTS),
    QUALITY_MODEL: (QUALITY_INPUTS, QUALITY_OUTPUTS),
    DETECTOR: (DETECTOR_INPUTS, DETECTOR_OUTPUTS),
    MONITOR: (MONITOR_INPUTS, MONITOR_OUTPUTS),
}


def sized(tensors: tuple[Tensor, ...], num_classes: int) -> tuple[Tensor, ...]:
    """``tensors`` with the shapes of a classifier of ``num_classes``: PROBS [N], the top-K ones [K]."""
    k = top_k(num_classes)
    shapes = {PROBS: (num_classes,), TOP5_IDS: (k,), TOP5_PROBS: (k,)}
    return tuple(Tensor(t.name, t.datatype, shapes.get(t.name, t.shape)) for t in tensors)


def signatures(
    mode: str = PATCHES_MODE, num_classes: int = NUM_CLASSES
) -> dict[str, tuple[tuple[Tensor, ...], tuple[Tensor, ...]]]:
    """The contract of every model in a repository of quality mode ``mode`` whose classifier has
    ``num_classes`` outputs (the ensemble's names never change; its shapes follow N and K).

    In shared mode the preprocess step emits the crop only, the classifier also returns the quality
    features of its pass (dimension -1: the backbone's, pinned at export), and quality reads those.
    """
    if mode not in QUALITY_MODES:
        raise ValueError(f"unknown quality mode {mode!r}; choose from {', '.join(QUALITY_MODES)}")
    found = dict(SIGNATURES)
    if mode == SHARED_MODE:
        found.update(
            {
                PREPROCESS: (PREPROCESS_INPUTS, (classifier_input_tensor(),)),
                CLASSIFIER: (CLASSIFIER_INPUTS, (*CLASSIFIER_OUTPUTS, iqa_features_tensor())),
                QUALITY_MODEL: ((iqa_features_tensor(),), QUALITY_OUTPUTS),
            }
        )
    return {name: (sized(i, num_classes), sized(o, num_classes)) for name, (i, o) in found.items()}


# Quality metadata that clients report (pyiqa style): normalised MOS, higher is better.
QUALITY_RANGE = (0.0, 1.0)
QUALITY_LOWER_IS_BETTER = False

# The words of an overload refusal (gRPC UNAVAILABLE, HTTP 503), which clients and load generators retry or
# count as shed load: Triton's queue policy (a full queue, a wait past the timeout) and admission control
# of fitguard.admission.
ADMISSION_REFUSED = "admission limit reached"
OVERLOAD_MARKERS: tuple[str, ...] = (
    "exceeds maximum queue size",
    "request timeout expired",
    ADMISSION_REFUSED,
)


def is_overload(message: str) -> bool:
    """Whether a server's error message is an overload refusal (case-insensitive)."""
    lowered = message.lower()
    return any(marker in lowered for marker in OVERLOAD_MARKERS)


# The words of a step whose process died (Triton 2.51 answers every request with them until the server is
# restarted, fitguard.health): clients retry them as unavailable while the server heals.
STEP_DOWN_MARKERS: tuple[str, ...] = ("is not healthy",)


def is_step_down(message: str) -> bool:
    """Whether a server's error message says a step's process is gone (case-insensitive)."""
    lowered = message.lower()
    return "stub process" in lowered and any(marker in lowered for marker in STEP_DOWN_MARKERS)


# The request id of the deep health check's canary (fitguard.health): Triton passes it to every step of the
# ensemble, and the monitor step leaves such requests out of the verdict metrics.
CANARY_REQUEST_ID = "fitguard-canary"
