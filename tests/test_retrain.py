"""Retrain requests: Alertmanager's webhook notifications POSTed to a real `trainchain hooks
serve` with a bearer token, and `trainchain hooks retrain`, become real chain runs of a toy
model through the one trigger queue, with one pending retrain per model and a cooldown."""

from __future__ import annotations

import email
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import Message
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ToyRepo, eventually, run_cli
from tests.test_hooks import SECRET, Server, serving, wait_final
from trainchain.core.alerts import parse_duration
from trainchain.core.errors import ConfigError
from trainchain.core.report import MAX_REASON_CHARS, clean_reason
from trainchain.core.settings import Settings
from trainchain.triggers.hooks import HookPaths, RunState, load_status, repo_key, try_lock
from trainchain.triggers.retrain import (
    BadAlerts,
    RetrainTarget,
    alert_reason,
    parse_target,
    read_alerts,
    target_map,
)
from trainchain.triggers.webhook import WebhookRuns

TOKEN = "alert-token-for-tests"
DRIFTED = "band_power p=0.0004 (PSI 0.41), covariance p=0.003"


@pytest.fixture
def model(toy_repo: ToyRepo) -> Path:
    """A toy model whose default hyperparameters reach the goal: one trial, a few seconds."""
    return toy_repo(threshold=0.3, max_trials=1)


def notification(model: str, *, status: str = "firing", **annotations: str) -> dict[str, Any]:
    """Alertmanager's webhook JSON (version 4), as its docs show it, for one drift alert."""
    labels = {"alertname": "TrainchainInputDrift", "model": model, "severity": "warning"}
    alert = {
        "status": status,
        "labels": labels,
        "annotations": annotations,
        "startsAt": "2024-05-01T09:52:26.739266876Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=trainchain_drift_pvalue",
        "fingerprint": "1a30ba71cca2921f",
    }
    return {
        "receiver": "trainchain-retrain",
        "status": status,
        "alerts": [alert],
        "groupLabels": {"alertname": "TrainchainInputDrift"},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": '{}:{alertname="TrainchainInputDrift"}',
        "truncatedAlerts": 0,
    }


def alert(server: Server, payload: Any, token: str | None = TOKEN) -> tuple[int, dict[str, Any]]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return server.request("POST", "/alerts", body, headers)


@contextmanager
def hooks_serve(
    settings: Settings, log: Path, *args: str
) -> Iterator[tuple[Server, subprocess.Popen[str]]]:
    """`trainchain hooks serve ARGS` (gunicorn, one worker) on a free port; SIGTERM at the end."""
    env = {**os.environ, "TRAINCHAIN_WEBHOOK_SECRET": SECRET.decode()}
    argv = [sys.executable, "-m", "trainchain", "hooks", "serve", "--port", "0", "--workers", "1"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*argv, "--executor", "local", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    try:
        listening = eventually(
            lambda: (
                proc.poll() is None
                and re.search(r"listening on (http://127\.0\.0\.1:\d+)/", log.read_text())
            ),
            "hooks serve to listen",
            60,
            poll=0.2,
            detail=log.read_text,
        )
        paths = HookPaths.under(settings.home)
        runs = WebhookRuns(paths, home=settings.home, python=sys.executable, env=env)
        yield Server(listening[1], runs, paths), proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)


def outbox_mails(home: Path) -> list[Message]:
    return [
        email.message_from_bytes(p.read_bytes(), policy=default_policy)
        for p in sorted((home / "outbox").glob("*.eml"))
    ]


def plain_text(message: Message) -> str:
    body = message.get_body(preferencelist=("plain",))  # type: ignore[attr-defined]
    return str(body.get_content())


@pytest.mark.slow
def test_a_drift_alert_retrains_the_model_once_and_its_email_says_why(
    model: Path, home: Path, settings: Settings, tmp_path: Path
) -> None:
    """A firing drift alert POSTed to `hooks serve` with the bearer token queues a chain run
    of the mapped repository's branch head; a second alert while it is pending queues
    nothing; the run succeeds and its email and report say why it ran; afterwards the model
    cools down, also after the server was restarted."""
    url = f"file://{model}"
    token_file = tmp_path / "alert-token"
    token_file.write_text(TOKEN + "\n")
    args = ("--alert-token-file", str(token_file), "--retrain", f"toy={url}@main")
    args += ("--retrain-cooldown", "1h")
    paths = HookPaths.under(settings.home)
    payload = notification("toy", drifted=DRIFTED, summary="input drift on toy")
    payload["alerts"].append(notification("toy", status="resolved")["alerts"][0])
    payload["alerts"].append(notification("other-model")["alerts"][0])
    with hooks_serve(settings, tmp_path / "serve.log", *args) as (server, _):
        with try_lock(paths.lock(repo_key(url))) as held:  # the run waits while it is held
            assert held
            code, body = alert(server, payload)
            assert code == 200, body
            queued, resolved, other = body["alerts"]
            assert queued["outcome"] == "queued" and queued["model"] == "toy"
            run_id = queued["run_id"]
            assert queued["reason"] == f"drift alert TrainchainInputDrift for toy: {DRIFTED}"
            assert resolved == {
                "alertname": "TrainchainInputDrift",
                "model": "toy",
                "ignored": "resolved",
            }
            assert "other-model is not a model this server retrains (toy)" in other["ignored"]

            code, again = alert(server, notification("toy", drifted=DRIFTED))
            assert code == 200
            assert again["alerts"][0]["outcome"] == "pending"
            assert again["alerts"][0]["detail"] == f"already pending: {run_id}"
            assert load_status(paths, run_id).state in (RunState.QUEUED, RunState.RUNNING)
        done = wait_final(lambda: server.status(run_id))
        assert done.state is RunState.SUCCEEDED, Path(done.log).read_text()
        assert done.trigger == "alert" and done.model == "toy" and done.commit == "main"
        assert done.reason == queued["reason"]
        assert f"--reason={queued['reason']}" in Path(done.log).read_text()
        assert f"why:       {queued['reason']}" in Path(done.log).read_text()

        code, cooling = alert(server, notification("toy", drifted=DRIFTED))
        assert code == 200 and cooling["alerts"][0]["outcome"] == "cooling_down"
        assert "toy is cooling down until " in cooling["alerts"][0]["detail"]
    assert TOKEN not in (tmp_path / "serve.log").read_text()

    (mail,) = outbox_mails(home)
    assert f"Why this run: drift alert TrainchainInputDrift for toy: {DRIFTED}" in plain_text(mail)
    (report,) = (json.loads(p.read_text()) for p in (home / "chains").glob("*.json"))
    assert report["reason"] == queued["reason"]

    with hooks_serve(settings, tmp_path / "again.log", *args) as (server, _):
        code, restarted = alert(server, notification("toy", drifted=DRIFTED))
    assert code == 200 and restarted["alerts"][0]["outcome"] == "cooling_down"
    assert restarted["alerts"][0]["detail"] == cooling["alerts"][0]["detail"]
    assert len(outbox_mails(home)) == 1  # no second run


RETRAINS = {"toy": RetrainTarget("toy", "file:///nowhere/toy.git")}


ON = {"alert_token": TOKEN.encode()}


@pytest.mark.parametrize(
    ("sent", "code", "error"),
    [
        (({}, notification("toy"), TOKEN), 404, "no alert endpoint: this server has no alert"),
        ((ON, notification("toy"), None), 401, "no Authorization header"),
        ((ON, notification("toy"), "wrong"), 401, "the bearer token is not this server's"),
        ((ON, b"{not json", TOKEN), 400, "the body is not JSON"),
        ((ON, {"alerts": []}, TOKEN), 400, "expected Alertmanager's webhook JSON"),
        (
            (ON, {"version": "4", "alerts": [{"status": "firing", "labels": {"a": 1}}]}, TOKEN),
            400,
            "alerts[0].labels is not an object of strings",
        ),
        ((ON, b"x" * 2048, TOKEN), 413, "the limit is 1024"),
    ],
)
def test_alerts_refused_as_a_whole_queue_nothing(
    settings: Settings, sent: tuple[dict[str, Any], Any, str | None], code: int, error: str
) -> None:
    """Without a configured token /alerts is 404 with a hint; a missing or wrong token is
    401, a body that is not Alertmanager's JSON 400, an oversize one 413: no run queued."""
    options, payload, token = sent
    with serving(settings, max_body=1024, retrain=RETRAINS, **options) as server:
        got_code, got = alert(server, payload, token)
    assert got_code == code, got
    assert error in got["error"]
    if code == 404:
        assert "--alert-token-file" in got["hint"]
    assert not server.paths.runs.exists()


def test_hooks_retrain_queues_once_then_cools_down(settings: Settings, home: Path) -> None:
    """`trainchain hooks retrain` queues a retrain as an alert would: a second one while it
    is pending says so; once it ran (and failed: the repository is not there), the model
    cools down (exit 9) unless the cooldown is 0."""
    url = "/nowhere/toy.git"
    target = f"toy={url}@main"
    base = ("hooks", "retrain", target, "--executor", "local", "--home", str(home))
    paths = HookPaths.under(settings.home)
    with try_lock(paths.lock(repo_key(url))) as held:
        assert held
        first = run_cli(*base, "--reason", "cron: weekly retrain")
        assert first.returncode == 0, first.stderr
        run_id = re.search(r"queued (\S+) \(a chain run here\)", first.stdout)
        assert run_id, first.stdout
        second = run_cli(*base, "--reason", "cron: weekly retrain")
        assert second.returncode == 0, second.stderr
        assert f"retrain toy: already pending: {run_id[1]}" in second.stdout
    done = wait_final(lambda: load_status(paths, run_id[1]))
    assert done.state is RunState.FAILED and done.reason == "cron: weekly retrain"
    assert done.trigger == "retrain" and done.commit == "main"

    cooling = run_cli(*base, "--reason", "again")
    assert cooling.returncode == 9 and "toy is cooling down until" in cooling.stdout
    forced = run_cli(*base, "--reason", "again", "--cooldown", "0")
    assert forced.returncode == 0 and "retrain toy: queued" in forced.stdout
    wait_final(lambda: load_status(paths, forced.stdout.split("queued ")[1].split()[0]))


# ---- pure decisions ------------------------------------------------------------------------
def test_mapping_alerts_reasons_and_durations() -> None:
    """MODEL=REPOSITORY[@BRANCH] keeps the @ of URLs; Alertmanager's JSON is read strictly;
    the reason names the alert, the model and what drifted, on one bounded line."""
    assert parse_target("m=https://h/x.git@dev") == RetrainTarget("m", "https://h/x.git", "dev")
    assert parse_target("m=git@h:team/x.git") == RetrainTarget("m", "git@h:team/x.git", "main")
    assert parse_target("m=git@h:x.git@rel/1") == RetrainTarget("m", "git@h:x.git", "rel/1")
    assert parse_target("m=https://u@h/x.git").repository == "https://u@h/x.git"
    assert parse_target("m=/srv/x.git").branch == "main"
    for bad in ("m", "=x", "m=", "bad name=/x", "m=-x", "m=/x@-b"):
        with pytest.raises(ConfigError):
            parse_target(bad)
    with pytest.raises(ConfigError, match="names m twice"):
        target_map(["m=/a", "m=/b"])

    (drift,) = read_alerts(notification("eeg", drifted=DRIFTED, summary="s"))
    assert drift.model == "eeg" and drift.status == "firing"
    assert alert_reason(drift) == f"drift alert TrainchainInputDrift for eeg: {DRIFTED}"
    (summary,) = read_alerts(notification("eeg", summary="drift\non  two lines"))
    assert alert_reason(summary).endswith("for eeg: drift on two lines")
    (bare,) = read_alerts(notification("eeg"))
    assert alert_reason(bare) == "drift alert TrainchainInputDrift for eeg"
    for payload in ([], {"version": "3", "alerts": []}, {"version": "4"}):
        with pytest.raises(BadAlerts):
            read_alerts(payload)
    assert len(clean_reason("x" * 10_000)) == MAX_REASON_CHARS

    assert [parse_duration(t) for t in ("90", "30m", "6h", "1d", "0")] == [
        90.0,
        1800.0,
        21600.0,
        86400.0,
        0.0,
    ]
    for bad in ("6 hours", "-1", "31d"):
        with pytest.raises(ConfigError):
            parse_duration(bad)
