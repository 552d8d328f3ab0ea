"""Drift statistics (trainchain.core.drift) and the families' summaries: the reference, the
bounded window, the tests and their error rates, on synthetic EEG from
trainchain.families.eeg_synth and synthetic images (no model server, no mocks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trainchain.core import drift
from trainchain.core.config import Monitoring, parse_config
from trainchain.core.errors import ConfigError
from trainchain.families import cnn, eeg
from trainchain.families.drift import read_reference, write_reference
from trainchain.families.eeg_synth import shift_epochs, write_synthetic_dataset


def settings(**kw: Any) -> Monitoring:
    return Monitoring.model_validate({"window": 500, "min_window": 20, **kw})


@pytest.fixture(scope="module")
def subjects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two synthetic subjects of 288 epochs (easy), 22 x 750 each."""
    root = tmp_path_factory.mktemp("drift-eeg")
    write_synthetic_dataset(root, subjects=2, difficulty="easy", seed=0, trials_per_class=144)
    x1, y1, _ = eeg.load_epochs(root, subjects="S01")
    x2, y2, _ = eeg.load_epochs(root, subjects="S02")
    return {"x1": x1, "y1": y1, "x2": x2, "y2": y2}


@pytest.fixture(scope="module")
def trained(subjects: dict[str, Any]) -> dict[str, Any]:
    """A pipeline fitted on subject 1's first 200 epochs, its reference, the other 88."""
    x, y = subjects["x1"], subjects["y1"]
    order = np.random.default_rng(0).permutation(len(x))
    dev, rest = order[:200], order[200:]
    pipe = eeg.build_pipeline({}, 250.0).fit(x[dev], y[dev])
    return {"pipe": pipe, "reference": eeg.drift_reference(pipe, x[dev]), "rest": x[rest]}


def window_of(pipe: Any, x: Any, size: int = 200) -> drift.Window:
    window = drift.Window(size)
    window.add(eeg.summarise(x, pipe), [str(p) for p in pipe.predict(x)])
    return window


# --------------------------------------------------------------------------- error rates


@pytest.mark.parametrize("correction", ["holm", "bh"])
def test_false_alarms_on_same_distribution_windows_stay_near_alpha(correction: str) -> None:
    """400 windows drawn from the reference's own distribution (8 correlated features and
    two balanced classes, fixed seed): the share of windows that raise an alarm is at
    most alpha (0.05) plus two binomial standard errors, with Holm and with BH."""
    rng = np.random.default_rng(1234)
    cov = 0.6 * np.ones((8, 8)) + 0.4 * np.eye(8)
    config = settings(alpha=0.05, correction=correction)
    alarms = 0
    runs = 400
    for _ in range(runs):
        ref_rows = rng.multivariate_normal(np.zeros(8), cov, size=300)
        ref_classes = rng.choice(["a", "b"], size=300)
        reference = drift.Reference.build("test", {"g": ref_rows}, predictions=list(ref_classes))
        window = drift.Window(100)
        window.add(
            {"g": rng.multivariate_normal(np.zeros(8), cov, size=100)}, rng.choice(["a", "b"], 100)
        )
        alarms += drift.test(reference, window, config).detected
    assert alarms / runs <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / runs)


def test_eeg_splits_of_one_recording_raise_no_more_alarms_than_alpha(
    subjects: dict[str, Any],
) -> None:
    """Random halves of one subject's epochs (same distribution, 60 seeded splits) against
    each other with every EEG summary and the class shares: at most 5% of the windows
    raise an alarm at the default alpha (0.01)."""
    x, y = subjects["x1"], subjects["y1"]
    summary = eeg.summarise(x)
    config = settings(alpha=0.01)
    alarms = 0
    for seed in range(60):
        order = np.random.default_rng(seed).permutation(len(x))
        ref, win = order[:144], order[144:]
        reference = drift.Reference.build(
            "eeg", {g: v[ref] for g, v in summary.items()}, predictions=list(y[ref])
        )
        window = drift.Window(200)
        window.add({g: v[win] for g, v in summary.items()}, list(y[win]))
        alarms += drift.test(reference, window, config).detected
    assert alarms <= 3


# --------------------------------------------------------------------------- EEG shifts


def test_held_out_epochs_of_the_same_subject_are_not_drift(trained: dict[str, Any]) -> None:
    """The 88 epochs of subject 1 the pipeline never saw: no group drifts."""
    result = drift.test(
        trained["reference"], window_of(trained["pipe"], trained["rest"]), settings()
    )
    assert result.tested and not result.detected, result.to_dict()
    assert {g.group for g in result.groups} == {"mu", "beta", "log_var", "csp", "classes"}


@pytest.mark.parametrize(
    ("shift", "options", "group", "feature"),
    [
        ("gain", {"channel": "C3", "factor": 1.5}, "log_var", "C3"),
        ("line-noise", {}, "log_var", None),
        ("swap", {"swap": ("Fz", "C3")}, "mu", "Fz"),
    ],
)
def test_each_eeg_shift_is_detected_within_200_epochs(
    trained: dict[str, Any], shift: str, options: dict[str, Any], group: str, feature: str | None
) -> None:
    """Gain x1.5 on C3, 50 Hz line noise, Fz and C3 swapped, on 88 unseen epochs (under 200):
    drift detected, in the group that should move, naming the channel and the direction."""
    shifted = shift_epochs(trained["rest"], shift, **options)
    result = drift.test(trained["reference"], window_of(trained["pipe"], shifted), settings())
    assert result.detected
    moved = next(g for g in result.groups if g.group == group)
    assert moved.detected and moved.p_value is not None and moved.p_value <= 0.01
    if feature is not None:
        top = {m.feature: m for m in moved.moved}
        assert feature in top
    if shift == "gain":
        c3 = next(m for m in moved.moved if m.feature == "C3")
        assert c3.direction == "up" and c3.shift > 1  # more than one reference SD


def test_another_subjects_recordings_are_detected_within_200_epochs(
    subjects: dict[str, Any], trained: dict[str, Any]
) -> None:
    """200 epochs of subject 2 against subject 1's reference: drift detected."""
    result = drift.test(
        trained["reference"], window_of(trained["pipe"], subjects["x2"][:200]), settings()
    )
    assert result.detected, result.to_dict()


def test_eeg_summary_shapes_and_the_one_millisecond_part_needs_no_model(
    subjects: dict[str, Any], trained: dict[str, Any]
) -> None:
    """Without a model: mu, beta and log_var per channel; with the pipeline also its 4 CSP
    features, the very values the pipeline's CSP step computes."""
    x = subjects["x1"][:5]
    cheap = eeg.summarise(x)
    assert {g: v.shape for g, v in cheap.items()} == {g: (5, 22) for g in ("mu", "beta", "log_var")}
    full = eeg.summarise(x, trained["pipe"])
    np.testing.assert_allclose(full["csp"], trained["pipe"][:2].transform(x))
    with pytest.raises(eeg.EEGDataError, match=r"expected an array \(n, channels, samples\)"):
        eeg.summarise(x[0])


# --------------------------------------------------------------------------- images


def _images(rng: np.random.Generator, n: int) -> Any:
    """Smooth random RGB images 32 x 32 (blobs on a background), uint8."""
    base = rng.uniform(60, 160, size=(n, 1, 1, 3))
    noise = rng.normal(0, 40, size=(n, 8, 8, 3))
    big = np.repeat(np.repeat(noise, 4, axis=1), 4, axis=2)
    return np.clip(base + big, 0, 255).astype(np.uint8)


def _blur(x: Any) -> Any:
    """A 3 x 3 box blur."""
    f = x.astype(np.float64)
    padded = np.pad(f, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    out = sum(padded[:, i : i + 32, j : j + 32] for i in range(3) for j in range(3)) / 9
    return np.clip(out, 0, 255).astype(np.uint8)


def test_image_brightness_and_blur_are_detected_and_same_images_are_not() -> None:
    """Images: brightness +30% moves brightness (up); a blur moves sharpness (down); fresh
    images of the same kind do not drift."""
    rng = np.random.default_rng(7)
    reference = drift.Reference.build(
        "cnn",
        cnn.summarise(_images(rng, 400)),
        names={"image": list(cnn.IMAGE_FEATURES), "colour": ["red", "green", "blue"]},
    )
    fresh = _images(rng, 200)
    for x, expect in (
        (fresh, None),
        (np.clip(fresh.astype(float) * 1.3, 0, 255).astype(np.uint8), ("brightness", "up")),
        (_blur(fresh), ("sharpness", "down")),
    ):
        window = drift.Window(200)
        window.add(cnn.summarise(x))
        result = drift.test(reference, window, settings())
        if expect is None:
            assert not result.detected, result.to_dict()
            continue
        image = next(g for g in result.groups if g.group == "image")
        moved = {m.feature: m.direction for m in image.moved}
        assert moved.get(expect[0]) == expect[1], result.to_dict()


def test_image_confidence_comes_from_the_model_probabilities() -> None:
    """Given the output probabilities, the summary holds each image's largest one."""
    x = _images(np.random.default_rng(0), 3)
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.5, 0.5]])
    summary = cnn.summarise(x, probabilities=probabilities)
    np.testing.assert_allclose(summary["confidence"][:, 0], [0.9, 0.6, 0.5])
    with pytest.raises(cnn.ImageDataError, match="at least 2 x 2"):
        cnn.summarise(np.zeros((1, 1, 5, 3)))


# --------------------------------------------------------------------------- pieces


def test_reference_round_trips_through_json_bounded_and_versioned(tmp_path: Path) -> None:
    """3000 rows keep 2000 (seeded: the same rows twice), the JSON file reads back equal,
    and a reference of another format is refused with what to do."""
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(3000, 3))
    ref = drift.Reference.build(
        "eeg", {"g": rows}, predictions=["a"] * 3000, input_shape=(3,), names={"g": ["x", "y", "z"]}
    )
    again = drift.Reference.build("eeg", {"g": rows}, predictions=["a"] * 3000)
    assert ref.groups["g"].values.shape == (drift.MAX_ROWS, 3) and ref.n_rows == 3000
    np.testing.assert_array_equal(ref.groups["g"].values, again.groups["g"].values)
    assert ref.classes == {"a": drift.MAX_ROWS}
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    path = write_reference(ref, model_dir)
    back = read_reference(model_dir)
    np.testing.assert_array_equal(back.groups["g"].values, ref.groups["g"].values)
    assert back.groups["g"].features == ("x", "y", "z") and back.input_shape == (3,)
    data = json.loads(path.read_text())
    data["format"] = 99
    with pytest.raises(drift.DriftError, match=r"(?s)format 99.*retrain"):
        drift.Reference.from_dict(data)
    with pytest.raises(drift.DriftError, match="not a valid drift reference"):
        drift.Reference.from_dict({"format": 1, "groups": {"g": {"features": ["x"]}}})


def test_window_keeps_the_latest_rows_and_round_trips() -> None:
    """A window of 5 fed 3 + 4 rows keeps the last 5, with their predictions; its JSON form
    reads back the same; a summary of other groups is refused."""
    window = drift.Window(5)
    window.add({"g": np.arange(3.0)[:, None]}, ["a", "a", "a"])
    window.add({"g": np.arange(3.0, 7.0)[:, None]}, ["b", "b", "b", "b"])
    assert len(window) == 5
    assert window.values("g")[:, 0].tolist() == [2.0, 3.0, 4.0, 5.0, 6.0]
    assert window.predictions == ("a", "b", "b", "b", "b")
    back = drift.Window.from_dict(json.loads(json.dumps(window.to_dict())))
    assert back.values("g").tolist() == window.values("g").tolist()
    assert back.predictions == window.predictions
    with pytest.raises(drift.DriftError, match="differ from the window's"):
        window.add({"h": np.zeros((1, 1))})
    with pytest.raises(drift.DriftError, match="non-finite"):
        window.add({"g": np.array([[np.nan]])})
    with pytest.raises(drift.DriftError, match="window size 0"):
        drift.Window(0)


def test_below_the_minimum_window_nothing_is_tested() -> None:
    """Fewer rows than min_window: every group says it is collecting; no alarm."""
    reference = drift.Reference.build("t", {"g": np.random.default_rng(0).normal(size=(50, 2))})
    window = drift.Window(100)
    window.add({"g": np.full((5, 2), 100.0)})
    result = drift.test(reference, window, settings(min_window=20))
    assert not result.tested and not result.detected
    assert "collecting: 5 of the 20" in result.groups[0].note


def test_a_window_of_other_features_is_a_clear_error() -> None:
    """A window whose group has another number of features than the reference's."""
    reference = drift.Reference.build("t", {"g": np.zeros((10, 2)) + np.arange(10)[:, None]})
    window = drift.Window(100)
    window.add({"g": np.zeros((30, 3))})
    with pytest.raises(drift.DriftError, match="reference has 2 features, the window 3"):
        drift.test(reference, window, settings())


@pytest.mark.parametrize(
    ("n_ref", "n_win", "decimals"),
    [(2000, 200, 8), (200, 200, 3), (2000, 50, 2), (60, 50, 1), (12, 8, 0)],
)
def test_ks_columns_is_scipys_test_wherever_it_can_decide(
    n_ref: int, n_win: int, decimals: int
) -> None:
    """The statistics are scipy's (ties included); every p-value at or below 2 alpha is
    scipy's asymptotic one to the bit, so every decision at alpha is scipy's, and the
    approximated ones stay within 0.03 of scipy's."""
    from scipy.stats import ks_2samp

    alpha = 0.05
    rng = np.random.default_rng(n_ref + n_win)
    ref = np.round(rng.normal(size=(n_ref, 40)), decimals)
    win = np.round(rng.normal(size=(n_win, 40)), decimals)
    win[:, :10] += np.linspace(0.1, 2.0, 10)  # some columns moved, some not
    expected = ks_2samp(ref, win, axis=0, method="asymp")
    stats, p = drift.ks_columns(np.sort(ref, axis=0), win, alpha)
    assert np.array_equal(stats, expected.statistic)
    near = expected.pvalue <= 2 * alpha
    assert near.any() and (~near).any()
    assert np.array_equal(p[near], expected.pvalue[near])
    assert np.array_equal(p <= alpha, expected.pvalue <= alpha)
    assert np.max(np.abs(p - expected.pvalue)) < 0.03


def test_holm_and_bh_adjust_as_their_definitions_say() -> None:
    """Holm: step-down m, m-1, ... with running max; BH: step-up m/rank with running min."""
    p = [0.01, 0.04, 0.03, 0.5]
    np.testing.assert_allclose(drift.adjust(p, "holm"), [0.04, 0.09, 0.09, 0.5])
    np.testing.assert_allclose(drift.adjust(p, "bh"), [0.04, 0.0533333, 0.0533333, 0.5], rtol=1e-5)
    with pytest.raises(drift.DriftError, match="expected 'holm' or 'bh'"):
        drift.adjust(p, "bonferroni")


def test_monitoring_section_has_defaults_and_checks_its_values() -> None:
    """monitoring: is optional (defaults: window 200, minimum 50, alpha 0.01, Holm, capture
    off); a minimum above the window and an alpha of 0.5 are refused naming the key."""
    base = {
        "name": "m",
        "goal": {"threshold": 0.8},
        "search_space": {"C": {"type": "float", "low": 0.1, "high": 1.0, "default": 0.5}},
    }
    m = parse_config(base).monitoring
    assert (m.window, m.min_window, m.alpha, m.correction, m.capture) == (
        200,
        50,
        0.01,
        "holm",
        False,
    )
    with pytest.raises(ConfigError, match="min_window 300 is larger than window 200"):
        parse_config({**base, "monitoring": {"min_window": 300}})
    with pytest.raises(ConfigError, match=r"monitoring\.alpha"):
        parse_config({**base, "monitoring": {"alpha": 0.5}})
