"""The chain's outcome, as one JSON-serialisable record.

Written by `tune`/`run` to ``TRAINCHAIN_HOME/chains/<chain_id>.json``, updated by
`promote`, read by `notify` (each Jenkins job is its own process).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

Status = Literal["running", "succeeded", "goal_not_reached", "failed"]


@dataclass(frozen=True)
class TrialSummary:
    number: int
    state: str  # COMPLETE, FAIL, PRUNED
    value: float | None
    params: dict[str, Any]
    test_value: float | None = None
    run_id: str | None = None
    duration_s: float | None = None


@dataclass(frozen=True)
class ChainReport:
    chain_id: str
    model_name: str
    repository: str
    commit: str
    goal_metric: str
    threshold: float
    direction: str
    status: Status
    max_trials: int
    promotion_margin: float = 0.0
    trials: tuple[TrialSummary, ...] = ()
    best_trial: int | None = None
    best_value: float | None = None
    best_test_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_run_id: str | None = None
    registry_version: str | None = None
    became_champion: bool = False
    promotion_reason: str = ""
    model_uri: str | None = None
    tracking_uri: str = ""
    parent_run_id: str | None = None
    family: str | None = None
    image: str | None = None
    executor: str | None = None
    error: str | None = None
    log_tail: str = ""
    recipients: tuple[str, ...] = ()
    jenkins_build_url: str | None = None
    elapsed_s: float = 0.0

    def with_(self, **changes: Any) -> ChainReport:
        return replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChainReport:
        trials = tuple(TrialSummary(**t) for t in data.get("trials", ()))
        rest = {k: v for k, v in data.items() if k != "trials"}
        rest["recipients"] = tuple(rest.get("recipients", ()))
        return cls(trials=trials, **rest)

    @classmethod
    def load(cls, path: Path) -> ChainReport:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def save(self, path: Path) -> Path:
        from trainchain.task import atomic_write_bytes

        atomic_write_bytes(Path(path), self.to_json().encode("utf-8"))
        return Path(path)
