"""The whole chain on one machine: pull, detect, tune (which trains), promote, notify."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from trainchain.adapters.gitrepo import pull
from trainchain.adapters.mailer import Delivery
from trainchain.adapters.tracking import Tracker
from trainchain.chain.context import Prepared, prepare
from trainchain.chain.giveup import give_up_callback
from trainchain.chain.registry import promote
from trainchain.chain.report_mail import send_report
from trainchain.chain.tune import save_report, tune
from trainchain.core.config import CONFIG_FILE, load_config
from trainchain.core.errors import NotifyError, TrainchainError
from trainchain.core.progress import TuneDisplay
from trainchain.core.redaction import redact, without_credentials
from trainchain.core.report import ChainReport
from trainchain.core.settings import Settings
from trainchain.core.status import ExitCode, RunState
from trainchain.executors import get_executor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChainOutcome:
    report: ChainReport
    delivery: Delivery | None

    @property
    def exit_code(self) -> ExitCode:
        return self.report.status.exit_code


def conclude(report: ChainReport, settings: Settings) -> ChainReport:
    """After tuning: promote a chain that reached its goal, else say why not; save the report."""
    tracker = Tracker(settings.tracking_uri, settings.artifacts)
    if report.status is RunState.SUCCEEDED:
        report = promote(report, tracker)
    elif report.status is RunState.GOAL_NOT_REACHED:
        report = promote(report, tracker)  # says why not, registers nothing
    save_report(settings.chains_dir, report, tracker)
    return report


def resolve_source(
    source: str, ref: str | None, settings: Settings, subdir: str = ""
) -> tuple[Path, str | None, str | None]:
    """A folder with trainchain.yaml is used in place; anything else is pulled (job 1)."""
    path = Path(source)
    if ref is None and (path / subdir / CONFIG_FILE).is_file():
        return path / subdir, None, None
    pulled = pull(source, ref, settings.workspaces)
    return pulled.path / subdir, pulled.repository, pulled.commit


def run_chain(
    source: str,
    settings: Settings,
    *,
    ref: str | None = None,
    subdir: str = "",
    data: str | None = None,
    executor: str = "local",
    threshold: float | None = None,
    max_trials: int | None = None,
    timeout: float | None = None,
    image: str | None = None,
    quiet: bool = False,
    stream_logs: bool = False,
    wait_lock: float = 0.0,
    email_failures: bool = False,
    pushed_by: str | None = None,
    workers: int = 1,
    worker_argv: Callable[[Prepared], Sequence[str]] | None = None,
) -> ChainOutcome:
    """Run the chain; the source is a model folder (used in place) or a repository to pull.

    With ``email_failures`` (a trigger's chain, which nobody watches), a failure the chain
    could not report in its own email (the pull, detection, the configuration, the
    registry) is emailed too, to ``pushed_by`` when given, else to the configured
    recipients, and then raised as before."""
    path: Path | None = None
    tuning = False  # past the pull, detection and configuration
    try:
        path, repository, commit = resolve_source(source, ref, settings, subdir)
        prep = prepare(
            path,
            settings,
            data=data,
            executor=executor,
            threshold=threshold,
            max_trials=max_trials,
            timeout=timeout,
            image=image,
            repository=repository,
            commit=commit,
        )
        tuning = True
        return _run(
            prep,
            settings,
            quiet=quiet,
            stream_logs=stream_logs,
            wait_lock=wait_lock,
            workers=workers,
            worker_argv=worker_argv(prep) if worker_argv is not None and workers > 1 else (),
        )
    except TrainchainError as err:
        if email_failures and not isinstance(err, NotifyError):
            email_failure(
                err,
                settings,
                source=source,
                ref=ref,
                path=path,
                to=pushed_by,
                before_tuning=not tuning,
            )
        raise


def email_failure(
    err: TrainchainError,
    settings: Settings,
    *,
    source: str,
    ref: str | None,
    path: Path | None,
    to: str | None,
    before_tuning: bool,
) -> Delivery | None:
    """Email a failure the chain raised instead of reporting it (the error and its hint);
    None when the email itself failed (logged: the failure it reports matters more)."""
    name = Path(without_credentials(source).rstrip("/")).name.removesuffix(".git") or "chain"
    recipients: tuple[str, ...] = ()
    if path is not None:  # pulled: its trainchain.yaml may name the model and its people
        with suppress(TrainchainError):
            model = load_config(path).model
            name, recipients = model.name, tuple(model.notify.to)
    commit = ref or ""
    report = ChainReport(
        chain_id=f"{name}-{commit[:12]}" if commit else name,
        model_name=name,
        repository=redact(source),
        commit=commit,
        goal_metric="",
        threshold=0.0,
        direction="maximize",
        status=RunState.FAILED,
        max_trials=0,
        error=str(err),
        before_tuning=before_tuning,
        recipients=recipients,
        tracking_uri=settings.tracking_uri,
        jenkins_build_url=settings.jenkins_build_url,
        reason=settings.reason,
    )
    try:
        delivery = send_report(report, settings, to=(to,) if to else ())
    except NotifyError as failed:
        log.error("could not email the failure: %s", failed)
        return None
    log.warning(
        "failure email: %s",
        f"sent to {', '.join(delivery.recipients)}" if delivery.method == "smtp" else delivery.path,
    )
    return delivery


def _run(
    prep: Prepared,
    settings: Settings,
    *,
    quiet: bool,
    stream_logs: bool,
    wait_lock: float,
    workers: int = 1,
    worker_argv: Sequence[str] = (),
) -> ChainOutcome:
    display = TuneDisplay.for_goal(prep.loaded.model.goal, quiet=quiet)
    display.note(
        f"detect: {prep.detection.family} family, image {prep.detection.image} "
        f"({len(prep.detection.evidence)} pieces of evidence)"
    )
    report = tune(
        prep,
        get_executor(
            prep.lineage.executor,
            prep.loaded.model,
            settings,
            on_give_up=give_up_callback(settings),
        ),
        display=display,
        stream_logs=stream_logs,
        wait_lock=wait_lock,
        workers=workers,
        worker_argv=worker_argv,
    )
    report = conclude(report, settings)
    delivery = send_report(report, settings)
    return ChainOutcome(report, delivery)
