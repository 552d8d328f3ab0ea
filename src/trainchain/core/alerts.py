"""The drift alert as `trainchain hooks serve`'s ``POST /alerts`` reads it: Alertmanager's
webhook JSON (version "4"), one body whoever sends it.

Prometheus' rule ``TrainchainInputDrift`` (monitoring/rules/trainchain.rules.yml) and
`trainchain serve --retrain-url` (the direct path, :mod:`trainchain.serving.drift`) both
ask for a retrain this way, with the ``model`` label and the ``drifted`` annotation the
retrain's reason is made of (:func:`trainchain.triggers.retrain.alert_reason`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

from trainchain.core.errors import ConfigError

ALERTS_VERSION = "4"
MODEL_LABEL = "model"
DRIFT_ALERT = "TrainchainInputDrift"  # the rule's alertname
DEFAULT_COOLDOWN_S = 6 * 3600.0  # between two retrains of one model
MAX_COOLDOWN_S = 30 * 24 * 3600.0
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([smhd]?)$")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``6h``, ``2d``: seconds, 0 to 30 days."""
    match = _DURATION.match(text.strip().lower())
    if match is None:
        raise ConfigError(f"{text!r} is not a duration: expected e.g. 900, 30m, 6h or 1d")
    seconds = float(match[1]) * _UNITS[match[2] or "s"]
    if seconds > MAX_COOLDOWN_S:
        raise ConfigError(f"{text!r} is out of range: expected 0 to 30 days")
    return seconds


def drifted_text(groups: Iterable[tuple[str, float | None, float | None]]) -> str:
    """The ``drifted`` annotation from (group, p-value, score) of the groups that drifted,
    as the rule writes it: ``log_var p=1e-12 (score 0.82), mu p=0.0004 (score 0.41)``."""
    parts = []
    for group, p_value, score in sorted(groups):
        text = group if p_value is None else f"{group} p={p_value:.2g}"
        parts.append(text if score is None else f"{text} (score {score:.2f})")
    return ", ".join(parts)


def drift_notification(
    model: str, drifted: str, *, summary: str, receiver: str, now: float | None = None
) -> dict[str, Any]:
    """A firing ``TrainchainInputDrift`` alert for ``model`` in Alertmanager's webhook JSON."""
    labels = {"alertname": DRIFT_ALERT, MODEL_LABEL: model, "severity": "warning"}
    annotations = {"summary": summary, "drifted": drifted}
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))
    return {
        "version": ALERTS_VERSION,
        "status": "firing",
        "receiver": receiver,
        "groupLabels": {"alertname": DRIFT_ALERT, MODEL_LABEL: model},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": annotations,
                "startsAt": started,
                "endsAt": "0001-01-01T00:00:00Z",
            }
        ],
    }
