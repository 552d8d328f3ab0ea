"""Motor imagery (left vs right hand) from EEG: band-pass, CSP and an SVM.

Run by trainchain (`trainchain train .`, `trainchain tune .`): it reads this trial's
hyperparameters and the data options of trainchain.yaml, scores the pipeline by
stratified k-fold cross-validation on the development part (val_accuracy), fits it on
the whole development part, scores it once on the held-out part (test_accuracy) and
saves it as an MLflow scikit-learn model.
"""

from __future__ import annotations

import shutil
import time

import mne
import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from trainchain import task
from trainchain.families.eeg import build_pipeline, load_epochs, train_epochs

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


def cross_validate(params, X, y, *, sfreq, folds, seed, report=None):
    """Accuracy of each stratified fold of the development part."""
    scores = []
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (fit_idx, val_idx) in enumerate(cv.split(X, y)):
        pipe = build_pipeline(params, sfreq).fit(X[fit_idx], y[fit_idx])
        scores.append(float(np.mean(pipe.predict(X[val_idx]) == y[val_idx])))
        if report is not None:
            report(step=fold, val_accuracy=scores[-1])
    return scores


def validate(params, X_dev, y_dev, *, sfreq, folds, seed, checkpoint, report=None, log=print):
    """Validation scores on the development part, and the pipeline when already fitted.

    svc: stratified k-fold cross-validation (the pipeline is fitted afterwards on the
    whole development part). sgd: trained over epochs on a fit/validation split, with
    a checkpoint after each epoch, so a restarted attempt resumes after the last one.
    """
    if params.get("classifier") == "sgd":
        X_fit, X_val, y_fit, y_val = split(X_dev, y_dev, 0.25, seed)
        pipe, val = train_epochs(
            build_pipeline(params, sfreq),
            X_fit,
            y_fit,
            X_val,
            y_val,
            epochs=params.get("epochs", 20),
            checkpoint=checkpoint,
            report=report,
            log=log,
        )
        return [val], pipe
    scores = cross_validate(
        params, X_dev, y_dev, sfreq=sfreq, folds=folds, seed=seed, report=report
    )
    log(f"val_accuracy {np.mean(scores):.3f} +- {np.std(scores):.3f} over {folds} folds")
    return scores, None


def main():
    started = time.perf_counter()
    mne.set_log_level("ERROR")
    params = task.params()
    options = task.data_options()
    test_size = options.pop("test_size", 0.2)
    split_seed = options.pop("split_seed", 0)
    folds = options.pop("cv_folds", 5)

    X, y, meta = load_epochs(task.data_dir(), **options)
    sfreq = meta["sfreq"]
    print(
        f"loaded {X.shape[0]} epochs {X.shape[1:]} from {len(meta['files'])} file(s): "
        f"{meta['counts']}"
    )
    X_dev, X_test, y_dev, y_test = split(X, y, test_size, split_seed)

    print(f"params {params}")
    scores, pipe = validate(
        params,
        X_dev,
        y_dev,
        sfreq=sfreq,
        folds=folds,
        seed=split_seed,
        checkpoint=task.checkpoint_dir() / "sgd.pkl",
        report=task.report,
    )
    if pipe is None:
        pipe = build_pipeline(params, sfreq).fit(X_dev, y_dev)
    test_accuracy = float(np.mean(pipe.predict(X_test) == y_test))
    print(f"test_accuracy {test_accuracy:.3f} on {len(y_test)} held-out epochs")

    task.write_metrics(
        {
            "val_accuracy": float(np.mean(scores)),
            "val_accuracy_std": float(np.std(scores)),
            "test_accuracy": test_accuracy,
            "n_dev": len(y_dev),
            "n_test": len(y_test),
        }
    )
    np.savez(task.heldout_path(), X=X_test, y=y_test)

    import mlflow.sklearn

    shutil.rmtree(task.model_dir(), ignore_errors=True)  # a retried attempt saves afresh
    mlflow.sklearn.save_model(
        pipe,
        task.model_dir(),
        serialization_format="cloudpickle",
        pip_requirements=PIP_REQUIREMENTS,
    )
    print(f"saved the model to {task.model_dir()} ({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
