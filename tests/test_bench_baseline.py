"""``fitguard bench --baseline-repository``: two repositories served together, measured in alternating
rounds."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest


def _args(*argv: str) -> argparse.Namespace:
    from fitguard.bench.command import configure

    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(list(argv))


def test_baseline_needs_a_served_repository() -> None:
    from fitguard.bench.command import config_from_args

    with pytest.raises(SystemExit, match="--baseline-repository goes with --model-repository"):
        config_from_args(_args("--url", "localhost:8001", "--baseline-repository", "x"))
    cfg = config_from_args(
        _args("--model-repository", "a", "--baseline-repository", "b", "--baseline-rounds", "2")
    )
    assert (cfg.baseline_repository, cfg.baseline_rounds) == ("b", 2)


@pytest.mark.slow
@pytest.mark.server
def test_baseline_rounds_and_ratios(tiny_repository: Path) -> None:
    from fitguard.bench import report
    from fitguard.bench.baseline import compare_two_servers
    from fitguard.bench.inputs import load_images

    images, _ = load_images(None, 4)
    # The same repository on both sides: the mechanism, not a timing claim (ratios near 1 on a quiet machine).
    result = compare_two_servers(
        tiny_repository, tiny_repository, images, concurrency=(1, 2), requests=6, duration=None, rounds=2
    )
    for side in ("repository", "baseline"):
        levels = result[side]
        assert [lv["concurrency"] for lv in levels] == [1, 2]
        for lv in levels:
            assert lv["errors"] == 0 and lv["throughput"] > 0 and lv["p50_ms"] > 0
            assert len(lv["rounds"]) == 2
    assert result["served_vs_baseline"] > 0 and result["p50_vs_baseline"] > 0
    ratios = report.ratios({"baseline": result})
    assert ratios["served_vs_baseline"] == result["served_vs_baseline"]
    assert report.targets(ratios)["served_vs_baseline"]["target"] == ">= 0.95"
