"""The chain on real EEG: PhysioNet's EEG Motor Movement/Imagery Dataset, per subject.

Reads ../shared/data/eegmmidb/ (subjects S001, S003, S004; imagined left/right fist,
runs 4, 8, 12; 64 channels at 160 Hz; cues T1 left, T2 right). For each subject it
runs the whole chain (detect, tune to the 0.80 goal, register, email) on the EEG
example's own train.py with a trainchain.yaml for this recording format, in a
temporary model repository and TRAINCHAIN_HOME (the data is read in place, never
copied). Beside each result it prints the reference the data README gives (runs
4+8+12, 8-30 Hz, epochs 0.5-2.5 s, CSP 4 components + linear SVC, 5-fold CV repeated
10 times) and that reference recomputed here with trainchain's loader.

Data: Schalk et al. 2004 (BCI2000); Goldberger et al. 2000 (PhysioNet); ODC-BY.

    .venv/bin/python benchmarks/eeg_real.py [--max-trials 20] [--subjects S001 S003]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("MNE_LOGGING_LEVEL", "ERROR")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "eeg-motor-imagery"
DATA = ROOT.parent / "shared" / "data" / "eegmmidb"
REFERENCE = {"S001": 0.70, "S003": 0.59, "S004": 0.50}  # from the data folder's README

# The recording format of eegmmidb, in the loader's options (see trainchain.yaml).
OPTIONS: dict[str, Any] = {
    "files": ["*.edf"],
    "cues": {"left": "T1", "right": "T2"},
    "channels": None,  # all 64 EEG channels
    "sfreq": 160.0,
    "tmin": 0.5,
    "tmax": 2.5,
    "test_size": 0.2,
    "split_seed": 0,
    "cv_folds": 5,
}


def model_repo(tmp: Path, max_trials: int) -> Path:
    """The example's train.py with a trainchain.yaml for this recording format."""
    repo = tmp / "eegmmidb-model"
    repo.mkdir()
    shutil.copy(EXAMPLE / "train.py", repo / "train.py")
    config = yaml.safe_load((EXAMPLE / "trainchain.yaml").read_text())
    config["name"] = "eegmmidb-imagery"
    config["data"] = {"path": str(DATA), "options": OPTIONS}
    config["budget"]["max_trials"] = max_trials
    (repo / "trainchain.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return repo


def reference_cv(subject_dir: Path) -> tuple[float, int]:
    """The README's reference pipeline, recomputed with trainchain's loader."""
    import numpy as np
    from mne.decoding import CSP
    from sklearn.model_selection import RepeatedStratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import SVC

    from trainchain.families.eeg import BandPass, load_epochs

    options = {k: v for k, v in OPTIONS.items() if k not in {"test_size", "split_seed", "cv_folds"}}
    x, y, meta = load_epochs(subject_dir, **options)
    pipe = make_pipeline(
        BandPass(8.0, 30.0, meta["sfreq"]),
        CSP(n_components=4, log=True, rank="full"),
        SVC(kernel="linear"),
    )
    cv = RepeatedStratifiedKFold(n_splits=5, n_repeats=10, random_state=0)
    return float(np.mean(cross_val_score(pipe, x, y, cv=cv))), len(y)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-trials", type=int, default=20)
    parser.add_argument("--subjects", nargs="*", default=sorted(REFERENCE))
    args = parser.parse_args()
    if not DATA.is_dir():
        print(
            f"skipped: {DATA} is absent (the real EEG data lives beside the repository in "
            "../shared/data/eegmmidb; see its README). Nothing to measure."
        )
        return 0
    warnings.filterwarnings("ignore", category=FutureWarning)

    from trainchain.chain import run_chain
    from trainchain.settings import load_settings

    print(f"eegmmidb: goal val_accuracy >= 0.80, at most {args.max_trials} trials per subject")
    print("reference: CSP(4) + linear SVC, 8-30 Hz, 5-fold CV x10 (data README / here)\n")
    rows = []
    for subject in args.subjects:
        with tempfile.TemporaryDirectory(prefix="trainchain-eegmmidb-") as tmp:
            repo = model_repo(Path(tmp), args.max_trials)
            settings = load_settings({"TRAINCHAIN_HOME": str(Path(tmp) / "home")})
            ref_here, n_epochs = reference_cv(DATA / subject)
            started = time.perf_counter()
            outcome = run_chain(str(repo), settings, data=str(DATA / subject))
            wall = time.perf_counter() - started
            report = outcome.report
            defaults = report.trials[0].value if report.trials else None
            rows.append(
                (
                    subject,
                    n_epochs,
                    REFERENCE[subject],
                    ref_here,
                    defaults,
                    report,
                    outcome.exit_code,
                    wall,
                )
            )
            print(
                f"{subject}: {report.status} (exit {outcome.exit_code}) after "
                f"{len(report.trials)} trials in {wall:.0f} s; best val "
                f"{report.best_value:.3f}, held-out test {report.best_test_value:.3f}; "
                f"{report.promotion_reason}",
                flush=True,
            )
            if outcome.delivery is not None and outcome.delivery.path is not None:
                import email
                import email.policy

                msg = email.message_from_bytes(
                    outcome.delivery.path.read_bytes(), policy=email.policy.default
                )
                print(f"  email: {msg['Subject']}", flush=True)

    print()
    head = (
        f"{'subject':<8}{'epochs':>7}{'ref(README)':>12}{'ref(here)':>10}{'defaults':>9}"
        f"{'best val':>9}{'test':>7}{'trials':>7}  outcome"
    )
    print(head)
    for subject, n, ref, here, defaults, report, code, _wall in rows:
        outcome_text = (
            "goal reached, champion"
            if code == 0
            else f"goal out of reach: exit {code}, failure email, nothing promoted"
        )
        print(
            f"{subject:<8}{n:>7}{ref:>12.2f}{here:>10.2f}"
            f"{(defaults if defaults is not None else float('nan')):>9.3f}"
            f"{report.best_value:>9.3f}{report.best_test_value:>7.3f}"
            f"{len(report.trials):>7}  {outcome_text}"
        )
    print(
        "\nval = mean 5-fold CV accuracy on the development 80% (what tuning sees); test = "
        "the held-out 20% (about 9 epochs per subject: coarse). Tuning picks the best of "
        "many noisy CV scores, so best val is optimistic; the held-out test is the honest "
        "figure to set beside the reference."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
