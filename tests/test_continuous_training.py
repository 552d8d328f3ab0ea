"""Continuous training, end to end, with real parts only (issue 14): the EEG example in a
bare git repository, trained once by the chain into a champion; a real `trainchain serve`
of it fed drifted epochs; a real `trainchain hooks serve` mapping the model to the bare
repository; and either the real Prometheus and Alertmanager (Debian's, started by
scripts/start-monitoring.sh) carrying the drift alert to the hooks server, or the service
asking the hooks server itself (`serve --retrain-url`). Either way a chain run is queued,
succeeds, and its email says why it ran and which feature groups drifted.

The pure rules of the direct path (the streak every worker shares, its cooldown) are
tested on the window's SQLite file at the end, without any server.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import (
    REPO_ROOT,
    eventually,
    fetch,
    free_port,
    git,
    git_init,
    run_cli,
    start_script,
    stop,
    unavailable,
)
from tests.test_hooks import wait_final
from tests.test_retrain import hooks_serve, outbox_mails, plain_text
from trainchain.adapters.tracking import Tracker
from trainchain.chain.registry import download_heldout
from trainchain.core.settings import Settings, load_settings
from trainchain.families.eeg_synth import write_synthetic_dataset
from trainchain.serving.drift import WindowStore
from trainchain.triggers.hooks import HookPaths, RunState, RunStatus, recent_runs

EXAMPLE = REPO_ROOT / "examples" / "eeg-motor-imagery"
START = REPO_ROOT / "scripts" / "start-monitoring.sh"
NAME = "eeg-motor-imagery"
TOKEN = "continuous-training-token"
WAIT = 90.0  # bounds waits that take seconds; only a hang reaches it
WHY = f"Why this run: drift alert TrainchainInputDrift for {NAME}: "


@dataclass
class Loop:
    """A champion trained from ``bare`` by the chain, in its own TRAINCHAIN_HOME."""

    home: Path
    settings: Settings
    bare: Path
    source: Path  # the working copy: its trainchain.yaml is also --monitoring-config
    data: Path
    drifted: np.ndarray  # the champion's held-out epochs with C3's gain x1.5
    root: Path


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    """The EEG example with one trial per chain (easy synthetic data, 288 cues) and
    `persist_windows: 2`, pushed to a bare repository and run once by `trainchain run` of
    that repository: version 1, the champion. TRAINCHAIN_HOME is the loop's own for the
    module (the servers and chains started here inherit it); no SMTP: mail to the outbox."""
    root = tmp_path_factory.mktemp("continuous")
    home = root / "home"
    data = root / "eeg"
    write_synthetic_dataset(data, subjects=1, difficulty="easy", seed=0, trials_per_class=144)
    source = root / "eeg-model"
    shutil.copytree(EXAMPLE, source)
    yaml_file = source / "trainchain.yaml"
    text = yaml_file.read_text()
    for old, new in (
        ("budget: {max_trials: 25,", "budget: {max_trials: 1,"),
        ("persist_windows: 3 ", "persist_windows: 2 "),
    ):
        assert old in text, f"examples/eeg-motor-imagery/trainchain.yaml has no {old!r}"
        text = text.replace(old, new)
    yaml_file.write_text(text)
    git_init(source)
    bare = root / "eeg.git"
    git(root, "clone", "-q", "--bare", str(source), str(bare))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TRAINCHAIN_HOME", str(home))
        for var in list(os.environ):
            if var.startswith(("TRAINCHAIN_SMTP_", "MLFLOW_", "JENKINS_")) or var == "BUILD_URL":
                env.delenv(var, raising=False)
        first = run_cli(
            "run", f"file://{bare}", "--ref", "main", "--data", str(data), "--executor", "local"
        )
        assert first.returncode == 0, first.stdout + first.stderr
        settings = load_settings()
        tracker = Tracker(settings.tracking_uri, settings.artifacts)
        assert tracker.alias_version(NAME, "champion") == "1", first.stdout
        run_id = tracker.version_run_id(NAME, "1") or ""
        with np.load(download_heldout(tracker, run_id, root / "heldout")) as held:
            heldout = root / "heldout.npy"
            np.save(heldout, held["X"])
        gain = root / "gain.npy"
        made = run_cli("data", "drift-epochs", "--input", str(heldout), "--shift", "gain",
                       "--out", str(gain))  # fmt: skip
        assert made.returncode == 0, made.stderr
        yield Loop(home, settings, bare, source, data, np.load(gain), root)


# --------------------------------------------------------------------------- helpers


def npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@contextmanager
def trainchain_serve(loop: Loop, log: Path, *args: str) -> Iterator[str]:
    """A real `trainchain serve` of the champion (one worker, drift tested at most every
    second, the loop's monitoring: section), healthy; SIGTERM at the end."""
    port = free_port()
    argv = [sys.executable, "-m", "trainchain", "serve", "--model", NAME, "--port", str(port)]
    argv += ["--monitoring-config", str(loop.source), "--drift-interval", "1", *args]
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"trainchain serve exited {proc.returncode}:\n{log.read_text()}")
        try:
            return fetch(f"{url}/health")[0] == 200
        except OSError:
            return False

    try:
        eventually(healthy, "trainchain serve to be healthy", WAIT, 0.2, log.read_text)
        yield url
    finally:
        stop(proc)


def send_drifted(url: str, loop: Loop) -> None:
    """The drifted epochs to /classify, 16 per request: each answered."""
    for start in range(0, len(loop.drifted), 16):
        code, body = fetch(
            f"{url}/classify", npy(loop.drifted[start : start + 16]), "application/x-npy"
        )
        assert code == 200, body


def drifted(url: str) -> dict[str, Any] | None:
    body = fetch(f"{url}/drift")[1]
    return body if body.get("drifted") else None


def alert_run(loop: Loop) -> RunStatus | None:
    """The newest run a drift alert queued, if any."""
    runs = [r for r in recent_runs(HookPaths.under(loop.home)) if r.trigger == "alert"]
    return max(runs, key=lambda r: r.queued_at) if runs else None


def token_file(loop: Loop) -> Path:
    path = loop.root / "alert-token"
    path.write_text(TOKEN + "\n")
    return path


def hooks_args(loop: Loop, cooldown: str) -> tuple[str, ...]:
    return (
        "--alert-token-file",
        str(token_file(loop)),
        "--retrain",
        f"{NAME}=file://{loop.bare}@main",
        "--retrain-cooldown",
        cooldown,
        "--data",
        str(loop.data),
    )


def succeeded_with_reason(loop: Loop, run: RunStatus, mails_before: int) -> str:
    """The retrain run succeeded; its email says why it ran; the reason it was given."""
    done = wait_final(lambda: _status(loop, run.run_id))
    assert done.state is RunState.SUCCEEDED, Path(done.log).read_text()[-4000:]
    assert done.model == NAME and done.commit == "main"
    mails = outbox_mails(loop.home)
    assert len(mails) == mails_before + 1
    text = plain_text(mails[-1])
    assert WHY in text, text
    return done.reason or ""


def _status(loop: Loop, run_id: str) -> RunStatus | None:
    return next((r for r in recent_runs(HookPaths.under(loop.home)) if r.run_id == run_id), None)


# --------------------------------------------------------------------------- Prometheus


@dataclass
class Monitoring:
    prometheus: str
    folder: Path


@contextmanager
def monitoring(loop: Loop, serve_url: str, webhook: str, folder: Path) -> Iterator[Monitoring]:
    """Prometheus and Alertmanager by scripts/start-monitoring.sh: scrape and evaluate every
    1s, every `for:` 3s, group_wait 1s; scraping ``serve_url``, the drift alert to
    ``webhook`` with the loop's token. Stopped with --stop at the end."""
    for tool in ("prometheus", "prometheus-alertmanager", "promtool", "amtool", "curl"):
        if shutil.which(tool) is None:
            unavailable(
                f"{tool} is not installed (scripts/start-monitoring.sh --install-only)",
                "monitoring",
            )
    target = urllib.parse.urlsplit(serve_url).netloc
    argv = [str(START), "--dir", str(folder), "--prometheus-port", "0"]
    argv += ["--alertmanager-port", "0", "--serve-target", target, "--webhook-url", webhook]
    argv += ["--token-file", str(token_file(loop)), "--interval", "1s", "--for", "3s"]
    argv += ["--group-wait", "1s"]
    try:
        exported = start_script(argv)
        yield Monitoring(exported["PROMETHEUS_URL"], folder)
    finally:
        if folder.is_dir():
            subprocess.run([str(START), "--stop", str(folder)], timeout=60, check=False)


def firing_drift_alert(prometheus: str) -> dict[str, Any] | None:
    alerts = fetch(f"{prometheus}/api/v1/alerts")[1]["data"]["alerts"]
    return next(
        (
            a
            for a in alerts
            if a["labels"]["alertname"] == "TrainchainInputDrift" and a["state"] == "firing"
        ),
        None,
    )


def logs(*files: Path) -> str:
    return "\n".join(f"--- {f.name}\n{f.read_text()[-3000:]}" for f in files if f.exists())


@pytest.mark.slow
@pytest.mark.monitoring
def test_drift_alert_through_prometheus_and_alertmanager_retrains_the_model(
    loop: Loop, tmp_path: Path
) -> None:
    """Drifted epochs sent to the served champion: /drift says drifted, Prometheus' drift
    alert fires with the drifted groups in its `drifted` annotation, Alertmanager POSTs it
    to `hooks serve`, which queues a retrain of the bare repository's main; the chain
    succeeds and its email says it ran because of that alert, naming the groups."""
    hooks_log, serve_log = tmp_path / "hooks.log", tmp_path / "serve.log"
    mails_before = len(outbox_mails(loop.home))
    with (
        hooks_serve(loop.settings, hooks_log, *hooks_args(loop, "1h")) as (hooks, _),
        trainchain_serve(loop, serve_log) as serve,
        monitoring(loop, serve, f"{hooks.url}/alerts", tmp_path / "monitoring") as mon,
    ):
        every_log = (hooks_log, serve_log, mon.folder / "prometheus.log")
        every_log += (mon.folder / "alertmanager.log",)
        assert firing_drift_alert(mon.prometheus) is None
        send_drifted(serve, loop)
        report = eventually(lambda: drifted(serve), "/drift to say drifted", WAIT, 0.5)
        assert report["groups"]["log_var"]["detected"], report

        alert = eventually(
            lambda: firing_drift_alert(mon.prometheus),
            "Prometheus' TrainchainInputDrift to fire",
            WAIT,
            0.5,
            lambda: logs(*every_log),
        )
        assert alert["labels"]["model"] == NAME
        assert re.search(r"log_var p=\S+ \(score \d\.\d\d\)", alert["annotations"]["drifted"])

        run = eventually(
            lambda: alert_run(loop), "the hooks server to queue a retrain", WAIT, 0.5,
            lambda: logs(*every_log),
        )  # fmt: skip
        reason = succeeded_with_reason(loop, run, mails_before)
    assert (
        reason == f"drift alert TrainchainInputDrift for {NAME}: " + alert["annotations"]["drifted"]
    )
    assert TOKEN not in hooks_log.read_text()


@pytest.mark.slow
def test_serve_asks_hooks_serve_directly_when_drift_persists(loop: Loop, tmp_path: Path) -> None:
    """`serve --retrain-url` without Prometheus: once `persist_windows` (2) drift tests in a
    row said drifted, the service POSTs a drift alert to `hooks serve`'s /alerts with the
    token; the retrain is queued (counted as `queued` in its metric) and succeeds, its
    email naming the drifted groups as the rule's annotation would."""
    hooks_log, serve_log = tmp_path / "hooks.log", tmp_path / "serve.log"
    mails_before = len(outbox_mails(loop.home))
    before = alert_run(loop)
    # cooldown 0 in hooks serve: the Prometheus test's retrain of the same model may be recent
    with hooks_serve(loop.settings, hooks_log, *hooks_args(loop, "0")) as (hooks, _):
        retrain = ("--retrain-url", f"{hooks.url}/alerts")
        retrain += ("--retrain-token-file", str(token_file(loop)), "--retrain-cooldown", "1h")
        with trainchain_serve(loop, serve_log, *retrain) as serve:
            send_drifted(serve, loop)
            eventually(lambda: drifted(serve), "/drift to say drifted", WAIT, 0.5)

            def queued() -> RunStatus | None:
                run = alert_run(loop)
                return run if run is not None and run != before else None

            run = eventually(
                queued, "serve to ask for a retrain", WAIT, 0.5, lambda: logs(serve_log, hooks_log)
            )
            reason = succeeded_with_reason(loop, run, mails_before)
            metrics = fetch(f"{serve}/metrics")[1]
        assert (
            f'trainchain_drift_retrain_requests_total{{model="{NAME}",outcome="queued"}} 1.0'
            in metrics
        )
    assert re.fullmatch(
        rf"drift alert TrainchainInputDrift for {NAME}: (\S+ p=\S+ \(score \d\.\d\d\)(, )?)+",
        reason,
    ), reason
    assert "log_var p=" in reason
    assert "retrain:   asked of http://127.0.0.1:" in serve_log.read_text()
    assert TOKEN not in serve_log.read_text() + hooks_log.read_text()


# --------------------------------------------------------------------------- pure rules


def test_the_shared_streak_asks_once_after_persist_windows_then_cools_down(
    tmp_path: Path,
) -> None:
    """Drifted tests at least `gap` apart count; closer ones do not; a test without drift
    or a new version starts over; the request comes at `persist` and not again within the
    cooldown; a request that was not delivered frees the cooldown."""
    store = WindowStore(tmp_path / "drift.sqlite", 100)

    def count(drifted: bool, now: float, version: str = "1") -> bool:
        return store.count_test("m", version, drifted, now=now, gap=10.0, persist=3, cooldown=100.0)

    assert [count(True, t) for t in (0, 5, 10)] == [False, False, False]  # 5: same window
    assert count(False, 20) is False  # starts over
    assert [count(True, t) for t in (30, 40, 50)] == [False, False, True]
    assert [count(True, t) for t in (60, 70, 140)] == [False, False, False]  # cooling down
    assert count(True, 150) is True  # 100 s after the request
    store.request_failed("m", 150.0)
    assert count(True, 160) is True  # not delivered: asked again
    assert [count(True, t, "2") for t in (170, 180)] == [False, False]  # a new version
    assert count(True, 300, "2") is True


def test_a_retrain_request_that_is_not_delivered_is_counted_and_asked_again(
    tmp_path: Path,
) -> None:
    """A hooks server that cannot be reached: the POST fails on the background thread
    (logged), `trainchain_drift_retrain_requests_total{outcome="failed"}` counts it, and the
    cooldown is freed, so the next drifted test asks again."""
    from trainchain.core.drift import DriftResult, GroupResult
    from trainchain.serving.config import RetrainConfig
    from trainchain.serving.metrics import ServingMetrics
    from trainchain.serving.retrain import RetrainRequests

    store = WindowStore(tmp_path / "drift.sqlite", 100)
    metrics = ServingMetrics()
    config = RetrainConfig(f"http://127.0.0.1:{free_port()}/alerts", b"t", cooldown=3600.0)

    def count(model: str, version: str, drifted: bool, now: float) -> bool:
        return store.count_test(
            model, version, drifted, now=now, gap=0.0, persist=1, cooldown=3600.0
        )

    requests = RetrainRequests(config, count, store.request_failed, metrics)
    result = DriftResult((GroupResult("log_var", 0.8, 1e-12, 60, True),), 60, 50, 0.01, "holm")
    try:
        requests.tested("m", "1", result, 1)

        def failed() -> float | None:
            return metrics.registry.get_sample_value(
                "trainchain_drift_retrain_requests_total", {"model": "m", "outcome": "failed"}
            )

        assert eventually(failed, "the failed request to be counted", WAIT, 0.1) == 1.0
        assert count("m", "1", True, 10**10) is True  # the cooldown was freed
    finally:
        requests.close()
