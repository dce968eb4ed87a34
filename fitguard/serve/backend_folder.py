"""The ``tritonserver`` binary the ``nvidia-pytriton`` wheel ships, and the backend directory it serves with.

The wheel carries Triton with the Python backend and one Python backend stub per Python version, but no
ONNX Runtime or DALI backend. We assemble a backend directory (cached) holding the wheel's backends, the
stub for the running interpreter and our Python-based ``onnxruntime`` and ``dali`` stand-ins.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from fitguard.cache import cache_root
from fitguard.serve.errors import EmbeddedServerError

BACKEND_MODEL_PY = Path(__file__).with_name("backends") / "onnxruntime" / "model.py"
# The stand-in for Triton's DALI backend (CPU operators, the real backend's batch semantics).
DALI_MODEL_PY = Path(__file__).with_name("backends") / "dali" / "model.py"


def _pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError as e:  # pragma: no cover - depends on the install
        raise EmbeddedServerError(
            "the embedded server needs nvidia-pytriton: pip install 'fitguard[serve]'"
        ) from e
    return Path(pytriton.__file__).resolve().parent


def find_tritonserver() -> tuple[Path, Path]:
    """Return (tritonserver binary, folder of the shared libraries it needs) from the installed wheel."""
    root = _pytriton_root()
    binary = root / "tritonserver" / "bin" / "tritonserver"
    libs = root.parent / "nvidia_pytriton.libs"
    if not binary.is_file():
        raise EmbeddedServerError(
            f"tritonserver not found in the nvidia-pytriton wheel (looked for {binary})"
        )
    return binary, libs


def backend_directory() -> Path:
    """Build (once, then reuse) the backend directory for this wheel, Python version and backend code.

    Layout: ``python/`` (the wheel's Python backend plus the stub for this interpreter),
    ``onnxruntime/model.py`` and ``dali/model.py`` (our Python-based backends). The folder name hashes
    everything that goes in, so an upgrade of any part gets a fresh folder and concurrent builders never
    see a half-written one.
    """
    root = _pytriton_root() / "tritonserver"
    pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / pyver / "triton_python_backend_stub"
    if not stub.is_file():
        raise EmbeddedServerError(
            f"nvidia-pytriton ships no Python backend stub for Python {pyver} (looked for {stub})"
        )
    digest = hashlib.sha256()
    digest.update(metadata.version("nvidia-pytriton").encode())
    digest.update(pyver.encode())
    digest.update(BACKEND_MODEL_PY.read_bytes())
    digest.update(DALI_MODEL_PY.read_bytes())
    for part in (stub, root / "backends" / "python" / "libtriton_python.so"):
        st = part.stat()
        digest.update(f"{part}:{st.st_size}:{st.st_mtime_ns}".encode())
    key = f"triton-backends-{metadata.version('nvidia-pytriton')}-py{pyver}-{digest.hexdigest()[:12]}"

    for base in (cache_root(), Path(tempfile.gettempdir()) / f"fitguard-{os.getuid()}"):
        target = base / key
        if (target / ".complete").is_file():
            return target
        try:
            base.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".building-", dir=base))
        except OSError:
            continue  # read-only cache: fall back to the temp folder
        try:
            shutil.copytree(
                root / "backends", staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
            )
            shutil.copy2(stub, staging / "python" / "triton_python_backend_stub")
            (staging / "onnxruntime").mkdir()
            shutil.copy2(BACKEND_MODEL_PY, staging / "onnxruntime" / "model.py")
            if not (staging / "dali").exists():  # a wheel with the real DALI backend keeps it
                (staging / "dali").mkdir()
                shutil.copy2(DALI_MODEL_PY, staging / "dali" / "model.py")
            (staging / ".complete").write_text(key + "\n")
            try:
                staging.rename(target)
            except OSError:
                if not (target / ".complete").is_file():  # not a lost race: a real failure
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target
    raise EmbeddedServerError("could not create a backend directory in the cache or the temp folder")


def server_environment() -> dict[str, str]:
    """This process's environment with the wheel's libraries and this interpreter first on the paths."""
    _, libs = find_tritonserver()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH")) if p)
    # The stub embeds Python and finds its prefix through `python3` on PATH: putting this interpreter's
    # bin/ first makes the stub see the same site-packages (numpy, onnxruntime, fitguard).
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in (bindir, env.get("PATH")) if p)
    return env


def has_gpu() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*"))
