"""Drift detection: trainchain's tests against an anchor's detector, on the same streams.

What is measured, for both detectors on the same features of the same streams, fed as
the service would: every request (one epoch or one image) adds its summary to a window
of the latest 200 (``monitoring.window``); from 50 requests on (``min_window``) the
window is tested every ``--every`` requests (default 10).

- Requests until the first detection, per simulated shift, over many streams (seeds):
  median [bootstrap 95% CI], a stream with no detection within 200 counting as more
  than 200; and the share of streams detected within 200 [exact binomial 95% CI].
- False alarms on unshifted held-out streams: the share of tumbling windows of 200
  (disjoint, so independent; over the held-out rows in a seeded random order, as a
  folder of images comes class by class) that raise an alarm [exact 95% CI]; beside it the share
  of streams with any alarm among the sequential tests of their first 200 requests
  (what a service sees: every test is another chance of a false alarm).
- Per-request cost: the summary of one epoch or image (ms, timeit, median of 7
  repeats; the EEG summary with and without the model's CSP features), and one test of
  a full window (ms); the cost per request is summary + test / every.

Detectors:

- ours: ``trainchain.core.drift.test`` with the defaults of ``monitoring:`` (KS per
  feature and a G-test on the predicted classes, Holm over all, alpha 0.01);
- anchor: alibi-detect's ``KSDrift`` (a two-sample KS test per feature, ``mode='asymp'``,
  drift when any p-value is below ``p_val / features``: Bonferroni), at its default
  ``p_val`` 0.05 and at 0.01 (ours' alpha). Neither anchor installs beside trainchain's
  pins: alibi-detect 0.13.0 requires numpy < 2 (trainchain pins numpy 2.4), and
  Evidently 0.7.23 installs but fails on import under pandas 3.1 (it imports
  ``pandas.core.dtypes.common.infer_dtype_from_object``, which pandas 3 removed). So
  the anchor here is KSDrift's rule written with scipy (``ks_2samp(..., method='asymp')``
  and the Bonferroni threshold, what alibi-detect's ``BaseUnivariateDrift`` does), on
  the same feature columns as ours (without the class test, which KSDrift does not
  have). Checked once against alibi-detect 0.13.0 itself, in a separate virtualenv
  with numpy 1.26.4: on 40 EEG windows (unshifted, gain x1.1 to x1.5, another subject)
  at both levels, 80 of 80 decisions were the same. Its own ``predict`` on a window of
  200 x 70 took about 130 ms there (a Python loop over the features, with this
  benchmark running beside it); the anchor's cost in the table is the scipy rule's.

Streams:

- EEG, synthetic (``trainchain.families.eeg_synth``, medium, 22 channels at 250 Hz,
  epochs 0.5-3.5 s as the example cuts them): ``--datasets`` recordings of
  ``--subjects`` subjects each. For every subject the example's pipeline
  (``build_pipeline({})``) is fitted on 200 random epochs and its reference made from
  them (``drift_reference``); the subject's other epochs are the held-out stream,
  unshifted or shifted with ``shift_epochs``: C3's gain x1.5, 50 Hz line noise, Fz and C3
  swapped; "another subject" is the next subject's epochs through the same pipeline.
  A stream is a seeded random order of them.
- EEG, real (``../shared/data/eegmmidb``: 64 channels at 160 Hz, the example's
  22-channel shifts do not apply): every annotation (rest T0, left T1, right T2) of runs
  4, 8, 12 cut into two 2-s epochs (0-2 s and 2-4 s), about 180 per subject: S001's
  are split at random into 2/3 development (the pipeline ``build_pipeline({}, 160)``
  fitted on its left/right epochs; the reference from all of them) and 1/3 held out
  (unshifted); S003's and S004's epochs are "another subject" (streams of about 180,
  so "within 200" means within all of them).
- Images (``../shared/data/cats-vs-dogs``, read at 64 x 64 with the CNN family's
  loader): the reference is the training images' summaries (brightness, contrast,
  sharpness, colour means) without a model (no confidence group: no CNN is trained);
  the held-out stream is the test images, unshifted, brightness +30% (x1.3, clipped) or
  blurred (Gaussian, sigma 1 pixel).

The synthetic recordings and the image summaries are kept in ``--cache`` (default
~/.cache/trainchain/drift-benchmark); a second run writes no recording again. The
real-data parts are skipped, with a message, where ../shared/data is absent.

    .venv/bin/python benchmarks/drift.py [--quick] [--streams 20] [--datasets 2]
        [--subjects 4] [--every 10] [--cache DIR | --no-cache]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import timeit
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("MNE_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
EEGMMIDB = DATA / "eegmmidb"
IMAGES = DATA / "cats-vs-dogs"
HORIZON = 200  # the target: detected within this many requests
RESAMPLES = 2000
ANCHOR_LEVELS = (0.05, 0.01)  # KSDrift's default p_val, and ours' alpha
DETECTORS = ("ours", *(f"anchor p {p}" for p in ANCHOR_LEVELS))


def log(text: str) -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------- detectors


@dataclass
class Stream:
    """One stream's summaries (``{group: (n, features)}``) and predicted classes."""

    summary: Mapping[str, Any]
    predictions: Sequence[str] | None

    def __len__(self) -> int:
        return len(next(iter(self.summary.values())))

    def rows(self, start: int, stop: int) -> Stream:
        preds = None if self.predictions is None else self.predictions[start:stop]
        return Stream({g: v[start:stop] for g, v in self.summary.items()}, preds)

    def take(self, order: Any) -> Stream:
        preds = None if self.predictions is None else [self.predictions[i] for i in order]
        return Stream({g: v[order] for g, v in self.summary.items()}, preds)


@dataclass
class Detectors:
    """Ours and the anchor on one reference: ``alarms(window rows)`` -> one bool each."""

    reference: Any  # trainchain.core.drift.Reference
    config: Any = None
    timings: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from trainchain.core.config import Monitoring

        self.config = self.config or Monitoring.model_validate({})
        self.groups = list(self.reference.groups)
        self.ref_matrix = np.concatenate([self.reference.groups[g].values for g in self.groups], 1)

    def ours(self, rows: Stream) -> bool:
        from trainchain.core import drift

        window = drift.Window(self.config.window)
        window.add(rows.summary, rows.predictions)
        return bool(drift.test(self.reference, window, self.config).detected)

    def anchor_p_values(self, rows: Stream) -> Any:
        """KSDrift's feature scores: the asymptotic two-sample KS p-value per feature."""
        from scipy.stats import ks_2samp

        matrix = np.concatenate([np.asarray(rows.summary[g]) for g in self.groups], 1)
        return ks_2samp(self.ref_matrix, matrix, axis=0, method="asymp").pvalue

    def alarms(self, rows: Stream) -> dict[str, bool]:
        p = self.anchor_p_values(rows)
        k = self.ref_matrix.shape[1]
        out = {"ours": self.ours(rows)}
        for level in ANCHOR_LEVELS:
            out[f"anchor p {level}"] = bool((p < level / k).any())
        return out


def first_detection(det: Detectors, stream: Stream, every: int) -> dict[str, int | None]:
    """Requests until each detector first alarms within the first HORIZON (or None)."""
    window, min_window = det.config.window, det.config.min_window
    found: dict[str, int | None] = dict.fromkeys(DETECTORS)
    for t in range(every, min(len(stream), HORIZON) + 1, every):
        if t < min_window:
            continue
        alarms = det.alarms(stream.rows(max(0, t - window), t))
        for name, hit in alarms.items():
            if hit and found[name] is None:
                found[name] = t
        if all(v is not None for v in found.values()):
            break
    return found


def tumbling_alarms(det: Detectors, stream: Stream) -> list[dict[str, bool]]:
    """One test per disjoint window of ``window`` requests (a last shorter one counts
    when it reaches ``min_window``)."""
    size, min_window = det.config.window, det.config.min_window
    return [
        det.alarms(stream.rows(start, start + size))
        for start in range(0, len(stream), size)
        if len(stream) - start >= min_window
    ]


# --------------------------------------------------------------------------- results


@dataclass
class Results:
    """Per case and shift: first detections per stream; per case: false-alarm counts."""

    detections: dict[tuple[str, str], list[dict[str, int | None]]] = field(default_factory=dict)
    windows: dict[str, list[dict[str, bool]]] = field(default_factory=dict)
    sequential: dict[str, list[dict[str, int | None]]] = field(default_factory=dict)
    costs: list[tuple[str, float, tuple[float, float]]] = field(default_factory=list)


def run_case(
    results: Results,
    case: str,
    det: Detectors,
    *,
    held_out: Stream,
    shifted: Mapping[str, Stream],
    streams: int,
    every: int,
    seed: int,
) -> None:
    """Streams (seeded orders) of the held-out rows, unshifted and shifted."""
    rng = np.random.default_rng(seed)
    # in a seeded random order: a folder's images come class by class
    mixed = held_out.take(rng.permutation(len(held_out)))
    results.windows.setdefault(case, []).extend(tumbling_alarms(det, mixed))
    for _ in range(streams):
        order = rng.permutation(len(held_out))
        results.sequential.setdefault(case, []).append(
            first_detection(det, held_out.take(order), every)
        )
        for name, stream in shifted.items():
            mine = order if len(stream) == len(held_out) else rng.permutation(len(stream))
            results.detections.setdefault((case, name), []).append(
                first_detection(det, stream.take(mine), every)
            )


def bootstrap_median(values: Sequence[float], seed: int = 0) -> tuple[float, float, float]:
    arr = np.asarray(values, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(arr), size=(RESAMPLES, len(arr)))
    low, high = np.percentile(np.median(arr[idx], axis=1), [2.5, 97.5])
    return float(np.median(arr)), float(low), float(high)


def share(hits: int, n: int) -> str:
    from trainchain.core.verdict import binomial_interval

    if n == 0:
        return "no window"
    low, high = binomial_interval(hits, n)
    return f"{hits}/{n} = {hits / n:.0%} [{low:.0%}, {high:.0%}]"


def median_text(found: Sequence[int | None]) -> str:
    values = [HORIZON + 1 if f is None else f for f in found]
    point, low, high = bootstrap_median(values)

    def one(v: float) -> str:
        return f">{HORIZON}" if v > HORIZON else f"{v:.0f}"

    return f"{one(point)} [{one(low)}, {one(high)}]"


def tables(results: Results, every: int) -> list[str]:
    lines = [
        f"Requests until detection (tested every {every} from 50, window 200): median "
        f"[bootstrap 95% CI] over streams, >{HORIZON} = not within {HORIZON}; and the share "
        f"detected within {HORIZON} [exact 95% CI]",
        "",
        "| data | shift | streams | "
        + " | ".join(DETECTORS)
        + " | "
        + " | ".join(f"{d}: within {HORIZON}" for d in DETECTORS)
        + " |",
        "|---|---|---|" + "---|" * (2 * len(DETECTORS)),
    ]
    for (case, shift), found in results.detections.items():
        medians = [median_text([f[d] for f in found]) for d in DETECTORS]
        within = [share(sum(f[d] is not None for f in found), len(found)) for d in DETECTORS]
        lines.append(f"| {case} | {shift} | {len(found)} | " + " | ".join(medians + within) + " |")
    lines += [
        "",
        "False alarms on unshifted held-out streams: share of disjoint windows of 200 with "
        "an alarm [exact 95% CI]; streams with any alarm among the sequential tests of their "
        f"first {HORIZON} requests",
        "",
        "| data | "
        + " | ".join(f"{d}: windows" for d in DETECTORS)
        + " | "
        + " | ".join(f"{d}: streams" for d in DETECTORS)
        + " |",
        "|---|" + "---|" * (2 * len(DETECTORS)),
    ]
    for case, windows in results.windows.items():
        seq = results.sequential.get(case, [])
        cells = [share(sum(w[d] for w in windows), len(windows)) for d in DETECTORS]
        cells += [share(sum(s[d] is not None for s in seq), len(seq)) for d in DETECTORS]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Cost per request (ms; median of 7 timeit repeats; a test every {every} requests)",
        "",
        "| summary of | summary per request | one test of 200, ours | one test, anchor | "
        f"per request, ours (summary + test / {every}) |",
        "|---|---|---|---|---|",
    ]
    for what, summary_ms, (ours_ms, anchor_ms) in results.costs:
        lines.append(
            f"| {what} | {summary_ms:.3f} | {ours_ms:.1f} | {anchor_ms:.1f} | "
            f"{summary_ms + ours_ms / every:.2f} |"
        )
    return lines


def per_call_ms(fn: Callable[[], Any], number: int) -> float:
    """Median over 7 repeats of the time of one call, in ms."""
    times = timeit.repeat(fn, number=number, repeat=7)
    return float(np.median(times)) / number * 1000


def test_costs(det: Detectors, stream: Stream) -> tuple[float, float]:
    rows = stream.rows(0, det.config.window)
    return per_call_ms(lambda: det.ours(rows), 3), per_call_ms(lambda: det.anchor_p_values(rows), 3)


# --------------------------------------------------------------------------- EEG


def eeg_stream(pipe: Any, x: Any) -> Stream:
    from trainchain.families import eeg

    return Stream(eeg.summarise(x, pipe), [str(p) for p in pipe.predict(x)])


def synthetic_eeg(results: Results, cache: Path, args: argparse.Namespace) -> None:
    from trainchain.families import eeg
    from trainchain.families.eeg_synth import shift_epochs, write_synthetic_dataset

    shifts: dict[str, dict[str, Any]] = {
        "gain x1.5 (C3)": {"shift": "gain", "channel": "C3", "factor": 1.5},
        "50 Hz line noise": {"shift": "line-noise"},
        "Fz and C3 swapped": {"shift": "swap", "swap": ("Fz", "C3")},
    }
    for d in range(args.datasets):
        folder = cache / "recordings" / f"medium-{d}-{args.subjects}x{2 * args.trials}"
        if not (folder / ".complete").exists():
            log(f"  writing synthetic recordings {folder.name} (once; kept in the cache)")
            write_synthetic_dataset(
                folder,
                subjects=args.subjects,
                difficulty="medium",
                seed=100 + d,
                trials_per_class=args.trials,
            )
            (folder / ".complete").touch()
        xs = [eeg.load_epochs(folder, subjects=f"S{s + 1:02d}")[:2] for s in range(args.subjects)]
        for s, (x, y) in enumerate(xs):
            started = time.perf_counter()
            order = np.random.default_rng(1000 * d + s).permutation(len(x))
            dev, rest = order[:200], order[200:]
            pipe = eeg.build_pipeline({}, 250.0).fit(x[dev], y[dev])
            det = Detectors(eeg.drift_reference(pipe, x[dev]))
            held = eeg_stream(pipe, x[rest])
            shifted = {
                name: eeg_stream(pipe, shift_epochs(x[rest], seed=s, **opts))
                for name, opts in shifts.items()
            }
            other = xs[(s + 1) % len(xs)][0]
            shifted["another subject"] = eeg_stream(pipe, other)
            run_case(
                results,
                "EEG synthetic",
                det,
                held_out=held,
                shifted=shifted,
                streams=args.streams,
                every=args.every,
                seed=s,
            )
            if d == 0 and s == 0:
                one = x[rest][:1]
                results.costs.append(
                    (
                        "EEG epoch 22 x 750, no model",
                        per_call_ms(partial(eeg.summarise, one), 200),
                        test_costs(det, held),
                    )
                )
                results.costs.append(
                    (
                        "EEG epoch 22 x 750, with CSP features",
                        per_call_ms(partial(eeg.summarise, one, pipe), 50),
                        test_costs(det, held),
                    )
                )
            log(
                f"  dataset {d + 1}/{args.datasets} subject {s + 1}/{args.subjects}: "
                f"{len(rest)} held-out epochs, {args.streams} streams x {len(shifted) + 1}, "
                f"{time.perf_counter() - started:.0f} s"
            )


def real_eeg(results: Results, args: argparse.Namespace) -> None:
    from trainchain.families import eeg

    if not EEGMMIDB.is_dir():
        log(f"  skipped: {EEGMMIDB} is absent (see ../shared/data/README.md)")
        return
    cues = {"rest": "T0", "left": "T1", "right": "T2"}

    def epochs(subject: str) -> tuple[Any, Any]:
        parts = [
            eeg.load_epochs(
                EEGMMIDB / subject,
                files=["*.edf"],
                cues=cues,
                channels=None,
                sfreq=160.0,
                tmin=start,
                tmax=start + 2.0,
            )[:2]
            for start in (0.0, 2.0)
        ]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    x, y = epochs("S001")
    order = np.random.default_rng(0).permutation(len(x))
    cut = (2 * len(x)) // 3
    dev, rest = order[:cut], order[cut:]
    motor = dev[np.isin(y[dev], ["left", "right"])]
    pipe = eeg.build_pipeline({}, 160.0).fit(x[motor], y[motor])
    det = Detectors(eeg.drift_reference(pipe, x[dev]))
    held = eeg_stream(pipe, x[rest])
    shifted = {f"another subject ({s})": eeg_stream(pipe, epochs(s)[0]) for s in ("S003", "S004")}
    run_case(
        results,
        "EEG eegmmidb S001",
        det,
        held_out=held,
        shifted=shifted,
        streams=args.streams,
        every=args.every,
        seed=0,
    )
    one = x[rest][:1]
    results.costs.append(
        (
            "EEG epoch 64 x 320, with CSP features",
            per_call_ms(partial(eeg.summarise, one, pipe), 50),
            test_costs(det, eeg_stream(pipe, x[dev])),
        )
    )
    log(
        f"  S001: {len(dev)} reference epochs ({len(motor)} left/right fit the pipeline), "
        f"{len(rest)} held out; S003/S004: "
        + ", ".join(str(len(shifted[k])) for k in shifted)
        + " epochs"
    )


# --------------------------------------------------------------------------- images


def image_summaries(cache: Path, size: int) -> dict[str, dict[str, Any]]:
    """The cats-vs-dogs summaries (train; test unshifted, brighter, blurred), cached."""
    from scipy.ndimage import gaussian_filter

    from trainchain.families import cnn

    path = cache / f"cats-vs-dogs-{size}.npz"
    if path.exists():
        saved = np.load(path)
        out: dict[str, dict[str, Any]] = {}
        for key in saved.files:
            part, group = key.split("/")
            out.setdefault(part, {})[group] = saved[key]
        return out
    data = cnn.load_images(IMAGES, image_size=size, validation_split=0.2, seed=0)
    test = data.x_test
    brighter = np.clip(test.astype(np.float64) * 1.3, 0, 255).astype(np.uint8)
    blurred = np.clip(
        np.rint(gaussian_filter(test.astype(np.float64), sigma=(0, 1.0, 1.0, 0))), 0, 255
    ).astype(np.uint8)
    out = {
        "train": cnn.summarise(data.x_train),
        "test": cnn.summarise(test),
        "brightness +30%": cnn.summarise(brighter),
        "Gaussian blur (sigma 1 px)": cnn.summarise(blurred),
    }
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{f"{p}/{g}": v for p, groups in out.items() for g, v in groups.items()})
    return out


def images(results: Results, cache: Path, args: argparse.Namespace) -> None:
    from trainchain.core import drift
    from trainchain.families import cnn

    if not IMAGES.is_dir():
        log(f"  skipped: {IMAGES} is absent (see ../shared/data/README.md)")
        return
    parts = image_summaries(cache, args.image_size)
    reference = drift.Reference.build(
        "cnn",
        parts["train"],
        names={"image": list(cnn.IMAGE_FEATURES), "colour": ["red", "green", "blue"]},
    )
    det = Detectors(reference)
    held = Stream(parts["test"], None)
    shifted = {k: Stream(v, None) for k, v in parts.items() if k not in {"train", "test"}}
    run_case(
        results,
        "images cats-vs-dogs",
        det,
        held_out=held,
        shifted=shifted,
        streams=args.streams,
        every=args.every,
        seed=0,
    )
    one = np.full((1, args.image_size, args.image_size, 3), 128, dtype=np.uint8)
    results.costs.append(
        (
            f"image {args.image_size} x {args.image_size} RGB, no model",
            per_call_ms(partial(cnn.summarise, one), 200),
            test_costs(det, held),
        )
    )
    log(f"  {len(parts['train']['image'])} reference images, {len(held)} held out")


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny setting (a smoke run)")
    parser.add_argument("--streams", type=int, default=20, help="seeded orders per case")
    parser.add_argument("--datasets", type=int, default=2, help="synthetic recordings")
    parser.add_argument("--subjects", type=int, default=4, help="subjects per recording")
    parser.add_argument("--trials", type=int, default=400, help="synthetic trials per class")
    parser.add_argument("--every", type=int, default=10, help="test every N requests")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--no-real", action="store_true", help="skip ../shared/data")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "trainchain"
        / "drift-benchmark",
        help="keeps the synthetic recordings and image summaries (default: %(default)s)",
    )
    parser.add_argument("--no-cache", action="store_true", help="a temporary folder instead")
    args = parser.parse_args()
    if args.quick:
        args.streams, args.datasets, args.subjects, args.trials = 3, 1, 2, 150
    if args.every < 1 or args.streams < 1 or args.subjects < 2 or 2 * args.trials <= 250:
        parser.error("expected --every >= 1, --streams >= 1, --subjects >= 2, --trials > 125")
    warnings.filterwarnings("ignore", category=FutureWarning)
    started = time.perf_counter()
    log(
        f"drift benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}: "
        f"{os.cpu_count()} cores, Python {platform.python_version()}"
    )
    results = Results()
    with tempfile.TemporaryDirectory(prefix="trainchain-drift-") as name:
        cache = Path(name) if args.no_cache else args.cache
        cache.mkdir(parents=True, exist_ok=True)
        log(f"cache: {cache}")
        log(
            f"1. synthetic EEG: {args.datasets} recordings x {args.subjects} subjects, "
            f"{2 * args.trials} epochs each, {args.streams} streams per subject"
        )
        synthetic_eeg(results, cache, args)
        if args.no_real:
            log("2-3. real data skipped (--no-real)")
        else:
            log("2. real EEG: eegmmidb S001 (reference), S003 and S004 (another subject)")
            real_eeg(results, args)
            log(f"3. images: cats-vs-dogs at {args.image_size} x {args.image_size}")
            images(results, cache, args)
    log(f"\nall done in {time.perf_counter() - started:.0f} s\n")
    for line in tables(results, args.every):
        log(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
