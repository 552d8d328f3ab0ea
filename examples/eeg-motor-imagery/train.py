"""Motor imagery (left vs right hand) from EEG: band-pass, CSP and a linear classifier.

Run by trainchain (`trainchain train .`, `trainchain tune .`): it reads this trial's
hyperparameters, the data options of trainchain.yaml and the validation plan trainchain
gives every trial of a study (TRAINCHAIN_VALIDATION: k folds, repeats, seed). Every
classifier is scored by the same stratified k-fold cross-validation of the development
part (val_accuracy, the mean of the per-fold scores it reports beside it); then the
pipeline is fitted on the whole development part, scored once on the held-out part
(test_accuracy) and saved as an MLflow scikit-learn model, with the drift reference of
the development part inside the model folder. A confirmation run (purpose
"confirm": fresh folds for the study's best) only cross-validates.
"""

from __future__ import annotations

import shutil
import time

import mne
import numpy as np
from sklearn.model_selection import train_test_split

from trainchain import task
from trainchain.families.drift import write_reference
from trainchain.families.eeg import cross_validate, drift_reference, fit_final, load_epochs

# Exact versions of the libraries the pickled pipeline needs (as in requirements.txt).
PIP_REQUIREMENTS = [
    "mne==1.13.2",
    "scikit-learn==1.9.1",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "cloudpickle==3.1.2",
]


def split(X, y, test_size, seed):
    """Development and held-out parts, stratified, always the same for a given seed."""
    return train_test_split(X, y, test_size=test_size, stratify=y, random_state=seed)


def validate(params, X_dev, y_dev, *, sfreq, plan, checkpoint=None, report=None, cache=None):
    """The study's estimator: stratified k-fold cross-validation of the development part
    as the plan says (the same folds for every trial of a study, whatever the classifier).
    benchmarks/tuning.py calls this same function."""
    return cross_validate(
        params,
        X_dev,
        y_dev,
        sfreq=sfreq,
        folds=plan["folds"],
        repeats=plan["repeats"],
        seed=plan["seed"],
        report=report,
        checkpoint=checkpoint,
        cache=cache,
    )


def main():
    started = time.perf_counter()
    mne.set_log_level("ERROR")
    params = task.params()
    plan = task.validation()
    options = task.data_options()
    test_size = options.pop("test_size", 0.2)
    split_seed = options.pop("split_seed", 0)

    X, y, meta = load_epochs(task.data_dir(), **options)
    sfreq = meta["sfreq"]
    print(
        f"loaded {X.shape[0]} epochs {X.shape[1:]} from {len(meta['files'])} file(s): "
        f"{meta['counts']}"
    )
    X_dev, X_test, y_dev, y_test = split(X, y, test_size, split_seed)

    print(f"params {params}; validation {plan}")
    cv = validate(
        params,
        X_dev,
        y_dev,
        sfreq=sfreq,
        plan=plan,
        checkpoint=task.checkpoint_dir() / "folds.json",
        report=task.report,
    )
    print(
        f"val_accuracy {cv.mean:.3f} +- {np.std(cv.scores, ddof=1):.3f} (sd) over "
        f"{len(cv.scores)} folds ({plan['folds']}-fold x {plan['repeats']})"
    )
    metrics = {**cv.metrics("accuracy"), "n_dev": len(y_dev)}
    if plan["purpose"] == "confirm":  # fresh folds for the study's best: no model needed
        task.write_metrics(metrics)
        return

    pipe = fit_final(
        params, X_dev, y_dev, sfreq=sfreq, checkpoint=task.checkpoint_dir() / "sgd.pkl"
    )
    test_accuracy = float(np.mean(pipe.predict(X_test) == y_test))
    print(f"test_accuracy {test_accuracy:.3f} on {len(y_test)} held-out epochs")
    task.write_metrics({**metrics, "test_accuracy": test_accuracy, "n_test": len(y_test)})
    np.savez(task.heldout_path(), X=X_test, y=y_test)

    import mlflow.sklearn

    shutil.rmtree(task.model_dir(), ignore_errors=True)  # a retried attempt saves afresh
    mlflow.sklearn.save_model(
        pipe,
        task.model_dir(),
        serialization_format="cloudpickle",
        pip_requirements=PIP_REQUIREMENTS,
    )
    # what serving and `trainchain drift` compare inputs with: the development part only
    write_reference(drift_reference(pipe, X_dev, channels=meta["channels"]), task.model_dir())
    print(f"saved the model to {task.model_dir()} ({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
