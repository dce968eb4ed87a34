#!/usr/bin/env python3
"""The GPU figures of docs/performance.md in one JSON: ``python scripts/gpu_check.py --out FILE``.

Runs from a source checkout without installing it (the GPU machine has PyTorch and CUDA only); the work
is in :mod:`fitguard.bench.gpu_check`. ``--dry-run`` checks the command on the CPU with tiny sizes.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fitguard.bench.gpu_check import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
