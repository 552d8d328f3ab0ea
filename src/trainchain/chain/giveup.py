"""Past the restart cap: the trial is marked failed in the study and in MLflow, and a
failure email goes out. Safe to run twice (the watchdog and a live tune may both act)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from trainchain.core import keys
from trainchain.core.report import ChainReport
from trainchain.core.settings import Settings
from trainchain.core.status import RunState

log = logging.getLogger(__name__)

TAIL_LINES = 30


def _log_tail(attempt_dir: str | None) -> str:
    if not attempt_dir:
        return ""
    path = Path(attempt_dir) / "train.log"
    if not path.exists():
        return ""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(lines[-TAIL_LINES:])


def fail_trial_in_study(storage: str, chain: str, trial: int) -> bool:
    """Tell the study the trial failed, if it is still running there. True if it was."""
    from optuna.trial import TrialState

    from trainchain.adapters.studies import load_study, storage_errors
    from trainchain.core.redaction import redact

    study = load_study(storage, chain)
    if study is None:
        log.warning("no study %s in %s: nothing to mark", chain, redact(storage))
        return False
    with storage_errors(storage, f"marking trial {trial} of study {chain!r} failed"):
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number == trial:
                study.tell(trial, state=TrialState.FAIL)
                return True
    return False


def record_give_up(settings: Settings, labels: Mapping[str, str], reason: str) -> ChainReport:
    """Mark the trial failed everywhere and send the failure email; returns what was sent."""
    from trainchain.adapters.tracking import Tracker
    from trainchain.chain.report_mail import send_report

    model = labels.get(keys.MODEL, "unknown")
    chain = labels.get(keys.CHAIN, "")
    run_id = labels.get(keys.RUN)
    trial = int(labels.get(keys.TRIAL, "-1"))
    tail = _log_tail(labels.get(keys.ATTEMPT_DIR))
    error = f"trial {trial} of {model} gave up after its restarts: {reason}"

    if run_id:
        tracker = Tracker(settings.tracking_uri, settings.artifacts)
        tracker.log(run_id, tags={keys.STATUS: "failed", keys.ERROR: error})
        tracker.finish(run_id, ok=False)
    if chain and trial >= 0 and fail_trial_in_study(settings.study_storage, chain, trial):
        log.info("marked trial %d of study %s failed", trial, chain)

    saved = settings.chains_dir / f"{chain}.json"
    if saved.exists():
        report = ChainReport.load(saved).with_(status=RunState.FAILED, error=error, log_tail=tail)
    else:
        report = ChainReport(
            chain_id=chain or model,
            model_name=model,
            repository="",
            commit="",
            goal_metric="",
            threshold=0.0,
            direction="maximize",
            status=RunState.FAILED,
            max_trials=0,
            error=error,
            log_tail=tail,
            tracking_uri=settings.tracking_uri,
        )
    delivery = send_report(report, settings)
    log.warning("%s; failure email: %s", error, delivery.path)
    return report


def give_up_callback(settings: Settings) -> Callable[[Mapping[str, str], str], None]:
    """What a supervisor calls past the restart cap (the executor's ``on_give_up``)."""

    def on_give_up(labels: Mapping[str, str], reason: str) -> None:
        record_give_up(settings, labels, reason)

    return on_give_up
