"""Breast cancer diagnosis from tabular features: standard scaling and a classifier.

trainchain runs it for each trial (`trainchain train .`, `trainchain tune .`). The
classifier the trial's hyperparameters name is scored on the study's validation plan
(TRAINCHAIN_VALIDATION): stratified k-fold cross-validation of the development rows, one
report line per fold. Outside a confirmation run (which only cross-validates, on fresh
folds) the pipeline is then fitted on all development rows, scored once on the held-out
rows and saved in MLflow's sklearn flavour."""

from __future__ import annotations

import time

import numpy as np
from sklearn.model_selection import train_test_split

from trainchain import task
from trainchain.families.sklearn import cross_validate, fit_final, load_table, save_model


def main():
    started = time.perf_counter()
    params = task.params()
    plan = task.validation()
    options = task.data_options()
    test_size = options.pop("test_size", 0.2)
    split_seed = options.pop("split_seed", 0)

    X, y, meta = load_table(task.data_dir(), **options)
    print(
        f"loaded {X.shape[0]} rows of {X.shape[1]} features from {meta['file']}: {meta['counts']}"
    )
    # Development and held-out parts, stratified, always the same for a given seed.
    X_dev, X_test, y_dev, y_test = train_test_split(
        X, y, test_size=test_size, stratify=y, random_state=split_seed
    )

    print(f"params {params}; validation {plan}")
    cv = cross_validate(
        params,
        X_dev,
        y_dev,
        folds=plan["folds"],
        repeats=plan["repeats"],
        seed=plan["seed"],
        report=task.report,
        checkpoint=task.checkpoint_dir() / "folds.json",
    )
    print(f"val_accuracy {cv.mean:.3f} over {len(cv.scores)} folds")
    metrics = {**cv.metrics("accuracy"), "n_dev": len(y_dev)}
    if plan["purpose"] == "confirm":  # fresh folds for the study's best: no model needed
        task.write_metrics(metrics)
        return

    pipe = fit_final(params, X_dev, y_dev)
    test_accuracy = float(np.mean(pipe.predict(X_test) == y_test))
    print(f"test_accuracy {test_accuracy:.3f} on {len(y_test)} held-out rows")
    task.write_metrics({**metrics, "test_accuracy": test_accuracy, "n_test": len(y_test)})
    np.savez(task.heldout_path(), X=X_test, y=y_test)
    save_model(pipe, task.model_dir())
    print(f"saved the model to {task.model_dir()} ({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
