"""``fitguard export --monitoring on|off``: keep or drop the ensemble's monitor step.

The committed ensemble config includes the monitor (the default). Dropping it removes the step and
renames the internal tensors it read to the ensemble outputs it wrote, so the ensemble returns the
detector's and quality's tensors directly; the preprocess step's bad-image counter follows the same switch.
"""

from __future__ import annotations

from typing import Any

from fitguard.contract import MONITOR

MONITORING = ("on", "off")


def check_monitoring(monitoring: str) -> bool:
    """``True`` for ``on``; ValueError for anything but ``on``/``off``."""
    if monitoring not in MONITORING:
        raise ValueError(f"monitoring must be one of {', '.join(MONITORING)}, got {monitoring!r}")
    return monitoring == "on"


def drop_monitor_step(ensemble: Any) -> None:
    """Remove the monitor step from an ensemble ``ModelConfig`` and rewire what it passed through."""
    steps = ensemble.ensemble_scheduling.step
    found = [i for i, step in enumerate(steps) if step.model_name == MONITOR]
    if not found:
        return
    monitor = steps[found[0]]
    renames = {monitor.input_map[key]: value for key, value in monitor.output_map.items()}
    del steps[found[0]]
    for step in steps:
        for mapping in (step.input_map, step.output_map):
            for key, value in list(mapping.items()):
                mapping[key] = renames.get(value, value)
