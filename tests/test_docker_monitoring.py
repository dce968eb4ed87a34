"""The monitoring files (docker/monitoring), validated offline like the other deployment files.

promtool (from Debian's prometheus package, put in the venv by ``make setup``) checks the alert rules and
the Prometheus config and runs the rules' unit tests; every dashboard query is checked as PromQL by the
same parser; and the files are cross-checked with the compose file, the Kubernetes manifests, the metric
names the server exports (fitguard.monitoring) and the operations guide.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fitguard import monitoring

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "docker" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "fitguard.json"
ALERTS = MONITORING / "alerts.yml"
# The alerts the operations guide promises (issue: unfit share, quality median, queue time, not ready).
REQUIRED_ALERTS = {
    "FitguardUnfitShareAboveBaseline",
    "FitguardQualityMedianDropping",
    "FitguardQueueTimeOverBudget",
    "FitguardServerNotReady",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    bindir = Path(sys.executable).parent
    path = shutil.which("promtool", path=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    assert path, "promtool is missing: `make setup` extracts it from Debian's prometheus package"
    return path


def _promtool(promtool: str, *args: str, cwd: Path = MONITORING) -> str:
    proc = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _alerts() -> dict[str, dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_alert_rules_pass_promtool_and_their_unit_tests(promtool: str) -> None:
    assert "SUCCESS" in _promtool(promtool, "check", "rules", "alerts.yml")
    assert "SUCCESS" in _promtool(promtool, "test", "rules", "alerts.test.yml")
    tested = set(re.findall(r"alertname: (\w+)", (MONITORING / "alerts.test.yml").read_text()))
    assert tested == set(_alerts()), "every alert has a unit test"


def test_prometheus_config_passes_promtool(promtool: str) -> None:
    _promtool(promtool, "check", "config", "prometheus.yml")


def test_required_alerts_exist_and_are_documented() -> None:
    alerts = _alerts()
    assert set(alerts) >= REQUIRED_ALERTS
    guide = (ROOT / "docs" / "operations.md").read_text()
    for name, rule in alerts.items():
        assert name in guide, f"{name} is not explained in docs/operations.md"
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    queries = _dashboard_queries()
    assert len(queries) >= 10
    # promtool parses PromQL in rule files: check each query as a recording rule, Grafana variables filled.
    rules = [
        {
            "record": f"dashboard:query_{i}",
            "expr": q.replace("$__rate_interval", "5m").replace("$job", "fitguard"),
        }
        for i, q in enumerate(queries)
    ]
    (tmp_path / "dashboard.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    _promtool(promtool, "check", "rules", "dashboard.yml", cwd=tmp_path)


def test_dashboard_and_alerts_use_the_exported_metric_names() -> None:
    queries = "\n".join(_dashboard_queries())
    alerts = ALERTS.read_text()
    for name in (monitoring.VERDICTS, monitoring.REFUSALS, monitoring.QUALITY):
        assert name in alerts, name
    for name in (monitoring.VERDICTS, monitoring.REFUSALS, monitoring.QUALITY, monitoring.FIT_SCORE):
        assert name in queries, name
    assert monitoring.UNFIT_BY_CLASS in queries
    assert f'reason="{monitoring.REASON_BAD_IMAGE}"' in alerts
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["templating"]["list"][0]["name"] == "job"
    datasource = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uids = {d["uid"] for d in datasource["datasources"]}
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} <= uids


def test_compose_monitoring_services_point_at_the_server() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    for name in ("prometheus", "blackbox", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
        for volume in services[name].get("volumes", []):
            if volume["type"] == "bind":
                assert (ROOT / "docker" / volume["source"]).exists(), volume["source"]
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (target,) = jobs["fitguard"]["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in services and f"{port}:{port}" in " ".join(map(str, services[host]["ports"]))
    probe = jobs["fitguard-ready"]
    assert probe["static_configs"][0]["targets"][0].endswith("/v2/health/ready")
    assert any(r.get("replacement", "").startswith("blackbox:") for r in probe["relabel_configs"])
    for job in jobs:
        assert f'job="{job}"' in ALERTS.read_text()


def test_kubernetes_monitoring_selects_the_deployment() -> None:
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (MONITORING / resource).is_file()
    for generator in kustomization["configMapGenerator"]:
        for file in generator["files"]:
            assert (MONITORING / file).is_file(), file
    deployment = yaml.safe_load((ROOT / "docker" / "k8s" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]
    monitor = yaml.safe_load((MONITORING / "podmonitor.yaml").read_text())
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= ports
    # job="fitguard" in the rules: the value of the pod label the PodMonitor takes the job name from.
    assert pod["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "fitguard"
