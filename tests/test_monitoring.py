"""Monitoring as code (monitoring/): the files check with the real promtool and amtool, the
alert rules' unit tests pass, and the real Prometheus and Alertmanager (Debian's, started by
scripts/start-monitoring.sh) carry a drift alert to a webhook with its bearer token.

The tools come from Debian's prometheus and prometheus-alertmanager packages, which
`scripts/start-monitoring.sh --install-only` installs (.ci/run does). Where they are missing
the tests that need them are skipped with the reason, except where CI is set: there that
fails the run. The dashboard's and rules' metric names are checked without any tool.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask, request
from prometheus_client import Gauge, make_wsgi_app
from werkzeug.serving import BaseWSGIServer, make_server

from tests.conftest import eventually, start_script, unavailable
from trainchain.serving.metrics import ServingMetrics

REPO_ROOT = Path(__file__).resolve().parents[1]
MONITORING = REPO_ROOT / "monitoring"
PROMETHEUS_YML = MONITORING / "prometheus.yml"
RULES = MONITORING / "rules" / "trainchain.rules.yml"
RULE_TESTS = MONITORING / "tests" / "trainchain.rules.test.yml"
ALERTMANAGER_YML = MONITORING / "alertmanager.yml"
DASHBOARDS = MONITORING / "grafana" / "dashboards"
START = REPO_ROOT / "scripts" / "start-monitoring.sh"

# The drift metrics the drift statistics will export (issue 14's agreed names): gauges
# with the labels model and group. The rules and the dashboard are written against them.
DRIFT_METRICS = {
    "trainchain_drift_score",
    "trainchain_drift_p_value",
    "trainchain_drift_window_size",
    "trainchain_drift_detected",
}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}
METRIC_NAME = re.compile(r"\btrainchain_[a-z0-9_]+")
WAIT = 60.0

pytestmark = pytest.mark.monitoring


def require(tool: str) -> str:
    """The path of a Prometheus tool; skip where it is missing, but fail where CI is set."""
    path = shutil.which(tool)
    if path is None:
        unavailable(
            f"{tool} is not installed (scripts/start-monitoring.sh --install-only installs "
            "Debian's prometheus and prometheus-alertmanager)",
            "monitoring",
        )
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=MONITORING, capture_output=True, text=True, timeout=120, check=False
    )


# --------------------------------------------------------------------------- the files


def test_promtool_accepts_the_prometheus_config_and_its_rules() -> None:
    """`promtool check config` passes prometheus.yml and finds the rule file it names."""
    result = run(require("promtool"), "check", "config", str(PROMETHEUS_YML))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_promtool_accepts_the_rules() -> None:
    """`promtool check rules` passes the alert rules."""
    result = run(require("promtool"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_accepts_the_alertmanager_config() -> None:
    """`amtool check-config` passes alertmanager.yml with its two receivers."""
    result = run(require("amtool"), "check-config", str(ALERTMANAGER_YML))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 receivers" in result.stdout


def test_the_rules_unit_tests_pass() -> None:
    """`promtool test rules`: each alert fires on its series after its `for:`, not on
    normal series or a blip (monitoring/tests/trainchain.rules.test.yml)."""
    result = run(require("promtool"), "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_every_alert_has_a_unit_test_that_sees_it_fire() -> None:
    """Each alert of the rules is expected firing in at least one promtool unit test."""
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    names = {rule["alert"] for rule in alert_rules()}
    assert names == {
        "TrainchainInputDrift",
        "TrainchainHighErrorRate",
        "TrainchainHighLatency",
        "TrainchainNoModelLoaded",
        "TrainchainTargetDown",
    }
    assert names - fired == set()


def test_the_drift_alert_waits_ten_minutes_and_names_its_model() -> None:
    """TrainchainInputDrift fires on max by (model) of drift_detected == 1 for 10m, labelled
    with its model and a severity, and says which groups moved."""
    (drift,) = [r for r in alert_rules() if r["alert"] == "TrainchainInputDrift"]
    assert drift["expr"].strip() == "max by (model) (trainchain_drift_detected) == 1"
    assert drift["for"] == "10m"
    assert drift["labels"]["severity"]
    assert ".Labels.group" in drift["annotations"]["description"]


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=TrainchainInputDrift", "model=eeg-motor-imagery"], "trainchain-retrain"),
        (["alertname=TrainchainHighErrorRate", "endpoint=/predict"], "team-email"),
        (["alertname=TrainchainHighLatency"], "team-email"),
        (["alertname=TrainchainNoModelLoaded"], "team-email"),
        (["alertname=TrainchainTargetDown", "job=trainchain-serve"], "team-email"),
    ],
)
def test_alertmanager_routes_drift_to_the_retrain_webhook_and_the_rest_by_email(
    labels: list[str], receiver: str
) -> None:
    """`amtool config routes test`: the drift alert goes to the webhook, the others to email."""
    result = run(
        require("amtool"),
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_YML}",
        *labels,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_the_webhook_is_hooks_alerts_with_a_bearer_token_from_a_file() -> None:
    """The retrain receiver POSTs to /alerts of `trainchain hooks serve` (port 8088) with
    bearer auth read from a file, per model, repeated at most once a day."""
    config = yaml.safe_load(ALERTMANAGER_YML.read_text())
    (receiver,) = [r for r in config["receivers"] if r["name"] == "trainchain-retrain"]
    (hook,) = receiver["webhook_configs"]
    assert hook["url"] == "http://127.0.0.1:8088/alerts"
    auth = hook["http_config"]["authorization"]
    assert auth == {"type": "Bearer", "credentials_file": "alert-webhook-token"}
    (route,) = config["route"]["routes"]
    assert route["receiver"] == "trainchain-retrain"
    assert route["group_by"] == ["alertname", "model"]
    assert route["repeat_interval"] == "24h"


# --------------------------------------------------------------------------- metric names


def served_metric_names() -> set[str]:
    """The series names `trainchain serve` exposes (serving/metrics.py, as prometheus_client
    names them: a counter's _total, a histogram's _bucket...), and the agreed drift names."""
    names = set(DRIFT_METRICS)
    for family in ServingMetrics().registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def dashboard_queries() -> dict[str, str]:
    """Every PromQL query of the dashboards (panel targets and template variables), by where
    it is."""
    queries: dict[str, str] = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                queries[f"{path.name}: {panel['title']} {target['refId']}"] = target["expr"]
        for variable in dashboard["templating"]["list"]:
            query = variable["query"]
            queries[f"{path.name}: ${variable['name']}"] = (
                query["query"] if isinstance(query, dict) else query
            )
    return queries


def test_metric_names_cover_the_serving_and_drift_metrics() -> None:
    """The name check knows the serving metrics under their exposed names."""
    names = served_metric_names()
    assert {
        "trainchain_serving_requests_total",
        "trainchain_serving_request_duration_seconds_bucket",
        "trainchain_serving_predictions_total",
        "trainchain_serving_model_info",
        "trainchain_drift_detected",
    } <= names


def test_the_dashboard_queries_name_only_metrics_that_exist() -> None:
    """Each PromQL query of the Grafana dashboard names only metrics serving/metrics.py
    exposes or the agreed drift metrics: renaming a metric fails here."""
    queries = dashboard_queries()
    assert len(queries) >= 10
    names = served_metric_names()
    unknown = {
        where: sorted(set(METRIC_NAME.findall(expr)) - names) for where, expr in queries.items()
    }
    assert {where: bad for where, bad in unknown.items() if bad} == {}
    used = {name for expr in queries.values() for name in METRIC_NAME.findall(expr)}
    # requests, latency, predictions per class, drift per group, the served version
    assert {
        "trainchain_serving_requests_total",
        "trainchain_serving_request_duration_seconds_bucket",
        "trainchain_serving_predictions_total",
        "trainchain_serving_model_version",
        *DRIFT_METRICS,
    } <= used


def test_the_alert_rules_name_only_metrics_that_exist() -> None:
    """Each alert's expression names only exposed serving metrics or the drift metrics."""
    names = served_metric_names()
    unknown = {
        rule["alert"]: sorted(set(METRIC_NAME.findall(rule["expr"])) - names)
        for rule in alert_rules()
    }
    assert {alert: bad for alert, bad in unknown.items() if bad} == {}


def test_grafana_provisions_the_dashboards_folder_and_the_prometheus_datasource() -> None:
    """The provisioning names the datasource uid the dashboard uses and the folder compose
    mounts the dashboards at."""
    provisioning = MONITORING / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "trainchain.yml").read_text())[
        "providers"
    ]
    for path in DASHBOARDS.glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == source["uid"], panel["title"]
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./monitoring/grafana/dashboards:{provider['options']['path']}:ro" in mounts


def test_compose_monitoring_images_are_the_versions_the_tests_run() -> None:
    """docker-compose.yml pins prom/prometheus and prom/alertmanager to the versions of
    Debian's packages these tests run, and mounts only files that exist."""
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for service, binary in (("prometheus", "prometheus"), ("alertmanager", "amtool")):
        out = run(require(binary), "--version")
        version = re.search(r"version (\d+\.\d+\.\d+)", out.stdout + out.stderr)
        assert version, out
        assert services[service]["image"].endswith(f":v{version.group(1)}")
    for service in ("prometheus", "alertmanager", "grafana"):
        assert services[service]["profiles"] == ["monitoring"]
        for volume in services[service]["volumes"]:
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (REPO_ROOT / source).exists(), volume


# --------------------------------------------------------------------------- end to end


@dataclass
class Receiver:
    """A real loopback HTTP receiver of Alertmanager's webhook: every POST /alerts."""

    url: str
    posts: list[tuple[str | None, Any]] = field(default_factory=list)


@dataclass
class Live:
    prometheus: str
    alertmanager: str
    token: str
    drift: Gauge
    receiver: Receiver
    folder: Path


def serve_in_thread(server: BaseWSGIServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    return thread


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback http://
        return json.loads(response.read())


def query(prometheus: str, expr: str) -> Any:
    """The result of an instant query; a query Prometheus refuses fails the test."""
    url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    try:
        body = get_json(url)
    except urllib.error.HTTPError as err:
        pytest.fail(f"Prometheus refused {expr!r}: {err.read().decode()}", pytrace=False)
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """Prometheus and Alertmanager started by scripts/start-monitoring.sh with short
    intervals (scrape and evaluate every 1s, every `for:` 3s, group_wait 1s), scraping a
    real HTTP /metrics and sending the drift alert to a real loopback receiver.

    The scraped endpoint is a small prometheus_client WSGI server here, not `trainchain
    serve` (which sets the drift gauges from its tests of real inputs,
    tests/test_serving_drift.py): it serves the real ServingMetrics registry (a champion
    loaded, so no other alert fires) whose trainchain_drift_detected the test flips."""
    for tool in ("prometheus", "prometheus-alertmanager", "promtool", "amtool", "curl"):
        require(tool)
    folder = tmp_path_factory.mktemp("monitoring")
    metrics = ServingMetrics()
    metrics.model_info.labels("eeg-motor-imagery", "champion", "1").set(1)
    metrics.model_version.labels("eeg-motor-imagery", "champion").set(1)
    drift = metrics.drift_detected
    for group in ("band_power", "csp", "class_shares"):
        drift.labels("eeg-motor-imagery", group).set(0)
    scraped = make_server("127.0.0.1", 0, make_wsgi_app(metrics.registry), threaded=True)

    hook = Flask("alert-receiver")
    receiver = Receiver(url="")

    @hook.post("/alerts")
    def alerts() -> tuple[str, int]:
        receiver.posts.append((request.headers.get("Authorization"), request.get_json()))
        return "", 200

    received = make_server("127.0.0.1", 0, hook, threaded=True)
    receiver.url = f"http://127.0.0.1:{received.server_port}/alerts"
    threads = [serve_in_thread(scraped), serve_in_thread(received)]
    token = "test-token-" + folder.name
    token_file = folder / "token"
    token_file.write_text(token)
    run_dir = folder / "run"
    try:
        # installing the packages, where missing, takes a minute (start_script waits 600 s)
        exported = start_script(
            [
                str(START),
                "--dir",
                str(run_dir),
                "--prometheus-port",
                "0",
                "--alertmanager-port",
                "0",
                "--serve-target",
                f"127.0.0.1:{scraped.server_port}",
                "--webhook-url",
                receiver.url,
                "--token-file",
                str(token_file),
                "--interval",
                "1s",
                "--for",
                "3s",
                "--group-wait",
                "1s",
            ]
        )
        yield Live(
            prometheus=exported["PROMETHEUS_URL"],
            alertmanager=exported["ALERTMANAGER_URL"],
            token=token,
            drift=drift,
            receiver=receiver,
            folder=run_dir,
        )
    finally:
        if run_dir.is_dir():
            subprocess.run([str(START), "--stop", str(run_dir)], timeout=60, check=False)
        for server in (scraped, received):
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join()


def logs(live: Live) -> str:
    return "\n".join(
        f"--- {name}.log\n" + (live.folder / f"{name}.log").read_text()[-3000:]
        for name in ("prometheus", "alertmanager")
    )


def test_the_script_prints_urls_of_both_and_renders_into_its_folder(live: Live) -> None:
    """start-monitoring.sh prints loopback URLs of a ready Prometheus and Alertmanager and
    keeps the committed files' production values out of its rendered copies only."""
    assert live.prometheus.startswith("http://127.0.0.1:")
    assert live.alertmanager.startswith("http://127.0.0.1:")
    assert get_json(f"{live.alertmanager}/api/v2/status")["cluster"]["status"] == "disabled"
    assert "scrape_interval: 1s" in (live.folder / "prometheus.yml").read_text()
    assert "for: 3s" in (live.folder / "rules" / "trainchain.rules.yml").read_text()
    assert "scrape_interval: 15s" in PROMETHEUS_YML.read_text()
    assert "for: 10m" in RULES.read_text()


def test_drift_fires_and_alertmanager_posts_it_to_the_webhook_with_the_token(
    live: Live,
) -> None:
    """Prometheus scrapes the drift series; once band_power rejects, TrainchainInputDrift
    fires and Alertmanager POSTs it (alertname, model, the group in its annotations) to the
    receiver with the bearer token from the file. Only drift alerts reach the webhook."""

    def scraped_without_drift() -> bool:
        rows = query(live.prometheus, 'trainchain_drift_detected{group="band_power"}')
        return bool(rows) and rows[0]["value"][1] == "0"

    eventually(
        scraped_without_drift, "the drift series to be scraped", WAIT, 0.2, lambda: logs(live)
    )
    assert query(live.prometheus, 'ALERTS{alertname="TrainchainInputDrift"}') == []
    assert live.receiver.posts == []

    live.drift.labels("eeg-motor-imagery", "band_power").set(1)

    def posted() -> list[tuple[str | None, Any]]:
        return list(live.receiver.posts)

    posts = eventually(posted, "Alertmanager's POST to the webhook", WAIT, 0.2, lambda: logs(live))
    authorization, payload = posts[0]
    assert authorization == f"Bearer {live.token}"
    assert payload["status"] == "firing"
    assert payload["receiver"] == "trainchain-retrain"
    assert payload["groupLabels"] == {
        "alertname": "TrainchainInputDrift",
        "model": "eeg-motor-imagery",
    }
    (alert,) = payload["alerts"]
    assert alert["labels"]["alertname"] == "TrainchainInputDrift"
    assert alert["labels"]["model"] == "eeg-motor-imagery"
    assert alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["groups"] == "band_power"
    assert all(
        a["labels"]["alertname"] == "TrainchainInputDrift"
        for _, body in posts
        for a in body["alerts"]
    )


def test_every_dashboard_query_runs_on_the_real_prometheus(live: Live) -> None:
    """Prometheus accepts each dashboard query (Grafana's variables filled in)."""
    for where, expr in dashboard_queries().items():
        filled = expr.replace("$__rate_interval", "1m").replace("$model", ".*")
        if expr.startswith("label_values("):  # Grafana's, not PromQL: the series it reads
            metric = expr.removeprefix("label_values(").split(",", 1)[0]
            filled = f"count by (model) ({metric})"
        assert isinstance(query(live.prometheus, filled), list), where
