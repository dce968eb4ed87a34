"""Read the server's Prometheus endpoint in tests (prometheus_client's parser, not a hand-written one)."""

from __future__ import annotations

import urllib.request


def scrape(metrics_url: str) -> dict[str, dict[tuple, float]]:
    """``/metrics`` parsed: sample name (``_total``, ``_bucket``, ``_count``...) -> {sorted labels: value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out
