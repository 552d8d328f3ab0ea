"""Register the chain's best model and decide, on held-out data, whether it becomes champion."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from trainchain.adapters.tracking import CHALLENGER, CHAMPION, Tracker
from trainchain.contract import task
from trainchain.core import keys
from trainchain.core.config import Promotion, base_metric
from trainchain.core.errors import NotInStore, RegistryError, StoreError
from trainchain.core.promotion import HeldoutTest, decide, heldout_test, same_model
from trainchain.core.report import ChainReport
from trainchain.core.status import RunState

log = logging.getLogger(__name__)


def signature_tensor(model: Any) -> tuple[tuple[int, ...], str] | None:
    """The shape and dtype of a pyfunc model's one tensor input, from its signature (None
    without one)."""
    import numpy as np

    try:
        schema = model.metadata.get_input_schema()
    except Exception:
        return None
    if schema is None or not schema.is_tensor_spec() or len(schema.inputs) != 1:
        return None
    spec = schema.inputs[0]
    return tuple(int(d) for d in spec.shape), str(np.dtype(spec.type))


def predictions(model: Any, x: Any) -> Any:
    """A loaded pyfunc model's answers on ``x``, one label (or class index) per example;
    ``x`` is cast to the dtype of the model's tensor signature (a Keras model declares
    float32 and refuses the uint8 images it was saved with)."""
    import numpy as np

    signed = signature_tensor(model)
    if signed is not None:
        x = np.asarray(x).astype(signed[1], copy=False)
    pred = np.asarray(model.predict(x))
    if pred.ndim > 1 and pred.shape[-1] > 1:  # probabilities: take the class index
        pred = pred.argmax(axis=-1)
    return pred.reshape(-1)


def answers_right(model: Any, x: Any, y: Any) -> list[bool]:
    """Whether the model answers each held-out example right."""
    import numpy as np

    pred = predictions(model, x)
    labels = np.asarray(y).reshape(-1)
    if len(pred) != len(labels):
        raise ValueError(f"the model returned {len(pred)} predictions for {len(labels)} examples")
    return [bool(v) for v in pred == labels]


def download_heldout(tracker: Tracker, run_id: str, dst: Path) -> Path:
    """The held-out arrays a run was scored on: shared by its chain, or its own."""
    _, _, tags = tracker.run_data(run_id)
    shared = tags.get(keys.HELDOUT)
    if shared and ":" in shared:
        owner, path = shared.split(":", 1)
        return tracker.download(owner, path, dst)
    return tracker.download(run_id, task.HELDOUT_FILE, dst)


def heldout_examples(tracker: Tracker, model: str, alias: str, n: int) -> tuple[str, Any, Any]:
    """The version under ``alias`` of ``model`` and its first ``n`` held-out examples and
    labels (``trainchain data heldout``)."""
    import numpy as np

    version = tracker.alias_version(model, alias)
    run_id = tracker.version_run_id(model, version) if version else None
    if version is None or run_id is None:
        raise RegistryError(
            f"{model} has no version with the alias {alias!r} in {tracker.tracking_uri}",
            hint=f"`trainchain models {model}` lists its versions and aliases",
        )
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = download_heldout(tracker, run_id, Path(tmp))
        except NotInStore as err:
            raise RegistryError(
                f"{model} v{version} has no held-out data ({err.message})",
                hint="the training script writes it with trainchain.contract.task.heldout_path()",
            ) from err
        with np.load(path, allow_pickle=False) as data:
            return version, data["X"][:n], data["y"][:n]


def _heldout_test(
    tracker: Tracker,
    name: str,
    candidate_run: str,
    champion_version: str | None,
    promotion: Promotion,
) -> HeldoutTest | None:
    """The candidate (and the champion, when there is one) on the candidate's held-out
    examples; None when the candidate's run has no held-out arrays."""
    import numpy as np

    champion_run = None
    if champion_version is not None:
        champion_run = tracker.version_run_id(name, champion_version)
        if champion_run is None:
            raise ValueError(f"champion v{champion_version} has no run to load its model from")
    with tempfile.TemporaryDirectory(prefix="trainchain-promote-") as tmp:
        work = Path(tmp)
        try:
            heldout = download_heldout(tracker, candidate_run, work / "heldout")
        except NotInStore as err:
            log.info("run %s has no held-out arrays: %s", candidate_run, err.message)
            return None
        with np.load(heldout, allow_pickle=False) as data:
            x, y = data["X"], data["y"]
        candidate = answers_right(tracker.load_model(candidate_run, work), x, y)
        champion = (
            answers_right(tracker.load_model(champion_run, work), x, y) if champion_run else None
        )
    return heldout_test(
        [str(v) for v in np.asarray(y).reshape(-1)],
        candidate,
        champion=champion,
        champion_version=champion_version,
        margin=promotion.margin,
        alpha=promotion.alpha,
    )


def promote(report: ChainReport, tracker: Tracker) -> ChainReport:
    """Register the best model as ``challenger``; make it ``champion`` if it earns it: a
    confirmed goal, significantly above the majority-class rate on its held-out examples,
    and significantly better than the champion on the same examples."""
    name = report.model_name
    if report.registry_version is not None:
        log.info("chain %s already registered v%s", report.chain_id, report.registry_version)
        return report
    promotion = Promotion(margin=report.promotion_margin, alpha=report.promotion_alpha)
    if report.best_run_id is None or report.verdict != "confirmed":
        decision = decide(confirmed=False, test=None, why_not_confirmed=_unconfirmed(report))
        reason = decision.reason + "; nothing registered, the best trial stays in MLflow"
        return report.with_(became_champion=False, promotion_reason=reason)

    if not tracker.has_model(report.best_run_id):
        return report.with_(
            became_champion=False,
            promotion_reason=f"not promoted: the best trial (run {report.best_run_id}) saved no "
            "model in an MLflow flavor's format under TRAINCHAIN_OUTPUT_DIR/model",
        )
    _, metrics, run_tags = tracker.run_data(report.best_run_id)
    same = _registered_as(tracker, name, run_tags)
    if same is not None:
        alias, version = same
        return report.with_(
            became_champion=False,
            same_as=f"{alias} v{version}",
            promotion_reason=f"not registered: {alias} v{version} already is this model (the "
            "same commit, data, configuration, image and hyperparameters)",
            model_uri=f"models:/{name}/{version}",
        )
    tags = {k: v for k, v in run_tags.items() if k.startswith(keys.PREFIX)}
    tags[keys.CHAIN] = report.chain_id
    for k in (report.goal_metric, "test_" + base_metric(report.goal_metric)):
        if k in metrics:
            tags[f"metric.{k}"] = f"{metrics[k]:.6g}"
    version = tracker.register(name, report.best_run_id, tags)
    tracker.set_alias(name, CHALLENGER, version)
    champion = tracker.alias_version(name, CHAMPION)
    test = None
    error = None
    try:
        test = _heldout_test(tracker, name, report.best_run_id, champion, promotion)
    except StoreError as err:
        if not isinstance(err, NotInStore):
            raise  # the registry cannot answer: the chain fails with it, nothing is decided
        error = err.message  # a model or its files are missing: the comparison failed
    except ImportError as err:
        error = (
            f"this host cannot load the models ({type(err).__name__}: {err}); for Keras "
            "models install TensorFlow here: scripts/setup.sh --tensorflow"
        )
    except Exception as err:
        error = f"{type(err).__name__}: {err}"
    if error is not None:
        log.error("could not test v%s on held-out data: %s", version, error)
    decision = decide(confirmed=True, test=test, error=error)
    if decision.promote:
        tracker.make_champion(name, version)
    tracker.client.set_model_version_tag(name, version, keys.PROMOTION, decision.reason)
    return report.with_(
        registry_version=version,
        became_champion=decision.promote,
        promotion_reason=decision.reason,
        promotion_test=test,
        model_uri=f"models:/{name}/{version}",
    )


def _registered_as(tracker: Tracker, name: str, run_tags: dict[str, str]) -> tuple[str, str] | None:
    """(alias, version) of the champion, else the challenger, when it already is the model
    of a run with these tags; None when neither is."""
    for alias in (CHAMPION, CHALLENGER):
        version = tracker.alias_version(name, alias)
        run_id = tracker.version_run_id(name, version) if version else None
        if version and run_id and same_model(run_tags, tracker.run_data(run_id)[2]):
            return alias, version
    return None


def _unconfirmed(report: ChainReport) -> str:
    if report.verdict == "search_only" or (
        not report.verdict and report.status is RunState.SUCCEEDED
    ):
        return "the goal was reached on the search's validation only, not confirmed"
    return "the goal was not reached"
