"""The image CNN family on real images, against the published anchors of the same regime.

Reads ../shared/data/ (never copied into the repository):
- cats-vs-dogs/: 2,000 training and 2,000 test RGB photos (Kaggle Dogs vs. Cats).
  Anchors for a small convnet trained from scratch on 2,000 images (Chollet, "Deep
  Learning with Python" 5.2; Keras blog 2016): about 71% plain, about 80-82% with data
  augmentation and dropout.
- fer2013-4class/: 48x48 grayscale faces, angry / fear / happy / sad, 1,000 training
  faces per class, FER2013's PublicTest as the held-out set. Anchors (7 classes, full
  data): human about 65%, challenge winner 71.2%, simple CNNs from scratch 60-66%.

For each dataset it runs the whole chain (detect, tune to the 0.80 goal within a stated
time budget, register, email) on the example's own train.py and trainchain.yaml, in a
temporary TRAINCHAIN_HOME, and prints per trial the state, val_accuracy, test accuracy,
epochs and seconds per epoch, then the wall time and the anchors.

    .venv/bin/python benchmarks/cnn.py [--only cats-vs-dogs|fer2013-4class]
        [--time-budget-cats 1800] [--time-budget-fer 1200] [--executor auto]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

DATASETS: dict[str, dict[str, Any]] = {
    "cats-vs-dogs": {
        "example": "cats-vs-dogs-cnn",
        "anchors": "small convnet from scratch, 2,000 training images: about 0.71 plain, "
        "about 0.80-0.82 with augmentation and dropout (Chollet 5.2; Keras blog 2016)",
    },
    "fer2013-4class": {
        "example": "emotion-cnn",
        "anchors": "FER2013, 7 classes, full data: human about 0.65, challenge winner 0.712, "
        "simple CNNs from scratch 0.60-0.66 (Goodfellow et al. 2013)",
    },
}


def model_repo(tmp: Path, example: str, time_budget: float, max_trials: int) -> Path:
    """The example as it is, with the benchmark's time budget."""
    repo = tmp / example
    shutil.copytree(ROOT / "examples" / example, repo)
    path = repo / "trainchain.yaml"
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config["budget"]["timeout"] = time_budget
    config["budget"]["max_trials"] = max_trials
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return repo


def epoch_stats(runs_dir: Path, chain_id: str) -> dict[int, tuple[int, float | None]]:
    """Per trial: epochs reported and the median seconds between epoch reports."""
    out: dict[int, tuple[int, float | None]] = {}
    for report in sorted((runs_dir / chain_id).glob("trial-*/report.jsonl")):
        number = int(report.parent.name.split("-")[1])
        rows = [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
        times = [r["time"] for r in rows]
        gaps = [b - a for a, b in itertools.pairwise(times) if b > a]
        out[number] = (len(rows), statistics.median(gaps) if gaps else None)
    return out


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def print_summary(row: tuple[str, Any, int, float, list[float], str]) -> None:
    name, report, code, wall, per_epoch, anchors = row
    reached = "goal reached" if code == 0 else f"goal not reached (exit {code})"
    median = statistics.median(per_epoch) if per_epoch else None
    pruned = sum(t.state == "PRUNED" for t in report.trials)
    print(
        f"{name}: {reached}; best val_accuracy {fmt(report.best_value)}, its test accuracy "
        f"{fmt(report.best_test_value)}; {len(report.trials)} trials ({pruned} pruned) in "
        f"{wall / 60:.1f} min; median {fmt(median, '.1f')} s per epoch",
        flush=True,
    )
    print(f"  registry: {report.promotion_reason}")
    print(f"  anchors: {anchors}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(DATASETS), action="append")
    parser.add_argument("--time-budget-cats", type=float, default=1800.0)
    parser.add_argument("--time-budget-fer", type=float, default=1200.0)
    parser.add_argument("--max-trials", type=int, default=8)
    parser.add_argument("--executor", default="auto", choices=["auto", "docker", "local"])
    args = parser.parse_args()
    if not DATA.is_dir():
        print(
            f"skipped: {DATA} is absent (the benchmark images live beside the repository in "
            "../shared/data; see its README). Nothing to measure."
        )
        return 0
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from trainchain.chain.run import run_chain
    from trainchain.core.settings import load_settings

    budgets = {"cats-vs-dogs": args.time_budget_cats, "fer2013-4class": args.time_budget_fer}
    summary = []
    for name in args.only or list(DATASETS):
        spec = DATASETS[name]
        data = DATA / name
        if not data.is_dir():
            print(f"{name}: skipped, {data} is absent")
            continue
        with tempfile.TemporaryDirectory(prefix=f"trainchain-bench-{name}-") as tmp:
            repo = model_repo(Path(tmp), spec["example"], budgets[name], args.max_trials)
            settings = load_settings({"TRAINCHAIN_HOME": str(Path(tmp) / "home")})
            print(
                f"\n=== {name}: goal val_accuracy >= 0.80, time budget {budgets[name]:.0f} s, "
                f"at most {args.max_trials} trials, executor {args.executor}",
                flush=True,
            )
            started = time.perf_counter()
            outcome = run_chain(str(repo), settings, data=str(data), executor=args.executor)
            wall = time.perf_counter() - started
            report = outcome.report
            epochs = epoch_stats(settings.runs_dir, report.chain_id)
            print(f"\n{'trial':>5} {'state':<9}{'val':>7}{'test':>7}{'epochs':>7}{'s/epoch':>8}"
                  f"{'minutes':>8}  params")  # fmt: skip
            for t in report.trials:
                n_epochs, per_epoch = epochs.get(t.number, (0, None))
                minutes = None if t.duration_s is None else t.duration_s / 60
                params = ", ".join(f"{k}={fmt(v, '.3g') if isinstance(v, float) else v}"
                                   for k, v in t.params.items())  # fmt: skip
                print(f"{t.number:>5} {t.state:<9}{fmt(t.value):>7}{fmt(t.test_value):>7}"
                      f"{n_epochs:>7}{fmt(per_epoch, '.1f'):>8}{fmt(minutes, '.1f'):>8}"
                      f"  {params}")  # fmt: skip
            per_epoch_all = [e for _, e in epochs.values() if e is not None]
            row = (name, report, outcome.exit_code, wall, per_epoch_all, spec["anchors"])
            summary.append(row)
            print()
            print_summary(row)

    print("\n=== summary (test = the held-out folder, never used for tuning)")
    for row in summary:
        print_summary(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
