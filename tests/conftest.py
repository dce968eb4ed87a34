"""Shared fixtures: scikit-image photos, free ports; module-specific ones live beside their tests."""

from __future__ import annotations

import socket

import numpy as np
import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def infer_ensemble(url: str, batch: list[bytes]) -> dict[str, np.ndarray]:
    """One raw HTTP request of encoded images to the ensemble: every output by name."""
    import tritonclient.http as http

    from fitguard import contract as c

    names = [t.name for t in c.ENSEMBLE_OUTPUTS]
    with http.InferenceServerClient(url) as client:
        tensor = http.InferInput(c.IMAGE, [len(batch), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(batch, dtype=object).reshape(-1, 1))
        result = client.infer(c.ENSEMBLE, [tensor], outputs=[http.InferRequestedOutput(n) for n in names])
        return {n: result.as_numpy(n) for n in names}


@pytest.fixture(scope="session")
def build_dir():
    """The offline build the build tier reads: ``FITGUARD_BUILD`` (``make test`` makes it first), else
    ``build/``, made here when it has no repository (README, Build, says how long that takes)."""
    import os
    from pathlib import Path

    path = Path(os.environ.get("FITGUARD_BUILD", "build"))
    if not (path / "model_repository" / "manifest.json").exists():
        from fitguard.build import build

        build(path)
    return path


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real RGB photos shipped with scikit-image (name -> HWC uint8)."""
    from skimage import data

    return {name: getattr(data, name)() for name in ("chelsea", "astronaut", "coffee", "rocket")}


def synthetic_detector(seed: int = 0, threshold: float = 0.0, feature_set: str = "paper"):
    """A real scaler + RBF SVC detector trained in milliseconds on seeded synthetic features of the set."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from fitguard.detector import Detector, detector_features
    from fitguard.export.onnx_export import probe_inputs

    probs, quality, energy = probe_inputs(200, seed=seed)
    labels = (probs.max(axis=1) + quality[:, 0] > 0.9).astype(int)  # confident and sharp -> fit
    features = detector_features(probs, quality, feature_set, energy)
    pipeline = make_pipeline(StandardScaler(), SVC(kernel="rbf")).fit(features, labels)
    return Detector(pipeline, threshold, feature_set=feature_set)


def export_tiny(root, *, quality_features: str = "patches", preprocess: str = "python"):
    """A complete repository on the ``tiny`` backbone (a seeded random quality head saved for
    ``quality_features``, the synthetic detector), exported and verified like any, with the ``preprocess``
    step; returns its Path."""
    import torch

    from fitguard.backbones import build_backbone
    from fitguard.detector import save_detector
    from fitguard.export import export_repository
    from fitguard.quality import QualityHead, save_head

    torch.set_num_threads(2)
    net = build_backbone("tiny")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = QualityHead(net.quality_dim)
    save_head(root / "head.pt", head, net, mode=quality_features)
    save_detector(root / "detector.joblib", synthetic_detector())
    return export_repository(
        root / "repository",
        backbone="tiny",
        head=root / "head.pt",
        detector=root / "detector.joblib",
        quality_features=quality_features,
        preprocess=preprocess,
        log=lambda _: None,
    )


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory):
    """The ``tiny`` repository in the paper's P-patch quality mode (:func:`export_tiny`)."""
    return export_tiny(tmp_path_factory.mktemp("tiny_repository"))


@pytest.fixture(scope="session")
def tiny_shared_repository(tmp_path_factory: pytest.TempPathFactory):
    """The ``tiny`` repository in shared quality mode: the classifier's pass gives the quality features."""
    return export_tiny(tmp_path_factory.mktemp("tiny_shared_repository"), quality_features="shared")


@pytest.fixture(scope="session")
def tiny_server(tiny_repository):
    """The embedded Triton server on free ports, serving ``tiny_repository``."""
    from fitguard.serve import EmbeddedServer

    with EmbeddedServer(tiny_repository, http_port=0, grpc_port=0, metrics_port=0) as server:
        yield server


@pytest.fixture(scope="session")
def tiny_dali_repository(tmp_path_factory: pytest.TempPathFactory):
    """The ``tiny`` repository with the DALI preprocess step on the CPU (what the embedded server's DALI
    stand-in serves), otherwise :func:`tiny_repository`'s models."""
    return export_tiny(tmp_path_factory.mktemp("tiny_dali_repository"), preprocess="dali")


@pytest.fixture(scope="session")
def tiny_dali_server(tiny_dali_repository):
    """The embedded Triton server on free ports, serving ``tiny_dali_repository``."""
    from fitguard.serve import EmbeddedServer

    with EmbeddedServer(tiny_dali_repository, http_port=0, grpc_port=0, metrics_port=0) as server:
        yield server
