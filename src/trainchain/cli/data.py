"""`trainchain data`: synthetic EEG recordings, a tabular CSV from a dataset shipped with
scikit-learn, a registered version's held-out examples as a request body, EEG epochs
with a shift (for `trainchain drift`), and the labelled captures of `trainchain serve
--capture` as training data."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainchain.cli.common import command_settings, out
from trainchain.core.errors import TrainchainError


def cmd_synth_eeg(args: argparse.Namespace) -> int:
    from trainchain.families.eeg_synth import write_synthetic_dataset

    try:
        files = write_synthetic_dataset(
            Path(args.out),
            subjects=args.subjects,
            difficulty=args.difficulty,
            seed=args.seed,
            trials_per_class=args.trials_per_class,
        )
    except ValueError as err:
        raise TrainchainError(str(err)) from None
    for f in files:
        out(str(f))
    return 0


def cmd_tabular(args: argparse.Namespace) -> int:
    from trainchain.families.sklearn import write_dataset

    out(str(write_dataset(Path(args.out), args.dataset)))
    return 0


def cmd_heldout(args: argparse.Namespace) -> int:
    """A registered version's held-out examples as a request body for /classify: JSON, or
    a .npy array when ``--out`` ends in .npy (about a third of the bytes: 256 EEG epochs fit
    the 16 MiB default body limit only so)."""
    from trainchain.adapters.tracking import Tracker
    from trainchain.chain.registry import heldout_examples

    if not 1 <= args.n <= 256:
        raise TrainchainError(f"-n {args.n}: expected 1 to 256 examples")
    settings = command_settings(args)
    tracker = Tracker(settings.tracking_uri, settings.artifacts)
    version, x, y = heldout_examples(tracker, args.model, args.alias, args.n)
    target = Path(args.out)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == ".npy":
        import numpy as np

        np.save(target, np.asarray(x, dtype=np.float64))
    else:
        target.write_text(json.dumps(x.astype(float).tolist()), encoding="utf-8")
    shape = " x ".join(str(d) for d in x.shape)
    out(f"wrote {shape} held-out examples of {args.model} v{version} to {target}")
    out("their labels: " + ", ".join(str(v) for v in y.tolist()))
    return 0


def cmd_drift_epochs(args: argparse.Namespace) -> int:
    """EEG epochs (a .npy array, or the JSON body `data heldout` writes) with one shift."""
    import numpy as np

    from trainchain.families.eeg import EEGDataError
    from trainchain.families.eeg_synth import shift_epochs

    source = Path(args.input)
    try:
        if source.suffix.lower() == ".json":
            epochs = np.asarray(json.loads(source.read_text(encoding="utf-8")), dtype=np.float64)
        else:
            epochs = np.load(source, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise TrainchainError(
            f"{source}: expected a .npy array or a JSON list of epochs: {err}",
            hint="`trainchain data heldout MODEL -n 200 --out heldout.json` writes one",
        ) from None
    try:
        shifted = shift_epochs(
            epochs,
            args.shift,
            channel=args.channel,
            factor=args.factor,
            swap=(args.swap[0], args.swap[1]),
            line_hz=args.line_hz,
            seed=args.seed,
        )
    except EEGDataError as err:
        raise TrainchainError(err.message, hint=err.hint) from None
    target = Path(args.out)
    target.parent.mkdir(parents=True, exist_ok=True)
    np.save(target, shifted)
    shape = " x ".join(str(d) for d in shifted.shape)
    out(f"wrote {shape} epochs with the shift {args.shift} to {target}")
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    """The captured requests that received true labels, as data the families read."""
    from trainchain.serving.capture import export_captures

    summary = export_captures(Path(args.folder), Path(args.out))
    for path in summary.files[:20]:
        out(str(path))
    out(
        f"exported {summary.epochs} labelled EEG epoch(s) and {summary.images} image(s) from "
        f"{args.folder} to {args.out}"
        + ("" if summary.files else " (no capture has feedback yet: POST /feedback)")
    )
    return 0


def register(
    add: Callable[[str, Any, str], argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    data = add("data", lambda a: 0, "data helpers")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    sp = dsub.add_parser(
        "synth-eeg", parents=[common], help="write synthetic motor-imagery EEG recordings"
    )
    sp.set_defaults(func=cmd_synth_eeg)
    sp.add_argument(
        "--out",
        required=True,
        help="folder to write the recordings S01_raw.fif, S02_raw.fif, ... into (made if absent)",
    )
    sp.add_argument(
        "--subjects", type=int, default=1, help="subjects, one recording each (1-50; default: 1)"
    )
    sp.add_argument(
        "--difficulty",
        choices=["easy", "medium", "hard", "impossible"],
        default="medium",
        help="how clearly the EEG tells left from right: easy (the textbook 8-30 Hz CSP does "
        "well), medium (only a well-chosen band does; the default), hard (weak, unreliable "
        "desynchronisation), impossible (none: no model beats chance)",
    )
    sp.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed: the same seed writes the same recordings (default: 0)",
    )
    sp.add_argument(
        "--trials-per-class",
        type=int,
        default=144,
        help="cues per class and subject (10-500; default 144: one BCI IV 2a session)",
    )
    sp = dsub.add_parser(
        "tabular",
        parents=[common],
        help="write a dataset shipped with scikit-learn as a CSV file (features, then label)",
    )
    sp.set_defaults(func=cmd_tabular)
    sp.add_argument("--out", required=True, help="folder to write <dataset>.csv into")
    sp.add_argument(
        "--dataset",
        default="breast_cancer",
        help="which of scikit-learn's bundled datasets (trainchain.families.sklearn.DATASETS: "
        "breast_cancer, iris, wine; default: breast_cancer)",
    )
    sp = dsub.add_parser(
        "heldout",
        parents=[common],
        help="write a registered version's held-out examples as a JSON request body",
    )
    sp.set_defaults(func=cmd_heldout)
    sp.add_argument("model", help="registered model name")
    sp.add_argument("--alias", default="champion", help="which version (default: champion)")
    sp.add_argument("-n", type=int, default=1, help="how many examples (default: 1)")
    sp.add_argument(
        "--out",
        required=True,
        help="the file to write: JSON (content-type application/json), or a .npy array when "
        "it ends in .npy (application/x-npy, about 3x smaller)",
    )
    sp = dsub.add_parser(
        "drift-epochs",
        parents=[common],
        help="write EEG epochs with a shift (gain, line noise, swapped electrodes) as .npy",
    )
    sp.set_defaults(func=cmd_drift_epochs)
    sp.add_argument("--input", required=True, help="epochs: a .npy array or `data heldout`'s JSON")
    sp.add_argument(
        "--shift",
        required=True,
        choices=["gain", "line-noise", "swap"],
        help="gain (--channel times --factor), line-noise (at --line-hz) or swap (the two "
        "--swap channels)",
    )
    sp.add_argument("--out", required=True, help="the .npy file to write")
    sp.add_argument("--channel", default="C3", help="gain: the channel (default C3)")
    sp.add_argument("--factor", type=float, default=1.5, help="gain: the factor (default 1.5)")
    sp.add_argument(
        "--swap", nargs=2, default=["Fz", "C3"], metavar="CH", help="swap: two channels"
    )
    sp.add_argument("--line-hz", type=float, default=50.0, help="line-noise: its frequency")
    sp.add_argument("--seed", type=int, default=0, help="line-noise: the phases' seed")
    sp = dsub.add_parser(
        "capture",
        parents=[common],
        help="export the captures of `trainchain serve --capture` that received true labels "
        "(POST /feedback): EEG epochs as OUT/<model>-v<version>.epochs.npz (the EEG family's "
        "load_epochs reads them beside recordings), images as class folders OUT/<label>/",
    )
    sp.set_defaults(func=cmd_capture)
    sp.add_argument("folder", help="the --capture folder of trainchain serve")
    sp.add_argument("--out", required=True, help="folder to write into")
