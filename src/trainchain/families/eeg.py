"""EEG motor imagery: epochs from recordings, and the band-pass + CSP + SVM pipeline.

``load_epochs`` reads every recording of a folder with mne (GDF, EDF, BDF, FIF),
picks the channels, resamples, and cuts one epoch per cue annotation (matched by
the annotation's *description*, such as ``"769"`` for a left-hand cue in BCI
Competition IV 2a or ``"T1"`` in PhysioNet eegmmidb). ``build_pipeline`` makes the
scikit-learn pipeline that takes raw epochs ``(n, channels, samples)`` and predicts
the string labels; that fitted pipeline is what gets registered and served.

mne and scikit-learn are imported here, not in the rest of trainchain.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mne
import numpy as np
import numpy.typing as npt
import scipy.signal
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline

from trainchain.core.config import Family
from trainchain.families import validation
from trainchain.families.base import FamilyDataError, FamilySpec
from trainchain.families.params import one_of, positive, with_defaults
from trainchain.families.validation import CrossValidation

__all__ = [
    "CHANNELS_BCI_IV_2A",
    "DEFAULT_CUES",
    "DEFAULT_FILES",
    "DEFAULT_PARAMS",
    "EPOCHS_SUFFIX",
    "LOAD_OPTIONS",
    "PIPELINE_PARAMS",
    "SPEC",
    "BandPass",
    "CrossValidation",
    "EEGDataError",
    "FeatureCache",
    "build_pipeline",
    "cross_validate",
    "fit_final",
    "fold_assignment",
    "load_epochs",
    "parse_band",
    "save_epochs",
    "train_epochs",
]

# The 22 EEG channels of BCI Competition IV 2a, in the dataset's order.
CHANNELS_BCI_IV_2A: tuple[str, ...] = (
    "Fz",
    "FC3",
    "FC1",
    "FCz",
    "FC2",
    "FC4",
    "C5",
    "C3",
    "C1",
    "Cz",
    "C2",
    "C4",
    "C6",
    "CP3",
    "CP1",
    "CPz",
    "CP2",
    "CP4",
    "P1",
    "Pz",
    "P2",
    "POz",
)
# Epochs already cut, with their labels (save_epochs; `trainchain data capture` writes them)
EPOCHS_SUFFIX = ".epochs.npz"
DEFAULT_FILES: tuple[str, ...] = ("*.gdf", "*.edf", "*.bdf", "*.fif", f"*{EPOCHS_SUFFIX}")
# BCI Competition IV 2a event codes: 769 left hand, 770 right hand.
DEFAULT_CUES: Mapping[str, str] = {"left": "769", "right": "770"}

# The keyword arguments of load_epochs: what ``data.options`` of trainchain.yaml may hold
# (besides the split settings the training script pops itself).
LOAD_OPTIONS: tuple[str, ...] = (
    "files",
    "cues",
    "channels",
    "sfreq",
    "tmin",
    "tmax",
    "subjects",
)

# Hyperparameters build_pipeline understands, with the textbook defaults.
DEFAULT_PARAMS: Mapping[str, Any] = {
    "band": "8-30",
    "csp_components": 4,
    "csp_reg": None,
    "C": 1.0,
    "kernel": "rbf",
    "gamma": "scale",
    # "sgd": a linear classifier trained over epochs (checkpointed, resumable)
    "classifier": "svc",
    "epochs": 20,
    "alpha": 1e-3,
}
PIPELINE_PARAMS: tuple[str, ...] = (*DEFAULT_PARAMS, "l_freq", "h_freq")
_KERNELS = ("linear", "rbf", "poly", "sigmoid")
_CLASSIFIERS = ("svc", "sgd")
_IIR_PARAMS: Mapping[str, Any] = {"order": 4, "ftype": "butter", "output": "sos"}

FloatArray = npt.NDArray[np.float64]
Labels = npt.NDArray[np.str_]


# What the family's models are: fitted scikit-learn pipelines with mne's steps, pickled.


class EEGDataError(FamilyDataError):
    """Recordings, options or hyperparameters of the EEG family are wrong."""


# --------------------------------------------------------------------------- loading


def _str_list(name: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and value and all(isinstance(v, str) and v for v in value):
        return list(value)
    raise EEGDataError(
        f"data option {name!r}: expected a string or a non-empty list of strings, got {value!r}"
    )


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise EEGDataError(f"data option {name!r}: expected a number, got {value!r}")
    return float(value)


def _check_cues(cues: Any) -> dict[str, str]:
    if not isinstance(cues, Mapping) or len(cues) < 2:
        raise EEGDataError(
            "data option 'cues': expected a mapping of at least two labels to annotation "
            f"descriptions (for example {{left: '769', right: '770'}}), got {cues!r}"
        )
    out: dict[str, str] = {}
    for label, desc in cues.items():
        if not isinstance(label, str) or not label:
            raise EEGDataError(f"data option 'cues': labels must be strings, got {label!r}")
        if isinstance(desc, bool) or not isinstance(desc, str | int):
            raise EEGDataError(
                f"data option 'cues': the description of {label!r} must be a string "
                f"(an annotation description such as '769' or 'T1'), got {desc!r}"
            )
        out[label] = str(desc)
    if len(set(out.values())) != len(out):
        raise EEGDataError(f"data option 'cues': two labels share one description: {out}")
    return out


def _norm_channel(name: str) -> str:
    """Channel name for lenient matching: ``'C3..'``, ``'EEG-C3'`` and ``'c3'`` all become C3."""
    upper = name.strip().upper()
    for prefix in ("EEG-", "EEG "):
        upper = upper.removeprefix(prefix)
    return upper.rstrip(". ").strip()


def _pick_names(raw: Any, channels: list[str] | None, path: Path) -> list[str]:
    """The recording's channel names to use, in the requested order."""
    present: list[str] = list(raw.ch_names)
    if channels is None:
        picks = mne.pick_types(raw.info, eeg=True, exclude=())
        names = [present[i] for i in picks]
        if not names:
            raise EEGDataError(
                f"{path}: no EEG channels (channel types: {sorted(set(raw.get_channel_types()))})",
                hint="list the channels to use in data.options.channels",
            )
        return names
    by_norm: dict[str, list[str]] = {}
    for name in present:
        by_norm.setdefault(_norm_channel(name), []).append(name)
    chosen: list[str] = []
    missing: list[str] = []
    for wanted in channels:
        if wanted in present:
            chosen.append(wanted)
        elif len(by_norm.get(_norm_channel(wanted), [])) == 1:
            chosen.append(by_norm[_norm_channel(wanted)][0])
        else:
            missing.append(wanted)
    if missing:
        raise EEGDataError(
            f"{path}: channel(s) {missing} not in the recording; it has {len(present)} "
            f"channels: {present}",
            hint="fix data.options.channels in trainchain.yaml, or set it to null to use "
            "every EEG channel",
        )
    if len(set(chosen)) != len(chosen):
        raise EEGDataError(f"{path}: data option 'channels' names a channel twice: {channels}")
    return chosen


def _find_recordings(data_dir: Path, patterns: list[str], subjects: list[str] | None) -> list[Path]:
    if not data_dir.is_dir():
        raise EEGDataError(
            f"the data folder {data_dir} does not exist or is not a folder",
            hint="set data.path in trainchain.yaml (or pass --data); for synthetic data run "
            "trainchain.families.eeg_synth.write_synthetic_dataset",
        )
    found = sorted({p for pattern in patterns for p in data_dir.rglob(pattern) if p.is_file()})
    if not found:
        raise EEGDataError(
            f"no recordings in {data_dir} matching {patterns} (searched recursively)",
            hint="put GDF/EDF/BDF/FIF recordings there, or set data.options.files",
        )
    if subjects is None:
        return found
    chosen = [p for p in found if any(p.stem.startswith(s) for s in subjects)]
    if not chosen:
        raise EEGDataError(
            f"no recording in {data_dir} has a file name starting with one of the subjects "
            f"{subjects}; found: {[p.name for p in found[:20]]}"
        )
    return chosen


def _read(path: Path, wanted: list[str] | None, rate: float) -> tuple[Any, list[str]]:
    """One recording with the chosen channels (in order), at ``rate`` Hz."""
    raw = mne.io.read_raw(path, preload=True, verbose="error")
    picked = _pick_names(raw, wanted, path)
    raw.pick(picked, verbose="error")
    raw.reorder_channels(picked)
    if not math.isclose(raw.info["sfreq"], rate):
        raw.resample(rate, verbose="error")
    return raw, picked


def _same_channels(path: Path, picked: list[str], names: list[str] | None) -> None:
    if names is not None and [_norm_channel(n) for n in picked] != [
        _norm_channel(n) for n in names
    ]:
        raise EEGDataError(
            f"{path}: its EEG channels {picked} differ from those of the first recording {names}",
            hint="list the channels to use in data.options.channels",
        )


def save_epochs(
    path: Path,
    x: npt.ArrayLike,
    y: Sequence[str],
    *,
    channels: Sequence[str] = (),
    sfreq: float | None = None,
) -> Path:
    """Epochs already cut ``(n, channels, samples)`` and their labels as one
    ``*.epochs.npz`` file that :func:`load_epochs` reads beside recordings. ``channels``
    and ``sfreq`` when known (else the reader's data options are taken to be theirs)."""
    array = np.asarray(x, dtype=np.float64)
    if array.ndim != 3 or len(array) != len(y):
        raise EEGDataError(
            f"save_epochs: expected X of shape (n, channels, samples) and n labels, got X "
            f"{array.shape} and {len(y)} labels"
        )
    if not path.name.endswith(EPOCHS_SUFFIX):
        raise EEGDataError(f"save_epochs: the file name must end in {EPOCHS_SUFFIX}, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.savez(
            f,
            X=array,
            y=np.asarray(list(y), dtype=np.str_),
            channels=np.asarray(list(channels), dtype=np.str_),
            sfreq=np.float64(math.nan if sfreq is None else sfreq),
        )
    return path


def _read_epochs_file(
    path: Path,
    wanted: list[str] | None,
    rate: float,
    n_samples: int,
    cues: Mapping[str, str],
) -> tuple[list[FloatArray], list[str], list[str]]:
    """The epochs, labels and channel names of a :func:`save_epochs` file, checked against
    the data options: the same channels, rate and epoch length, labels among the cues."""
    try:
        with np.load(path, allow_pickle=False) as f:
            x = np.asarray(f["X"], dtype=np.float64)
            y = [str(v) for v in f["y"]]
            stored = [str(c) for c in f["channels"]] if "channels" in f else []
            sfreq = float(f["sfreq"]) if "sfreq" in f else math.nan
    except (OSError, ValueError, KeyError) as err:
        raise EEGDataError(
            f"{path}: not an epochs file save_epochs writes (X, y): {type(err).__name__}: {err}"
        ) from None
    if x.ndim != 3 or len(x) != len(y):
        raise EEGDataError(
            f"{path}: expected X of shape (n, channels, samples) and n labels, got X {x.shape} "
            f"and {len(y)} labels"
        )
    if x.shape[2] != n_samples:
        raise EEGDataError(
            f"{path}: its epochs are {x.shape[2]} samples long, the data options make "
            f"{n_samples} ((tmax - tmin) x sfreq)",
            hint="set data.options tmin, tmax and sfreq to those the epochs were cut with",
        )
    if math.isfinite(sfreq) and not math.isclose(sfreq, rate):
        raise EEGDataError(
            f"{path}: its epochs are sampled at {sfreq:g} Hz, the data options say {rate:g} Hz",
            hint="set data.options.sfreq to the epochs' rate",
        )
    names = stored or (list(wanted) if wanted else [f"ch{i}" for i in range(x.shape[1])])
    if len(names) != x.shape[1]:
        raise EEGDataError(
            f"{path}: its epochs have {x.shape[1]} channels, the data options pick "
            f"{len(names)} ({names[:6]}...)",
            hint="list the epochs' channels in data.options.channels",
        )
    if (
        stored
        and wanted
        and [_norm_channel(n) for n in stored] != [_norm_channel(n) for n in wanted]
    ):
        raise EEGDataError(
            f"{path}: its channels {stored} are not the data options' {wanted}",
            hint="list the epochs' channels in data.options.channels",
        )
    unknown = sorted(set(y) - set(cues))
    if unknown:
        raise EEGDataError(
            f"{path}: labels {unknown[:10]} are not among the cues' classes {sorted(cues)}",
            hint="add them to data.options.cues, or leave those epochs out",
        )
    return list(x), y, names


def _cut(
    raw: Any, cues: Mapping[str, str], offset: int, n_samples: int
) -> tuple[list[FloatArray], list[str], int]:
    """Epochs at the annotations whose description is a cue; also how many fell outside."""
    present = {str(d) for d in raw.annotations.description} & set(cues.values())
    if not present:
        return [], [], 0
    # Onsets come from the annotations' descriptions; the integer ids are ours, by label.
    code_of = {desc: i + 1 for i, desc in enumerate(sorted(present))}
    label_of = {code_of[desc]: label for label, desc in cues.items() if desc in present}
    events, _ = mne.events_from_annotations(raw, event_id=code_of, regexp=None, verbose="error")
    data = raw.get_data()
    epochs: list[FloatArray] = []
    labels: list[str] = []
    dropped = 0
    for sample, _, code in events:
        start = int(sample) - raw.first_samp + offset
        if start < 0 or start + n_samples > data.shape[1]:
            dropped += 1
            continue
        epochs.append(data[:, start : start + n_samples])
        labels.append(label_of[int(code)])
    return epochs, labels, dropped


def load_epochs(
    data_dir: Path | str,
    *,
    files: str | Sequence[str] = DEFAULT_FILES,
    cues: Mapping[str, str] = DEFAULT_CUES,
    channels: Sequence[str] | None = CHANNELS_BCI_IV_2A,
    sfreq: float = 250.0,
    tmin: float = 0.5,
    tmax: float = 3.5,
    subjects: str | Sequence[str] | None = None,
    **unknown: Any,
) -> tuple[FloatArray, Labels, dict[str, Any]]:
    """Epochs ``X`` (n, channels, samples), their labels ``y`` and a description ``meta``.

    Every recording under ``data_dir`` matching ``files`` (recursively, sorted) is read;
    ``channels`` are picked in that order (``None``: every EEG channel); recordings at
    another rate are resampled to ``sfreq``; one epoch ``[tmin, tmax)`` seconds after
    each annotation whose description is one of ``cues``' values, labelled with its key,
    ``round((tmax - tmin) * sfreq)`` samples long, no baseline correction. ``subjects``
    keeps only files whose name starts with one of these prefixes. Files ending in
    ``.epochs.npz`` (:func:`save_epochs`, such as captured requests exported by
    ``trainchain data capture``) hold epochs already cut: they are added as they are,
    checked to have the same channels, rate and length.
    """
    if unknown:
        raise EEGDataError(
            f"unknown data option(s) {sorted(unknown)}: expected some of {list(LOAD_OPTIONS)} "
            "(plus test_size and split_seed, which the training script reads; the folds are "
            "validation.folds of trainchain.yaml)",
            hint="fix data.options in trainchain.yaml",
        )
    patterns = _str_list("files", files)
    cue_map = _check_cues(cues)
    wanted = None if channels is None else _str_list("channels", channels)
    rate = _number("sfreq", sfreq)
    start_s, stop_s = _number("tmin", tmin), _number("tmax", tmax)
    if rate <= 0:
        raise EEGDataError(f"data option 'sfreq': expected a rate > 0 Hz, got {sfreq!r}")
    if stop_s <= start_s:
        raise EEGDataError(
            f"data options 'tmin'/'tmax': expected tmin < tmax, got tmin={tmin!r}, tmax={tmax!r}"
        )
    n_samples = round((stop_s - start_s) * rate)
    subject_list = None if subjects is None else _str_list("subjects", subjects)
    paths = _find_recordings(Path(data_dir), patterns, subject_list)

    epochs: list[FloatArray] = []
    labels: list[str] = []
    names: list[str] | None = None
    per_file: dict[str, int] = {}
    skipped: dict[str, list[str]] = {}
    dropped = 0
    for path in paths:
        if path.name.endswith(EPOCHS_SUFFIX):
            file_epochs, file_labels, picked = _read_epochs_file(
                path, wanted, rate, n_samples, cue_map
            )
            _same_channels(path, picked, names)
            names = names or picked
            epochs += file_epochs
            labels += file_labels
            per_file[str(path)] = len(file_epochs)
            continue
        raw, picked = _read(path, wanted, rate)
        _same_channels(path, picked, names)
        names = names or picked
        file_epochs, file_labels, file_dropped = _cut(
            raw, cue_map, round(start_s * rate), n_samples
        )
        if not file_epochs and not file_dropped:
            skipped[str(path)] = sorted({str(d) for d in raw.annotations.description})
            continue
        epochs += file_epochs
        labels += file_labels
        dropped += file_dropped
        per_file[str(path)] = len(file_epochs)

    if not epochs:
        seen = {Path(p).name: d[:12] for p, d in skipped.items()}
        raise EEGDataError(
            f"no cue annotations {sorted(cue_map.values())} in the {len(paths)} recording(s) "
            f"under {data_dir} (annotation descriptions found, per file: {seen}"
            + (f"; {dropped} epoch(s) fell outside the recordings" if dropped else "")
            + ")",
            hint="set data.options.cues to the annotation descriptions of your cues "
            "(BCI IV 2a: {left: '769', right: '770'}; PhysioNet eegmmidb: "
            "{left: T1, right: T2})",
        )
    y = np.asarray(labels, dtype=np.str_)
    meta: dict[str, Any] = {
        "files": [str(p) for p in paths],
        "epochs_per_file": per_file,
        "skipped_files": skipped,
        "dropped_epochs": dropped,
        "channels": list(names or []),
        "sfreq": rate,
        "tmin": start_s,
        "tmax": stop_s,
        "n_samples": n_samples,
        "cues": cue_map,
        "counts": {label: int(np.sum(y == label)) for label in cue_map},
    }
    return np.stack(epochs).astype(np.float64, copy=False), y, meta


# --------------------------------------------------------------------------- pipeline


def parse_band(band: Any) -> tuple[float, float]:
    """``"8-30"`` or ``[8, 30]`` as ``(8.0, 30.0)``."""
    parts: Sequence[Any]
    if isinstance(band, str):
        parts = band.replace(" ", "").split("-")
    elif isinstance(band, Sequence):
        parts = band
    else:
        parts = ()
    try:
        low, high = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise EEGDataError(
            f"hyperparameter 'band': expected 'LOW-HIGH' in Hz (for example '8-30'), got {band!r}"
        ) from None
    return low, high


class BandPass(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Zero-phase Butterworth band-pass of epochs ``(n, channels, samples)`` (mne IIR)."""

    def __init__(self, l_freq: float = 8.0, h_freq: float = 30.0, sfreq: float = 250.0) -> None:
        self.l_freq = l_freq
        self.h_freq = h_freq
        self.sfreq = sfreq

    def _check(self) -> None:
        nyquist = float(self.sfreq) / 2
        if not 0 < float(self.l_freq) < float(self.h_freq) < nyquist:
            raise EEGDataError(
                f"band-pass {self.l_freq}-{self.h_freq} Hz at {self.sfreq} Hz: expected "
                f"0 < l_freq < h_freq < {nyquist} (the Nyquist frequency)"
            )

    def fit(self, X: Any, y: Any = None) -> BandPass:
        self._check()
        return self

    def transform(self, X: Any) -> FloatArray:
        self._check()
        data = np.asarray(X, dtype=np.float64)
        if data.ndim != 3:
            raise EEGDataError(
                f"expected epochs shaped (n_epochs, n_channels, n_samples), got shape {data.shape}"
            )
        if data.shape[-1] < 2:
            raise EEGDataError(
                f"epochs of {data.shape[-1]} sample(s) cannot be band-passed: give epochs of "
                "at least 2 samples (the data's sfreq x the epoch's length in seconds)"
            )
        sos, padlen = _iir_design(float(self.sfreq), float(self.l_freq), float(self.h_freq))
        # mne.filter.filter_data's IIR path, without its per-call setup (about 3 ms, most of
        # a served epoch's cost): the same design, odd extension of min(padlen, n - 1)
        # samples ("reflect_limited" within the signal), the same sosfiltfilt.
        filtered: FloatArray = scipy.signal.sosfiltfilt(
            sos.copy(), data, axis=-1, padtype="odd", padlen=min(padlen, data.shape[-1] - 1)
        )
        return filtered


@functools.lru_cache(maxsize=32)
def _iir_design(sfreq: float, l_freq: float, h_freq: float) -> tuple[FloatArray, int]:
    """The band-pass mne.filter.filter_data designs (second-order sections, pad length)."""
    design = mne.filter.create_filter(
        None, sfreq, l_freq, h_freq, method="iir", iir_params=dict(_IIR_PARAMS), verbose="error"
    )
    return np.asarray(design["sos"], dtype=np.float64), int(design["padlen"])


def build_pipeline(params: Mapping[str, Any], sfreq: float) -> Pipeline:
    """Band-pass -> CSP (log-variance) -> standard scaling -> SVC, from hyperparameters.

    ``params`` may hold ``band`` ('8-30') or ``l_freq``/``h_freq``, ``csp_components``,
    ``csp_reg`` (None, a shrinkage in [0, 1] or an mne estimator name such as
    'ledoit_wolf'), ``C``, ``kernel`` and ``gamma``; missing ones take ``DEFAULT_PARAMS``.
    """
    from mne.decoding import CSP
    from sklearn.preprocessing import StandardScaler

    p = with_defaults(
        params, DEFAULT_PARAMS, known=PIPELINE_PARAMS, pipeline="EEG", error=EEGDataError
    )
    if "l_freq" in params or "h_freq" in params:
        if "band" in params:
            raise EEGDataError(
                "hyperparameters 'band' and 'l_freq'/'h_freq' both given: expected one of them"
            )
        low = float(params.get("l_freq", parse_band(DEFAULT_PARAMS["band"])[0]))
        high = float(params.get("h_freq", parse_band(DEFAULT_PARAMS["band"])[1]))
    else:
        low, high = parse_band(p["band"])
    n_components = p["csp_components"]
    if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
        raise EEGDataError(
            f"hyperparameter 'csp_components': expected an integer >= 1, got {n_components!r}"
        )
    C = positive("C", p["C"], EEGDataError)
    one_of("kernel", p["kernel"], _KERNELS, EEGDataError)
    gamma = p["gamma"]
    if gamma not in ("scale", "auto") and (
        isinstance(gamma, bool) or not isinstance(gamma, int | float) or not gamma > 0
    ):
        raise EEGDataError(
            f"hyperparameter 'gamma': expected 'scale', 'auto' or a number > 0, got {gamma!r}"
        )
    one_of("classifier", p["classifier"], _CLASSIFIERS, EEGDataError)
    reg = p["csp_reg"]
    if isinstance(reg, str) and reg.lower() in ("none", "null", ""):
        reg = None
    bandpass = BandPass(l_freq=low, h_freq=high, sfreq=float(sfreq))
    bandpass._check()  # a bad band fails here, before any data is touched
    return Pipeline(
        [
            ("bandpass", bandpass),
            ("csp", CSP(n_components=n_components, reg=reg, log=True, rank="full")),
            ("scale", StandardScaler()),
            ("clf", _classifier(p, C, gamma)),
        ]
    )


def _classifier(p: Mapping[str, Any], C: float, gamma: Any) -> Any:
    if p["classifier"] == "sgd":
        from sklearn.linear_model import SGDClassifier

        alpha = positive("alpha", p["alpha"], EEGDataError)
        return SGDClassifier(loss="hinge", alpha=alpha, random_state=0)
    from sklearn.svm import SVC

    return SVC(C=C, kernel=p["kernel"], gamma=gamma)


def _check_epochs(epochs: Any) -> int:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise EEGDataError(f"hyperparameter 'epochs': expected an integer >= 1, got {epochs!r}")
    return epochs


def _sgd_epoch(clf: Any, features: Any, y: Any, epoch: int, classes: Any) -> None:
    """One pass of ``partial_fit`` over the features, in an order fixed by the epoch number
    (the same when an attempt resumes)."""
    order = np.random.default_rng([0, epoch]).permutation(len(y))
    clf.partial_fit(features[order], y[order], classes=classes)


def train_epochs(
    pipe: Pipeline,
    x_fit: Any,
    y_fit: Any,
    x_val: Any = None,
    y_val: Any = None,
    *,
    epochs: int,
    checkpoint: Path,
    report: Any = None,
    log: Any = print,
) -> tuple[Pipeline, float]:
    """Train the pipeline's last step over epochs with ``partial_fit``.

    The feature steps (band-pass, CSP, scaling) are fitted once; each epoch then passes
    over the shuffled training features, scores the validation part when one is given,
    writes the classifier and the epoch number to ``checkpoint`` atomically, and reports
    (``val_accuracy`` with a validation part, else ``fit_epoch``). Started with a
    checkpoint present, it resumes after the epoch it holds, so no finished epoch runs
    twice. Returns the fitted pipeline and the last val accuracy (NaN without one).
    """
    import pickle

    from trainchain.contract.task import atomic_write_bytes

    epochs = _check_epochs(epochs)
    features = pipe[:-1].fit(x_fit, y_fit)
    f_fit = features.transform(x_fit)
    f_val = None if x_val is None else features.transform(x_val)
    clf = pipe.steps[-1][1]
    classes = np.unique(y_fit)
    start, val = 0, float("nan")
    if checkpoint.exists():
        with checkpoint.open("rb") as f:
            state = pickle.load(f)  # noqa: S301 - our own checkpoint, written below
        clf, start, val = state["clf"], state["epoch"] + 1, state["val_accuracy"]
        pipe.steps[-1] = (pipe.steps[-1][0], clf)
        log(f"resuming after epoch {state['epoch']}")
    for epoch in range(start, epochs):
        _sgd_epoch(clf, f_fit, y_fit, epoch, classes)
        if f_val is not None:
            val = float(np.mean(clf.predict(f_val) == y_val))
        atomic_write_bytes(
            checkpoint, pickle.dumps({"epoch": epoch, "clf": clf, "val_accuracy": val})
        )
        if report is not None:
            if f_val is not None:
                report(step=epoch, val_accuracy=val)
            else:
                report(step=epoch, fit_epoch=epoch)
        shown = f": val_accuracy {val:.3f}" if f_val is not None else ""
        log(f"epoch {epoch + 1}/{epochs}{shown}")
    return pipe, val


# --------------------------------------------------------------------------- validation


def fold_assignment(
    y: Any, *, folds: int, repeats: int = 1, seed: int = 0
) -> list[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]]:
    """``(fit, validate)`` index pairs of the shared validation plan
    (:func:`trainchain.families.validation.fold_assignment`), counted in epochs."""
    return validation.fold_assignment(
        y,
        folds=folds,
        repeats=repeats,
        seed=seed,
        unit="epochs",
        more="add recordings",
        error=EEGDataError,
    )


class FeatureCache:
    """Band-passed epochs per band and CSP features per (band, CSP settings, fit indices),
    for one array of epochs: repeated evaluations of the same data (a benchmark's many
    trials) then cost milliseconds per fold instead of filtering and fitting again.

    It changes no number: the band-pass filters each epoch on its own and CSP transforms
    each epoch on its own, so filtering (or transforming) all epochs once and taking rows
    gives what filtering the rows gives (``tests/test_eeg_family.py`` checks it). With
    ``store`` the features are also kept on disk, named by a digest of the epochs and the
    key, so a second run of a benchmark computes none of them again.
    """

    def __init__(self, X: Any, store: Path | None = None) -> None:
        self.X = X
        self.store = store  # a folder that keeps the features between runs (by content)
        self._digest: str | None = None
        self._filtered: dict[tuple[Any, ...], FloatArray] = {}
        self._fitted: dict[tuple[Any, ...], Any] = {}
        self._features: dict[tuple[Any, ...], FloatArray] = {}

    def _stored(self, key: tuple[Any, ...]) -> Path | None:
        """Where the features of ``key`` are kept, named by the epochs' and key's digest."""
        import hashlib

        if self.store is None:
            return None
        if self._digest is None:
            data = np.ascontiguousarray(self.X)
            self._digest = hashlib.sha256(data.tobytes() + repr(data.shape).encode()).hexdigest()
        name = hashlib.sha256((self._digest + repr(key)).encode()).hexdigest()[:32]
        return self.store / name[:2] / f"{name}.npy"

    def features(self, pipe: Pipeline, fit_idx: Any, y_fit: Any) -> FloatArray:
        """CSP features of every epoch, CSP fitted on the epochs ``fit_idx``.

        A log-power CSP's decomposition does not depend on its number of components (it
        keeps the first ``n_components`` filters when it transforms), so one fit per band,
        settings and fold serves every number of components."""
        import copy

        bandpass, csp = pipe.named_steps["bandpass"], pipe.named_steps["csp"]
        band = (bandpass.l_freq, bandpass.h_freq, bandpass.sfreq)
        settings = csp.get_params()
        shared = settings.pop("n_components") if settings.get("log") else None
        fold = np.asarray(fit_idx).tobytes()
        fit_key = (*band, repr(sorted(settings.items())), fold)
        key = (*fit_key, csp.n_components)
        if key in self._features:
            return self._features[key]
        stored = self._stored(key)
        if stored is not None and stored.exists():
            self._features[key] = np.load(stored)
            return self._features[key]
        if band not in self._filtered:
            self._filtered[band] = bandpass.fit_transform(self.X)
        filtered = self._filtered[band]
        fitted = self._fitted.get(fit_key) if shared is not None else None
        if fitted is None:
            fitted = csp.fit(filtered[fit_idx], y_fit)
            if shared is not None:
                self._fitted[fit_key] = fitted
        transformer = copy.copy(fitted)
        transformer.n_components = csp.n_components
        self._features[key] = transformer.transform(filtered)
        if stored is not None:
            stored.parent.mkdir(parents=True, exist_ok=True)
            np.save(stored, self._features[key])
        return self._features[key]


def _fold_score(
    params: Mapping[str, Any],
    X: Any,
    y: Any,
    fit_idx: Any,
    val_idx: Any,
    *,
    sfreq: float,
    cache: FeatureCache | None,
) -> float:
    """Accuracy on ``val_idx`` of the pipeline fitted on ``fit_idx``: band-pass and CSP
    fitted on the fit part, then scaling and the classifier (svc at once, sgd over its
    ``epochs``) on their features."""
    pipe = build_pipeline(params, sfreq)
    if cache is None:
        features = pipe[:2].fit(X[fit_idx], y[fit_idx])
        f_fit, f_val = features.transform(X[fit_idx]), features.transform(X[val_idx])
    else:
        if cache.X is not X:
            raise ValueError("a FeatureCache serves the one array of epochs it was made for")
        all_features = cache.features(pipe, fit_idx, y[fit_idx])
        f_fit, f_val = all_features[fit_idx], all_features[val_idx]
    head = pipe[2:]
    if {**DEFAULT_PARAMS, **params}["classifier"] == "sgd":
        epochs = _check_epochs({**DEFAULT_PARAMS, **params}["epochs"])
        scaled = head[0].fit_transform(f_fit)
        classes = np.unique(y[fit_idx])
        for epoch in range(epochs):
            _sgd_epoch(head[-1], scaled, y[fit_idx], epoch, classes)
    else:
        head.fit(f_fit, y[fit_idx])
    return float(np.mean(head.predict(f_val) == y[val_idx]))


def cross_validate(
    params: Mapping[str, Any],
    X: Any,
    y: Any,
    *,
    sfreq: float,
    folds: int = 5,
    repeats: int = 1,
    seed: int = 0,
    report: Any = None,
    checkpoint: Path | None = None,
    cache: FeatureCache | None = None,
) -> CrossValidation:
    """Accuracy of each fold of stratified ``folds``-fold cross-validation of ``X``,
    repeated ``repeats`` times (``fold_assignment``), for every classifier alike.

    ``report`` and ``checkpoint`` are those of
    :func:`trainchain.families.validation.cross_validate` (a report step is a fold; a run
    started again on the same folds resumes after the last finished one). ``cache`` (a
    :class:`FeatureCache` of ``X``) only makes repeated calls faster.
    """

    def score_fold(fit_idx: Any, val_idx: Any) -> float:
        return _fold_score(params, X, y, fit_idx, val_idx, sfreq=sfreq, cache=cache)

    return validation.cross_validate(
        score_fold,
        fold_assignment(y, folds=folds, repeats=repeats, seed=seed),
        folds=folds,
        repeats=repeats,
        report=report,
        checkpoint=checkpoint,
    )


def fit_final(
    params: Mapping[str, Any],
    X: Any,
    y: Any,
    *,
    sfreq: float,
    checkpoint: Path,
    log: Any = print,
) -> Pipeline:
    """The pipeline fitted on all of ``X`` (the development part): svc at once; sgd over
    its ``epochs``, with a checkpoint after each one (a restarted attempt resumes)."""
    pipe = build_pipeline(params, sfreq)
    if {**DEFAULT_PARAMS, **params}["classifier"] != "sgd":
        return pipe.fit(X, y)
    fitted, _ = train_epochs(
        pipe, X, y, epochs={**DEFAULT_PARAMS, **params}["epochs"], checkpoint=checkpoint, log=log
    )
    return fitted


# --------------------------------------------------------------------------- drift

# The statistics the EEG family declares for drift monitoring (trainchain.core.drift):
# per channel, log band power in the mu and beta bands and the log variance of each
# epoch, and the model's own features (the CSP log-variances) when a fitted pipeline is
# given. One rfft per batch: well under a millisecond per 22 x 750 epoch.
DRIFT_BANDS: Mapping[str, tuple[float, float]] = {"mu": (8.0, 12.0), "beta": (13.0, 30.0)}
_TINY = 1e-30  # log of a flat channel stays finite (and far from any real value)


def _sfreq_of(model: Any, default: float) -> float:
    try:
        return float(model.named_steps["bandpass"].sfreq)
    except (AttributeError, KeyError, TypeError):
        return default


def _csp_features(model: Any, x: FloatArray) -> FloatArray | None:
    """The fitted pipeline's features up to its CSP (band-pass, CSP), or None when the
    model has no such steps."""
    steps = getattr(model, "named_steps", None)
    if steps is None or "csp" not in steps:
        return None
    names = [name for name, _ in model.steps]
    head = model[: names.index("csp") + 1]
    return np.asarray(head.transform(x), dtype=np.float64)


def summarise(batch: Any, model: Any = None, *, sfreq: float = 250.0) -> dict[str, FloatArray]:
    """Drift summary of epochs ``(n, channels, samples)``: ``{group: (n, features)}`` with
    groups ``mu`` and ``beta`` (log mean power in the band, per channel), ``log_var`` (log
    variance, per channel) and, given the fitted pipeline, ``csp`` (its CSP features). The
    sampling rate is the pipeline's band-pass rate when there is one, else ``sfreq``."""
    x = np.asarray(batch, dtype=np.float64)
    if x.ndim != 3 or min(x.shape) < 1:
        raise EEGDataError(
            f"epochs for a drift summary: expected an array (n, channels, samples), got shape "
            f"{x.shape}"
        )
    rate = _sfreq_of(model, sfreq)
    power = np.abs(np.fft.rfft(x, axis=-1)) ** 2
    freqs = np.fft.rfftfreq(x.shape[-1], 1.0 / rate)
    out: dict[str, FloatArray] = {}
    for name, (low, high) in DRIFT_BANDS.items():
        in_band = (freqs >= low) & (freqs <= high)
        if not in_band.any():
            raise EEGDataError(
                f"epochs of {x.shape[-1]} samples at {rate} Hz have no frequency bin in the "
                f"{name} band {low}-{high} Hz: expected longer epochs"
            )
        out[name] = np.log(power[..., in_band].mean(axis=-1) + _TINY)
    out["log_var"] = np.log(x.var(axis=-1) + _TINY)
    if model is not None:
        features = _csp_features(model, x)
        if features is not None:
            out["csp"] = features
    return out


def drift_feature_names(
    summary: Mapping[str, Any], channels: Sequence[str] | None = None
) -> dict[str, list[str]]:
    """Feature names of a :func:`summarise` result: channel names per band, CSP components."""
    names: dict[str, list[str]] = {}
    for group, values in summary.items():
        k = int(np.asarray(values).shape[1])
        if group == "csp":
            names[group] = [f"csp{j + 1}" for j in range(k)]
        else:
            chans = list(channels) if channels is not None and len(channels) == k else None
            if chans is None and k == len(CHANNELS_BCI_IV_2A):
                chans = list(CHANNELS_BCI_IV_2A)
            names[group] = chans or [f"ch{j}" for j in range(k)]
    return names


def drift_reference(
    pipe: Any, X: Any, *, channels: Sequence[str] | None = None, seed: int = 0
) -> Any:
    """The drift reference of a fitted pipeline on its training epochs ``X`` (the
    development part, never the held-out part): their summary and the classes the
    pipeline predicts for them, at most ``trainchain.core.drift.MAX_ROWS`` rows."""
    from trainchain.core.drift import MAX_ROWS, Reference

    x = np.asarray(X, dtype=np.float64)
    if len(x) > MAX_ROWS:  # summarise only the rows the reference keeps
        x = x[np.sort(np.random.default_rng(seed).permutation(len(x))[:MAX_ROWS])]
    summary = summarise(x, pipe)
    predictions = pipe.predict(x)
    return Reference.build(
        "eeg",
        summary,
        names=drift_feature_names(summary, channels),
        predictions=[str(p) for p in predictions],
        seed=seed,
        input_shape=x.shape[1:],
    )


def drift_monitor(model_dir: Path) -> Any:
    """The family's :data:`~trainchain.families.base.DriftMonitor` for the pipeline saved
    in ``model_dir``: summary (with its CSP features) and predicted classes of a batch."""
    import mlflow.sklearn

    pipe = mlflow.sklearn.load_model(str(model_dir))

    def monitor(batch: Any) -> tuple[dict[str, Any], list[str]]:
        return dict(summarise(batch, pipe)), [str(p) for p in pipe.predict(batch)]

    return monitor


def serving_summary(batch: Any, probabilities: Any = None) -> dict[str, Any]:
    """The :data:`~trainchain.families.base.ServingSummary` of one request's epochs: the
    ``mu``, ``beta`` and ``log_var`` groups of :func:`summarise`, not ``csp``.

    The CSP features need the pipeline's band-pass filter, which costs several milliseconds
    per epoch (measured: 4.3 ms for 4 epochs against 0.3 ms for the three other groups); the
    only way to have them free would be to predict from them (the pipeline's tail after
    its CSP), bypassing the MLflow model the service loads and the checks it makes. The
    channels' band powers are what the CSP features are made of, so a drift that moves the
    CSP features shows in them; ``trainchain drift`` tests the CSP group too."""
    return dict(summarise(batch))


# The family's contract (trainchain.families.base), declared once its functions exist.
SPEC = FamilySpec(
    family=Family.EEG,
    inputs="EEG epochs: float array (n, channels, samples), the channels and rate of training",
    flavor="sklearn",
    requirements=("mne", "scikit-learn", "numpy", "scipy", "cloudpickle"),
    drift_monitor=drift_monitor,
    serving_summary=serving_summary,
)
