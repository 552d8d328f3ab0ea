"""Retrain requests: a drift alert, or a person or a script, asks for a model to be trained again.

Alertmanager POSTs its webhook JSON (version "4") to ``/alerts`` of `trainchain hooks serve`
with ``Authorization: Bearer <token>``; `trainchain hooks retrain` asks from the command
line. Either way a request names a *model* (the alert's ``model`` label), and the server's
mapping (``--retrain MODEL=REPOSITORY[@BRANCH]``) says which repository and branch train
it. The request becomes a run in the one trigger queue (:mod:`trainchain.triggers.queue`):
`trainchain run REPOSITORY --ref BRANCH --reason ...` here, or a build of the Jenkins job
with REPOSITORY, COMMIT (the branch) and REASON. At most one retrain per model is pending
(queued or running), and none is queued within the cooldown after the last one.

Everything here is a plain function of its inputs: reading the mapping, reading the
alerts, the reason shown in the chain's email.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from trainchain.core.alerts import (
    ALERTS_VERSION,
    DEFAULT_COOLDOWN_S,
    MAX_COOLDOWN_S,
    MODEL_LABEL,
)
from trainchain.core.errors import ConfigError
from trainchain.core.report import clean_reason
from trainchain.triggers.queue import (
    DEFAULT_JENKINS_RETRIES,
    DEFAULT_RUN_TIMEOUT_S,
    CoolingDown,
    JenkinsTarget,
    RetrainPending,
    RunRequest,
    RunStatus,
    check_branch,
    check_model,
)

DEFAULT_BRANCH = "main"
MAX_TARGETS = 100
MAX_ALERTS = 1000  # alerts in one notification (Alertmanager's max_alerts caps it too)
RESOLVED, FIRING = "resolved", "firing"
_SCHEME_AND_USER = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]*$")


@dataclass(frozen=True)
class RetrainTarget:
    """What retrains ``model``: the chain run on ``branch``'s head of ``repository``."""

    model: str
    repository: str
    branch: str = DEFAULT_BRANCH

    def __post_init__(self) -> None:
        check_model(self.model)
        if not self.repository or self.repository.startswith("-"):
            raise ConfigError(
                f"{self.repository!r} is not a repository for {self.model}",
                hint="give a URL git accepts or an absolute path",
            )
        check_branch(self.branch)

    def __str__(self) -> str:
        return f"{self.model}={self.repository}@{self.branch}"


def parse_target(spec: str) -> RetrainTarget:
    """``MODEL=REPOSITORY[@BRANCH]``: the branch is what follows the last ``@`` unless that
    is part of the URL (``git@host:team/x.git``, ``https://user@host/x.git``)."""
    model, sep, rest = spec.partition("=")
    if not sep or not model or not rest:
        raise ConfigError(
            f"{spec!r} is not MODEL=REPOSITORY[@BRANCH]",
            hint="e.g. --retrain eeg-motor-imagery=https://git.example.org/team/eeg.git@main",
        )
    repository, at, branch = rest.rpartition("@")
    if not at or ":" in branch or _SCHEME_AND_USER.match(repository) or not repository:
        return RetrainTarget(model.strip(), rest.strip())
    return RetrainTarget(model.strip(), repository.strip(), branch.strip())


def target_map(specs: Iterable[str]) -> dict[str, RetrainTarget]:
    """The models a server retrains, by name; a model given twice is an error."""
    targets: dict[str, RetrainTarget] = {}
    for spec in specs:
        target = parse_target(spec)
        if target.model in targets:
            raise ConfigError(
                f"--retrain names {target.model} twice ({targets[target.model]} and {target})",
                hint="give each model once",
            )
        targets[target.model] = target
        if len(targets) > MAX_TARGETS:
            raise ConfigError(f"more than {MAX_TARGETS} --retrain models: give at most that many")
    return targets


# ---- Alertmanager's webhook ---------------------------------------------------------
class BadAlerts(ValueError):
    """The body is not Alertmanager's webhook JSON."""


@dataclass(frozen=True)
class Alert:
    name: str  # the alertname label
    status: str  # firing or resolved
    labels: Mapping[str, str]
    annotations: Mapping[str, str]

    @property
    def model(self) -> str | None:
        return self.labels.get(MODEL_LABEL) or None


def _strings(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise BadAlerts(f"{where} is not an object of strings")
    return dict(value)


def read_alerts(payload: Any) -> list[Alert]:
    """The alerts of an Alertmanager webhook notification (version "4")."""
    if not isinstance(payload, Mapping):
        raise BadAlerts("the body is not a JSON object (Alertmanager's webhook JSON)")
    version = payload.get("version")
    if version != ALERTS_VERSION:
        raise BadAlerts(
            f"version is {version!r}: expected Alertmanager's webhook JSON, version "
            f"{ALERTS_VERSION!r}"
        )
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        raise BadAlerts("the body has no alerts list")
    if len(alerts) > MAX_ALERTS:
        raise BadAlerts(f"{len(alerts)} alerts in one notification: at most {MAX_ALERTS}")
    out = []
    for i, alert in enumerate(alerts):
        if not isinstance(alert, Mapping):
            raise BadAlerts(f"alerts[{i}] is not an object")
        status = alert.get("status")
        if status not in (FIRING, RESOLVED):
            raise BadAlerts(f"alerts[{i}].status is {status!r}: expected firing or resolved")
        labels = _strings(alert.get("labels"), f"alerts[{i}].labels")
        annotations = _strings(alert.get("annotations"), f"alerts[{i}].annotations")
        out.append(Alert(labels.get("alertname", "?"), status, labels, annotations))
    return out


def alert_reason(alert: Alert) -> str:
    """Why the retrain runs, as its email says it: the alert, the model, and the
    ``drifted`` annotation (else ``summary``, else ``description``)."""
    kind = "drift alert" if "drift" in alert.name.lower() else "alert"
    notes = alert.annotations
    detail = notes.get("drifted") or notes.get("summary") or notes.get("description")
    text = f"{kind} {alert.name} for {alert.model}"
    return clean_reason(f"{text}: {detail}" if detail else text)


# ---- requests ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RetrainOptions:
    """How a retrain runs: as a push's run would (``hooks serve``'s options)."""

    executor: str | None = None
    data: str | None = None
    run_timeout: float = DEFAULT_RUN_TIMEOUT_S
    jenkins_job: str | None = None  # set: a build of this job with REPOSITORY, COMMIT, REASON
    jenkins_retries: int = DEFAULT_JENKINS_RETRIES
    cooldown: float = DEFAULT_COOLDOWN_S

    def __post_init__(self) -> None:
        if not 0 <= self.cooldown <= MAX_COOLDOWN_S:
            raise ConfigError(
                f"a cooldown of {self.cooldown:g} s is out of range: expected 0 to 30 days"
            )


def retrain_request(
    target: RetrainTarget, reason: str, trigger: str, options: RetrainOptions
) -> RunRequest:
    """The queued run that retrains ``target``'s model."""
    reason = clean_reason(reason)
    jenkins = None
    if options.jenkins_job is not None:
        params = {"REPOSITORY": target.repository, "COMMIT": target.branch, "REASON": reason}
        jenkins = JenkinsTarget(options.jenkins_job, params, retries=options.jenkins_retries)
    return RunRequest(
        repository=target.repository,
        commit=target.branch,
        branch=target.branch,
        trigger=trigger,
        executor=options.executor,
        data=options.data,
        run_timeout=options.run_timeout,
        jenkins=jenkins,
        reason=reason,
        model=target.model,
    )


@dataclass(frozen=True)
class RetrainAnswer:
    """What became of a retrain request: ``queued``, ``pending`` or ``cooling_down``."""

    outcome: str
    run_id: str
    text: str
    status: RunStatus | None = None  # the run queued


def request_retrain(
    submit: Callable[[RunRequest, float], tuple[RunStatus, int]],
    request: RunRequest,
    cooldown: float,
) -> RetrainAnswer:
    """Queue ``request`` through ``submit`` (the queue's enqueue, with the cooldown) unless
    its model's retrain is pending or cooling down (QueueFull and RepositoryBusy pass)."""
    try:
        status, _ = submit(request, cooldown)
    except RetrainPending as err:
        return RetrainAnswer("pending", err.run_id, f"already pending: {err.run_id}")
    except CoolingDown as err:
        return RetrainAnswer("cooling_down", "", err.message)
    target = f"Jenkins job {status.jenkins_job}" if status.jenkins_job else "a chain run here"
    return RetrainAnswer("queued", status.run_id, f"queued {status.run_id} ({target})", status)
