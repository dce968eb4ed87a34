"""What a bench run drives: the test images, the server (given or embedded) and the repository's settings."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from fitguard import contract
from fitguard.parameters import PATCHES
from fitguard.preprocess import IMAGE_EXTENSIONS, image_files
from fitguard.repository import MANIFEST_NAME

if TYPE_CHECKING:
    from fitguard.bench.config import BenchConfig


def load_images(folder: str | None, limit: int) -> tuple[list[bytes], str]:
    """Encoded test images: the files of ``folder`` as they are, else :func:`fitguard.photos.sample_photos` as
    JPEG."""
    if folder:
        paths = image_files(folder)
        if not paths:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {folder}")
        return [p.read_bytes() for p in paths[:limit]], f"{len(paths[:limit])} files from {folder}"
    from fitguard.photos import sample_photos
    from fitguard.preprocess import encode_image

    photos, source = sample_photos(limit=limit)
    return [encode_image(rgb, "JPEG", quality=90) for rgb in photos], f"{source} as JPEG q90"


@contextlib.contextmanager
def served(cfg: BenchConfig) -> Iterator[str | None]:
    """The URL to drive: ``--url`` as given, or an embedded server started on ``--model-repository``."""
    if cfg.url:
        yield cfg.url
    elif cfg.model_repository:
        try:
            from fitguard.serve import EmbeddedServer
        except ImportError:
            from fitguard.serve.embedded import EmbeddedServer

        with EmbeddedServer(cfg.model_repository, http_port=0, grpc_port=0, metrics_port=0) as server:
            yield server.grpc_url if cfg.protocol == "grpc" else server.http_url
    else:
        yield None


def repository_patches(repository: str | None, protocol: str, url: str | None) -> int | None:
    """The patch count the ensemble serves with: from the repository's config, else from the server."""
    if repository:
        from fitguard.repository import repository_settings

        return repository_settings(repository).patches
    if url:
        from fitguard.bench.load import make_client

        client = make_client(protocol, url)
        try:
            config = client.get_model_config(contract.PREPROCESS)
            config = config.get("config", config) if isinstance(config, dict) else config
            params = (
                config["parameters"]
                if isinstance(config, dict)
                else {k: {"string_value": v.string_value} for k, v in config.config.parameters.items()}
            )
            return int(params[PATCHES]["string_value"])
        except Exception:
            return None
        finally:
            client.close()
    return None


def repository_backbone(repository: str | None) -> tuple[str | None, str | None]:
    """(backbone, weights) a repository was exported with, from its manifest or preprocess config."""
    if not repository:
        return None, None
    path = Path(repository) / MANIFEST_NAME
    if path.is_file():
        args = json.loads(path.read_text(encoding="utf-8")).get("arguments", {})
        return args.get("backbone"), args.get("weights")
    try:
        from fitguard.repository import repository_settings

        return repository_settings(repository).backbone or None, None
    except Exception:
        return None, None
