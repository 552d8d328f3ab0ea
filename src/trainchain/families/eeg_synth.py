"""Synthetic motor-imagery EEG, shaped like BCI Competition IV 2a (left vs right hand).

Each subject is one continuous recording of the 22 BCI IV 2a EEG channels at 250 Hz,
written as FIF with mne. A trial: ``768`` (trial start, fixation cross) at 0 s, the cue
``769`` (left hand) or ``770`` (right hand) at 1 s, motor imagery until 5 s, then a
short break. What it holds, as sources on the scalp mixed into the electrodes by
volume conduction (a smooth kernel of the electrode distances):

- pink (1/f) background activity at every site;
- a sensorimotor mu rhythm (subject-specific peak, about 10-12 Hz) and a beta rhythm
  over C3 and C4, with event-related desynchronisation (ERD) over the hemisphere
  opposite the imagined hand (left hand: right hemisphere, C4), of varying depth from
  trial to trial, and no ERD at all in some trials (lapses of attention);
- non-discriminative activity: sensorimotor high-beta bursts (about 16-30 Hz, slow
  random amplitude unrelated to the cue), a parieto-occipital alpha rhythm, eye blinks
  over the frontal sites, line noise and amplifier noise.

``difficulty`` sets the strengths: on ``easy`` the textbook CSP + SVM (8-30 Hz) does
well; on ``medium`` the ERD lives in the mu band only and the high-beta bursts swamp
8-30 Hz, so the textbook band is mediocre and a well-chosen band is good; on ``hard``
the ERD is weak and unreliable; on ``impossible`` there is no ERD at all: nothing in the
recording tells left from right, so no model can beat chance (what a tuner's false
successes are measured on). A subject holds 144 trials per class by default, the size of
one BCI IV 2a session. The data are deterministic for a given seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import mne
import numpy as np
import numpy.typing as npt

from trainchain.families.eeg import CHANNELS_BCI_IV_2A, EEGDataError

__all__ = [
    "DIFFICULTIES",
    "SFREQ",
    "SHIFTS",
    "TRIALS_PER_CLASS",
    "shift_epochs",
    "write_synthetic_dataset",
]

SFREQ = 250.0
MONTAGE = "colin27_1020"  # the standard 10-20 positions (mne's former "standard_1020")
DIFFICULTIES = ("easy", "medium", "hard", "impossible")
TRIALS_PER_CLASS = 144  # one BCI IV 2a session: 288 cues
_MAX_SUBJECTS = 50
_UV = 1e-6
# Trial timing in seconds, as in BCI IV 2a but with a shorter fixation and break.
_CUE_AT = 1.0
_IMAGERY_END = 5.0
_CUE_DURATION = 1.25
_LEAD = 3.0

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class _Level:
    mu_amp: float  # mu rhythm amplitude at its source, relative to the background
    mu_erd: float  # mean fraction of mu power lost over the contralateral hemisphere
    beta_amp: float
    beta_erd: float
    erd_sd: float  # trial-to-trial spread of the ERD depth
    lapse: float  # share of trials without any ERD
    burst_amp: float  # non-discriminative high-beta bursts (16-30 Hz) at C3/C4
    burst_sd: float  # log-amplitude spread of those bursts
    alpha_amp: float  # parieto-occipital alpha


_LEVELS: Mapping[str, _Level] = {
    "easy": _Level(
        mu_amp=3.0,
        mu_erd=0.7,
        beta_amp=1.5,
        beta_erd=0.5,
        erd_sd=0.05,
        lapse=0.03,
        burst_amp=0.5,
        burst_sd=0.5,
        alpha_amp=2.0,
    ),
    "medium": _Level(
        mu_amp=3.0,
        mu_erd=0.7,
        beta_amp=0.8,
        beta_erd=0.0,
        erd_sd=0.05,
        lapse=0.03,
        burst_amp=2.5,
        burst_sd=0.8,
        alpha_amp=2.5,
    ),
    "hard": _Level(
        mu_amp=2.5,
        mu_erd=0.5,
        beta_amp=0.8,
        beta_erd=0.0,
        erd_sd=0.15,
        lapse=0.3,
        burst_amp=2.5,
        burst_sd=0.8,
        alpha_amp=2.5,
    ),
    "impossible": _Level(
        mu_amp=3.0,
        mu_erd=0.0,
        beta_amp=0.8,
        beta_erd=0.0,
        erd_sd=0.0,
        lapse=0.0,
        burst_amp=2.5,
        burst_sd=0.8,
        alpha_amp=2.5,
    ),
}


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise EEGDataError(f"{name}: expected an integer from {low} to {high}, got {value!r}")
    return value


def _spectral_noise(rng: np.random.Generator, n_rows: int, n: int, shape: FloatArray) -> FloatArray:
    """Gaussian noise with amplitude spectrum ``shape`` (one value per rfft bin), unit RMS."""
    spec = rng.standard_normal((n_rows, shape.size)) + 1j * rng.standard_normal(
        (n_rows, shape.size)
    )
    out: FloatArray = np.fft.irfft(spec * shape, n=n, axis=-1)
    out /= out.std(axis=-1, keepdims=True)
    return out


def _peak(freqs: FloatArray, center: float, width: float) -> FloatArray:
    out: FloatArray = np.exp(-0.5 * ((freqs - center) / width) ** 2)
    return out


def _band(freqs: FloatArray, low: float, high: float, edge: float) -> FloatArray:
    """A flat band with smooth (logistic) edges."""
    out: FloatArray = 1 / (1 + np.exp(-(freqs - low) / edge)) / (1 + np.exp((freqs - high) / edge))
    return out


def _slow_envelope(
    rng: np.random.Generator, n_rows: int, n: int, every: float, sd: float
) -> FloatArray:
    """Slowly varying positive amplitudes: log-normal knots every ``every`` s, interpolated."""
    knots_t = np.arange(0.0, n / SFREQ + every, every)
    t = np.arange(n) / SFREQ
    knots = np.exp(sd * rng.standard_normal((n_rows, knots_t.size)) - sd**2 / 2)
    return np.stack([np.interp(t, knots_t, row) for row in knots])


def _window(n: int, start: float, stop: float, ramp: float) -> FloatArray:
    """1 inside [start, stop] seconds, 0 outside, raised-cosine ramps of ``ramp`` s."""
    t = np.arange(n) / SFREQ
    up = np.clip((t - start) / ramp, 0, 1)
    down = np.clip((stop - t) / ramp, 0, 1)
    out: FloatArray = np.sin(0.5 * np.pi * np.minimum(up, down)) ** 2
    return out


@dataclass(frozen=True)
class _Plan:
    classes: npt.NDArray[np.str_]  # the cue of each trial, in order
    starts: FloatArray  # trial starts (768), in seconds
    n: int  # samples in the recording

    @property
    def duration(self) -> float:
        return self.n / SFREQ


def _erd_gain(
    rng: np.random.Generator, level: _Level, depth: float, contra: str, plan: _Plan
) -> FloatArray:
    """Amplitude gain of one hemisphere: below 1 while the opposite hand is imagined."""
    power = np.ones(plan.n)
    for onset, cls in zip(plan.starts, plan.classes, strict=True):
        if cls != contra or rng.random() < level.lapse:
            continue
        d = float(np.clip(rng.normal(depth, level.erd_sd), 0.0, 0.95))
        if d > 0:
            power -= d * _window(plan.n, onset + _CUE_AT + 0.3, onset + _IMAGERY_END, 0.4)
    out: FloatArray = np.sqrt(np.clip(power, 0.02, None))
    return out


def _plan(rng: np.random.Generator, trials_per_class: int) -> _Plan:
    classes = np.array(["769"] * trials_per_class + ["770"] * trials_per_class)
    rng.shuffle(classes)
    breaks = rng.uniform(0.5, 1.5, classes.size)
    starts = _LEAD + np.concatenate([[0.0], np.cumsum(_IMAGERY_END + breaks[:-1])])
    duration = starts[-1] + _IMAGERY_END + breaks[-1] + _LEAD
    return _Plan(classes=classes, starts=starts, n=round(duration * SFREQ))


def _sources(rng: np.random.Generator, level: _Level, plan: _Plan) -> FloatArray:
    """Activity at each electrode's site (before volume conduction), unit background."""
    n = plan.n
    idx = {name: i for i, name in enumerate(CHANNELS_BCI_IV_2A)}
    freqs = np.asarray(np.fft.rfftfreq(n, 1 / SFREQ), dtype=np.float64)
    # Subject-specific rhythms.
    f_mu = rng.uniform(10.0, 12.0)
    f_beta = rng.uniform(18.0, 24.0)
    f_alpha = rng.uniform(9.0, 11.0)

    # Background: pink noise at every site (1/f power, flattened below 1 Hz).
    pink = 1 / np.sqrt(np.maximum(freqs, 1.0))
    pink[0] = 0.0
    sources = _spectral_noise(rng, len(idx), n, pink)
    # Rhythm amplitudes are relative to the background's spectral density in 8-13 Hz.
    scale = float(np.sqrt(np.mean(pink[(freqs > 8) & (freqs < 13)] ** 2))) / float(
        np.sqrt(np.mean(pink[freqs > 0] ** 2))
    )

    # Mu and beta over C3 and C4, with ERD opposite the imagined hand.
    motor = [idx["C3"], idx["C4"]]
    contra = ["770", "769"]  # C3 (left hemisphere): right hand; C4: left hand
    mu = _spectral_noise(rng, 2, n, _peak(freqs, f_mu, 1.1))
    beta = _spectral_noise(rng, 2, n, _peak(freqs, f_beta, 2.0))
    mu_env = _slow_envelope(rng, 2, n, every=1.0, sd=0.2)
    beta_env = _slow_envelope(rng, 2, n, every=1.0, sd=0.25)
    for k in range(2):
        mu_gain = _erd_gain(rng, level, level.mu_erd, contra[k], plan)
        sources[motor[k]] += level.mu_amp * scale * mu[k] * mu_env[k] * mu_gain
        beta_gain = _erd_gain(rng, level, level.beta_erd, contra[k], plan)
        sources[motor[k]] += level.beta_amp * scale * beta[k] * beta_env[k] * beta_gain

    # Non-discriminative high-beta bursts over both sensorimotor areas.
    bursts = _spectral_noise(rng, 2, n, _band(freqs, 16.0, 30.0, 0.7))
    burst_env = _slow_envelope(rng, 2, n, every=1.5, sd=level.burst_sd)
    for k in range(2):
        sources[motor[k]] += level.burst_amp * scale * bursts[k] * burst_env[k]

    # Parieto-occipital alpha, waxing and waning.
    alpha = _spectral_noise(rng, 1, n, _peak(freqs, f_alpha, 0.7))[0]
    alpha_env = _slow_envelope(rng, 1, n, every=2.0, sd=0.5)[0]
    for site, weight in (("POz", 1.0), ("Pz", 0.6)):
        sources[idx[site]] += weight * level.alpha_amp * scale * alpha * alpha_env
    return sources


def _blinks(rng: np.random.Generator, n: int) -> FloatArray:
    """Eye-blink waveform (peak about 1): about one blink every 4 s."""
    duration = n / SFREQ
    t = np.arange(n) / SFREQ
    blinks = np.zeros(n)
    for at in np.cumsum(rng.exponential(4.0, int(duration / 2))):
        if at >= duration:
            break
        lo, hi = int((at - 0.5) * SFREQ), int((at + 0.5) * SFREQ)
        seg = slice(max(lo, 0), min(hi, n))
        blinks[seg] += rng.uniform(0.6, 1.4) * np.exp(-0.5 * ((t[seg] - at) / 0.08) ** 2)
    return blinks


def _subject_raw(
    rng: np.random.Generator,
    level: _Level,
    trials_per_class: int,
    positions: FloatArray,
    fpz: FloatArray,
) -> mne.io.RawArray:
    plan = _plan(rng, trials_per_class)
    sources = _sources(rng, level, plan)

    # Volume conduction: every electrode sees the sources near it (Gaussian kernel, 3 cm).
    dist = np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1)
    mixing = np.exp(-0.5 * (dist / 0.03) ** 2)
    mixing /= mixing.sum(axis=1, keepdims=True)
    background_rms = float(np.sqrt((mixing**2).sum(axis=1)).mean())
    data = (10 * _UV / background_rms) * (mixing @ sources)

    # Eye blinks, strongest at the front (Fpz), decaying with distance.
    blink_gain = 80 * _UV * np.exp(-np.linalg.norm(positions - fpz, axis=1) / 0.04)
    data += blink_gain[:, None] * _blinks(rng, plan.n)[None, :]

    # Line noise and amplifier noise.
    t = np.arange(plan.n) / SFREQ
    data += 1.0 * _UV * np.sin(2 * np.pi * 50.0 * t + rng.uniform(0, 2 * np.pi))[None, :]
    data += 0.5 * _UV * rng.standard_normal(data.shape)

    info = mne.create_info(list(CHANNELS_BCI_IV_2A), SFREQ, ch_types="eeg", verbose="error")
    info.set_montage(MONTAGE, verbose="error")
    for ch in info["chs"]:
        ch["cal"] = 1e-7  # stored as 16-bit integers of 0.1 uV, like an amplifier's output
        ch["range"] = 1.0
    raw = mne.io.RawArray(data, info, verbose="error")
    n_trials = plan.classes.size
    onsets = np.concatenate([[0.0], plan.starts, plan.starts + _CUE_AT])
    descriptions = ["32766", *["768"] * n_trials, *plan.classes]  # new run, trial start, cue
    durations = np.concatenate([[0.0], np.zeros(n_trials), np.full(n_trials, _CUE_DURATION)])
    order = np.argsort(onsets, kind="stable")
    raw.set_annotations(
        mne.Annotations(onsets[order], durations[order], [descriptions[i] for i in order])
    )
    return raw


def write_synthetic_dataset(
    out: Path | str,
    *,
    subjects: int = 1,
    difficulty: str = "medium",
    seed: int = 0,
    trials_per_class: int = TRIALS_PER_CLASS,
) -> list[Path]:
    """Write ``subjects`` recordings ``<out>/S01_raw.fif``, ... and return their paths.

    Readable by ``load_epochs(out)`` with its defaults: 22 channels, 250 Hz, cues
    ``769`` (left) and ``770`` (right). Deterministic for a given ``seed``.
    """
    if difficulty not in DIFFICULTIES:
        raise EEGDataError(f"difficulty: expected one of {list(DIFFICULTIES)}, got {difficulty!r}")
    _check_int("subjects", subjects, 1, _MAX_SUBJECTS)
    _check_int("seed", seed, 0, 2**32 - 1)
    _check_int("trials_per_class", trials_per_class, 10, 500)
    level = _LEVELS[difficulty]
    montage = mne.channels.make_standard_montage(MONTAGE)
    ch_pos = montage.get_positions()["ch_pos"]
    positions = np.array([ch_pos[name] for name in CHANNELS_BCI_IV_2A], dtype=np.float64)
    fpz = np.asarray(ch_pos["Fpz"], dtype=np.float64)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for subject in range(1, subjects + 1):
        rng = np.random.default_rng([seed, subject, DIFFICULTIES.index(difficulty)])
        raw = _subject_raw(rng, level, trials_per_class, positions, fpz)
        path = folder / f"S{subject:02d}_raw.fif"
        raw.save(path, fmt="short", overwrite=True, verbose="error")
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- shifts

# What goes wrong with recordings after a model is trained, applied to epochs
# (n, channels, samples): what drift monitoring must notice (`trainchain data
# drift-epochs`, tests/test_drift.py).
SHIFTS = ("gain", "line-noise", "swap")


def _channel_index(name: str) -> int:
    names = {c.upper(): i for i, c in enumerate(CHANNELS_BCI_IV_2A)}
    if name.upper() not in names:
        raise EEGDataError(
            f"channel {name!r}: expected one of the BCI IV 2a channels {list(CHANNELS_BCI_IV_2A)}"
        )
    return names[name.upper()]


def shift_epochs(
    epochs: npt.ArrayLike,
    shift: str,
    *,
    channel: str = "C3",
    factor: float = 1.5,
    swap: tuple[str, str] = ("Fz", "C3"),
    line_hz: float = 50.0,
    sfreq: float = SFREQ,
    seed: int = 0,
) -> FloatArray:
    """A copy of 22-channel ``epochs`` with one shift: ``gain`` (``channel`` amplified by
    ``factor``), ``line-noise`` (a ``line_hz`` sine on every channel, of each channel's own
    RMS, random phase per epoch: a lost ground) or ``swap`` (two electrodes' leads swapped).
    """
    x = np.array(epochs, dtype=np.float64)
    if x.ndim != 3 or x.shape[1] != len(CHANNELS_BCI_IV_2A):
        raise EEGDataError(
            f"epochs to shift: expected (n, {len(CHANNELS_BCI_IV_2A)}, samples), got {x.shape}"
        )
    if shift == "gain":
        if not (math.isfinite(factor) and factor > 0):
            raise EEGDataError(f"gain factor: expected a number > 0, got {factor!r}")
        x[:, _channel_index(channel)] *= factor
    elif shift == "line-noise":
        t = np.arange(x.shape[-1]) / sfreq
        phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, size=(len(x), 1, 1))
        rms = x.std(axis=-1, keepdims=True)
        x += np.sqrt(2) * rms * np.sin(2 * np.pi * line_hz * t + phase)
    elif shift == "swap":
        a, b = (_channel_index(c) for c in swap)
        if a == b:
            raise EEGDataError(f"swap: expected two different channels, got {swap}")
        x[:, [a, b]] = x[:, [b, a]]
    else:
        raise EEGDataError(f"shift {shift!r}: expected one of {list(SHIFTS)}")
    return x
