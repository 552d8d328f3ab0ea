"""The image CNN family on real images: the whole chain per dataset, against issue 17's
targets and the published anchors of the same regime.

Reads ../shared/data/ (never copied into the repository):
- cats-vs-dogs/: 2,000 training and 2,000 test RGB photos (Kaggle Dogs vs. Cats).
  Anchors for a small convnet trained from scratch on 2,000 images (Chollet, "Deep
  Learning with Python" 5.2; Keras blog 2016): about 71% plain, about 80-82% with data
  augmentation and dropout. Target: held-out test at least 0.85 within 30 minutes, with
  the goal raised to 0.85 and confirmed.
- fer2013-4class/: 48x48 grayscale faces, angry / fear / happy / sad, 1,000 training
  faces per class, FER2013's PublicTest as the held-out set. Anchors (7 classes, full
  data): human about 65%, challenge winner 71.2%, simple CNNs from scratch 60-66%.
  Target: at least 0.62 on PublicTest within 30 minutes.

For each dataset it runs the whole chain (detect, tune to the goal within the example's
own budget, confirm, register, email to nobody) on the example's train.py and
trainchain.yaml, as a user's `trainchain run EXAMPLE --executor docker --threshold GOAL`
would, in a temporary TRAINCHAIN_HOME, and prints per trial the state, val_accuracy,
test accuracy, epochs, seconds per epoch and training images per second; then per
dataset the verdict, the search's figure, the confirmation, the held-out test with its
95% interval, the chain's wall time, and the training throughput against this machine's
measured peak for the example's default model (the same network trained on one
in-memory batch, over and over, in this process: no input pipeline, no validation, no
checkpoints).

    .venv/bin/python benchmarks/cnn.py [--only cats-vs-dogs|fer2013-4class]
        [--executor docker|local|auto] [--goal-cats 0.85] [--goal-fer 0.62]
        [--minutes 30] [--peak-seconds 20]
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import loadavg

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

DATASETS: dict[str, dict[str, Any]] = {
    "cats-vs-dogs": {
        "example": "cats-vs-dogs-cnn",
        "target": "held-out test >= 0.85, goal 0.85 confirmed",
        "target_test": 0.85,
        "color_mode": "rgb",
        "anchors": "small convnet from scratch, 2,000 training images: about 0.71 plain, "
        "about 0.80-0.82 with augmentation and dropout (Chollet 5.2; Keras blog 2016)",
    },
    "fer2013-4class": {
        "example": "emotion-cnn",
        "target": "held-out (PublicTest) >= 0.62",
        "target_test": 0.62,
        "color_mode": "grayscale",
        "anchors": "FER2013, 7 classes, full data: human about 0.65, challenge winner 0.712, "
        "simple CNNs from scratch 0.60-0.66 (Goodfellow et al. 2013)",
    },
}


@dataclass
class Result:
    name: str
    report: Any
    exit_code: int
    wall_s: float
    per_epoch_s: float | None  # median over the trials' epochs
    train_images_per_s: float | None  # the first trial (the defaults)
    peak_images_per_s: float | None
    peak_note: str


def model_repo(tmp: Path, example: str) -> Path:
    """The example as it is, copied (a run writes nothing into the repository)."""
    repo = tmp / example
    shutil.copytree(ROOT / "examples" / example, repo)
    return repo


def epoch_stats(runs_dir: Path, chain_id: str) -> dict[int, tuple[int, float | None]]:
    """Per trial: epochs reported and the median seconds between epoch reports (an
    epoch's training and its validation pass)."""
    from trainchain.chain.training import read_report

    out: dict[int, tuple[int, float | None]] = {}
    for report in sorted((runs_dir / chain_id).glob("trial-*/report.jsonl")):
        number = int(report.parent.name.split("-")[1])
        rows = read_report(report)
        times = [r["time"] for r in rows]
        gaps = [b - a for a, b in itertools.pairwise(times) if b > a]
        out[number] = (len(rows), statistics.median(gaps) if gaps else None)
    return out


def peak_throughput(
    example: Path, data: Path, colour: str, seconds: float
) -> tuple[float | None, str]:
    """Training images per second of the example's default model on one in-memory batch
    of its own input size, repeated for ``seconds`` after a warm-up: what these cores do
    with nothing else in the way. (None, why) when it cannot be measured here."""
    try:
        import keras
        import numpy as np
    except ImportError as err:  # the host has no TensorFlow (setup.sh --tensorflow)
        return None, f"not measured: {err}"
    from trainchain.core.config import load_config
    from trainchain.families.cnn import Preprocessing, class_folders

    model = load_config(example / "trainchain.yaml").model
    params = {name: p.default for name, p in model.search_space.items()}
    options = model.data.options
    size = int(params.get("image_size") or options.get("image_size") or 128)
    spec = importlib.util.spec_from_file_location(f"bench_{example.name}", example / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    classes = class_folders(data / options.get("train", "train"))
    prep = Preprocessing(image_size=(size, size), color_mode=colour, class_names=classes)
    batch = int(params.get("batch_size", 32))
    # the examples' build_model(params, preprocessing, steps_per_epoch): the steps only
    # shape the learning-rate schedule; their loss takes one-hot labels
    net = module.build_model(params, prep, 50)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(batch, size, size, prep.channels), dtype=np.uint8)
    y = keras.utils.to_categorical(rng.integers(0, len(classes), size=batch), len(classes))
    for _ in range(3):  # tracing and the first allocations
        net.train_on_batch(x, y)
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        net.train_on_batch(x, y)
        steps += 1
    elapsed = time.perf_counter() - started
    keras.backend.clear_session()
    return steps * batch / elapsed, f"default model, batch {batch}, {size}x{size} {colour}"


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def print_result(r: Result, minutes: float, spec: dict[str, Any]) -> None:
    report = r.report
    pruned = sum(t.state == "PRUNED" for t in report.trials)
    complete = sum(t.state == "COMPLETE" for t in report.trials)
    verdict = {
        "confirmed": "goal reached and confirmed",
        "search_only": "reached on the search's validation only, not confirmed",
        "not_reached": "goal not reached",
    }.get(report.verdict, report.verdict or report.status.value)
    test = report.best_test_value
    met = (
        r.exit_code == 0
        and test is not None
        and test >= spec["target_test"]
        and r.wall_s <= minutes * 60
    )
    share = (
        f"{r.train_images_per_s / r.peak_images_per_s:.2f} of it"
        if r.train_images_per_s and r.peak_images_per_s
        else "-"
    )
    print(f"{r.name}: {verdict} (exit {r.exit_code}), goal {report.goal_metric} >= "
          f"{report.threshold:g}")  # fmt: skip
    print(f"  search:    {report.search_figure()}")
    print(f"  confirm:   {report.confirmation_figure()}")
    print(f"  held-out:  {report.heldout_figure()}")
    print(f"  trials:    {len(report.trials)} ({complete} complete, {pruned} pruned)")
    print(f"  wall time: {r.wall_s / 60:.1f} min for the whole chain")
    print(f"  training:  {fmt(r.per_epoch_s, '.1f')} s per epoch (median of all trials); the "
          f"defaults' trial {fmt(r.train_images_per_s, '.0f')} images/s (an epoch with its "
          f"validation pass) against {fmt(r.peak_images_per_s, '.0f')} images/s of the same "
          f"model trained on one in-memory batch ({r.peak_note}): {share}")  # fmt: skip
    print(f"  target:    {spec['target']} within {minutes:g} min: {'MET' if met else 'NOT met'}")
    print(f"  anchors:   {spec['anchors']}", flush=True)


def run_dataset(name: str, args: argparse.Namespace) -> Result | None:
    from trainchain.chain.run import run_chain
    from trainchain.core.config import load_config
    from trainchain.core.settings import load_settings
    from trainchain.families.cnn import class_folders, image_files

    spec = DATASETS[name]
    data = DATA / name
    if not data.is_dir():
        print(f"{name}: skipped, {data} is absent")
        return None
    goal = args.goal_cats if name == "cats-vs-dogs" else args.goal_fer
    with tempfile.TemporaryDirectory(prefix=f"trainchain-bench-{name}-") as tmp:
        repo = model_repo(Path(tmp), spec["example"])
        model = load_config(repo / "trainchain.yaml").model
        options = model.data.options
        train_dir = data / options.get("train", "train")
        n_train = len(image_files(train_dir, class_folders(train_dir))[0])
        n_fit = round(n_train * (1 - float(options.get("validation_split", 0.2))))
        settings = load_settings({"TRAINCHAIN_HOME": str(Path(tmp) / "home")})
        print(
            f"\n=== {name}: goal val_accuracy >= {goal:g} (confirmed), the example's budget "
            f"({model.budget.max_trials} trials, {model.budget.timeout:.0f} s), executor "
            f"{args.executor}; {n_fit} training images per epoch",
            flush=True,
        )
        started = time.perf_counter()
        outcome = run_chain(
            str(repo), settings, data=str(data), executor=args.executor, threshold=goal
        )
        wall = time.perf_counter() - started
        report = outcome.report
        epochs = epoch_stats(settings.runs_dir, report.chain_id)
        print(f"\n{'trial':>5} {'state':<9}{'val':>7}{'test':>7}{'epochs':>7}{'s/epoch':>8}"
              f"{'img/s':>7}{'minutes':>8}  params")  # fmt: skip
        for t in report.trials:
            n_epochs, per_epoch = epochs.get(t.number, (0, None))
            rate = n_fit / per_epoch if per_epoch else None
            minutes = None if t.duration_s is None else t.duration_s / 60
            params = ", ".join(f"{k}={fmt(v, '.3g') if isinstance(v, float) else v}"
                               for k, v in t.params.items())  # fmt: skip
            print(f"{t.number:>5} {t.state:<9}{fmt(t.value):>7}{fmt(t.test_value):>7}"
                  f"{n_epochs:>7}{fmt(per_epoch, '.1f'):>8}{fmt(rate, '.0f'):>7}"
                  f"{fmt(minutes, '.1f'):>8}  {params}")  # fmt: skip
        per_epoch_all = [e for _, e in epochs.values() if e is not None]
        median = statistics.median(per_epoch_all) if per_epoch_all else None
        # like with like: the throughput of the first trial (the defaults) against the
        # default model's reference
        first = epochs.get(0, (0, None))[1]
        print(f"\nmeasuring the peak of the default model ({args.peak_seconds:g} s)", flush=True)
        peak, note = peak_throughput(repo, data, spec["color_mode"], args.peak_seconds)
        return Result(
            name=name,
            report=report,
            exit_code=outcome.exit_code,
            wall_s=wall,
            per_epoch_s=median,
            train_images_per_s=n_fit / first if first else None,
            peak_images_per_s=peak,
            peak_note=note,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(DATASETS), action="append")
    parser.add_argument("--executor", default="auto", choices=["auto", "docker", "local"])
    parser.add_argument("--goal-cats", type=float, default=0.85)
    parser.add_argument("--goal-fer", type=float, default=0.62)
    parser.add_argument("--minutes", type=float, default=30.0, help="the target's time limit")
    parser.add_argument("--peak-seconds", type=float, default=20.0)
    args = parser.parse_args()
    if not DATA.is_dir():
        print(
            f"skipped: {DATA} is absent (the benchmark images live beside the repository in "
            "../shared/data; see its README). Nothing to measure."
        )
        return 0
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(f"cnn benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
          f"load average before {loadavg()}")  # fmt: skip

    results = [r for name in args.only or list(DATASETS) if (r := run_dataset(name, args))]
    print("\n=== summary (held-out = the test folder, never used for tuning)")
    for r in results:
        print_result(r, args.minutes, DATASETS[r.name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
