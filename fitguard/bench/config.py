"""What one ``fitguard bench`` run depends on: :class:`BenchConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BenchConfig:
    """Everything one run depends on (written into the JSON as ``config``)."""

    url: str | None = None
    model_repository: str | None = None
    images: str | None = None
    max_images: int = 16
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    requests: int | None = 64
    duration: float | None = None
    batch: int = 1
    protocol: str = "grpc"
    threads: int = 0  # 0: all usable cores
    reference_requests: int = 16
    naive_requests: int = 8
    references: bool = True
    naive: bool = True
    gemm_size: int = 2048
    level_deadline: float = 600.0
    device: str = "cpu"
    backbone: str | None = None  # for --device cuda (and the label); default: the repository's
    weights: str | None = None
    gpu_batches: tuple[int, ...] = (1, 8, 32, 64)
    backbone_alone: bool = False  # time the backbone per runtime (implied by device="cuda")
    runtime_seconds: float = 3.0
    baseline_repository: str | None = None  # served beside model_repository, alternating rounds
    baseline_rounds: int = 3
    notes: list[str] = field(default_factory=list)
