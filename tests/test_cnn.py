"""The image CNN family: detection of the examples, the folder loader's contract, epoch
checkpoints with resume and early stopping, and the whole chain on real images.

The real images are scikit-learn's bundled handwritten digits (8x8 grayscale, 1,797
of them, no download), written as PNG files one folder per class, and trained with the
emotion example's own train.py. Only the tests marked ``tensorflow`` import Keras.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, git_init, run_cli
from trainchain.families import cnn

EXAMPLES = REPO_ROOT / "examples"
CNN_EXAMPLES = ("cats-vs-dogs-cnn", "emotion-cnn")


def write_digits(root: Path, *, test_share: float = 0.25) -> Path:
    """scikit-learn's digits as PNGs: root/train/<digit>/*.png and root/test/<digit>/*.png."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)  # 0-16 -> 0-255
    labels = digits.target
    keep, held_out = cnn.stratified_split(labels, test_share, seed=0)
    for part, indices in (("train", keep), ("test", held_out)):
        for i in indices:
            folder = root / part / str(labels[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").save(folder / f"{i:04d}.png")
    return root


DIGITS_YAML = """\
name: digits-cnn
entrypoint: train.py
data:
  path: {data}
  options: {{train: train, test: test, validation_split: 0.2, seed: 0, image_size: 16}}
goal: {{metric: accuracy, threshold: {threshold}, direction: maximize}}
budget: {{max_trials: {max_trials}, timeout: 900, seed: 0}}
pruning: {{enabled: true, startup_trials: 1, warmup_steps: 2}}
early_stopping: {{enabled: true, patience: 3, min_delta: 0.0}}
search_space:
  learning_rate: {{type: float, low: 0.001, high: 0.003, log: true, default: 0.002}}
  filters: {{type: categorical, choices: [8, 16], default: 16}}
  dropout: {{type: float, low: 0.0, high: 0.2, default: 0.1}}
  weight_decay: {{type: float, low: 0.0001, high: 0.001, log: true, default: 0.0005}}
  label_smoothing: {{type: categorical, choices: [0.0], default: 0.0}}
  augmentation: {{type: categorical, choices: [0.0], default: 0.0}}
  batch_size: {{type: categorical, choices: [32], default: 32}}
  epochs: {{type: int, low: 4, high: {epochs}, default: {epochs}}}
train: {{timeout: 600, max_attempts: 2, memory: 3g, cpus: 2}}
"""


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits"))


DigitsRepo = Callable[..., Path]


def make_digits_repo(
    root: Path, data: Path, *, threshold: float = 0.9, max_trials: int = 3, epochs: int = 8
) -> Path:
    """A model repository holding the emotion example's train.py, set up for the digits."""
    root.mkdir(parents=True)
    shutil.copy(EXAMPLES / "emotion-cnn" / "train.py", root / "train.py")
    (root / "trainchain.yaml").write_text(
        DIGITS_YAML.format(data=data, threshold=threshold, max_trials=max_trials, epochs=epochs),
        encoding="utf-8",
    )
    git_init(root)
    return root


@pytest.fixture
def digits_repo(tmp_path: Path, digits: Path) -> DigitsRepo:
    def make(**options: Any) -> Path:
        return make_digits_repo(tmp_path / "digits-cnn", digits, **options)

    return make


# --- without TensorFlow ----------------------------------------------------------------


@pytest.mark.parametrize("example", CNN_EXAMPLES)
def test_detect_picks_the_tensorflow_image_from_the_code(example: str) -> None:
    """Both CNN examples are detected as cnn, by Conv2D and keras in train.py."""
    done = run_cli("detect", str(EXAMPLES / example), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["family"] == "cnn"
    assert result["image"] == "trainchain/train-tensorflow:0.1.0"
    symbols = {e["symbol"] for e in result["evidence"] if e["family"] == "cnn"}
    assert {"Conv2D", "keras"} <= symbols
    assert all(e["file"] == "train.py" for e in result["evidence"])


@pytest.mark.parametrize("example", CNN_EXAMPLES)
def test_example_config_is_valid_and_its_defaults_are_in_its_space(example: str) -> None:
    """Each CNN example's trainchain.yaml loads, with successive halving, early stopping and
    the held-out confirmation on."""
    from trainchain.core.config import load_config

    model = load_config(EXAMPLES / example).model
    assert model.goal.val_metric == "val_accuracy"
    assert model.pruning.enabled and model.early_stopping.enabled
    assert {"learning_rate", "filters", "dropout", "augmentation", "weight_decay"} <= set(
        model.search_space
    )
    assert {"batch_size", "epochs"} <= set(model.search_space)
    # the budget goes where it pays: halving on epochs, the goal confirmed on the held-out
    # folder (no second training), trials started within 20 minutes of a 30-minute chain
    assert model.pruning.rule == "halving" and model.confirmation.method == "heldout"
    assert model.budget.timeout <= 1200


@pytest.mark.parametrize(
    ("example", "folder", "held_out"),
    [("cats-vs-dogs-cnn", "cats-vs-dogs", "test"), ("emotion-cnn", "fer2013-4class", "validation")],
)
def test_example_data_defaults_under_the_home_and_its_absence_says_where_to_put_it(
    example: str, folder: str, held_out: str, tmp_path: Path
) -> None:
    """Each CNN example reads its images from TRAINCHAIN_HOME/data/<dataset> (not a folder
    outside the repository); without them the chain stops before training, naming the
    folder it looked in, where the class folders go and where to read how to get them."""
    home = tmp_path / "home"
    out = run_cli("tune", str(EXAMPLES / example), "--home", str(home), "--executor", "local")
    assert out.returncode == 2
    data = home / "data" / folder
    assert f"error: the data folder {data} does not exist" in out.stderr
    assert f"one folder per class under {data / 'train'}/ and, held out, {data / held_out}/" in (
        out.stderr
    )
    assert 'README\'s "Image CNNs" section' in out.stderr


def test_importing_trainchain_does_not_load_tensorflow() -> None:
    """The CLI, the chain and the CNN family module import without TensorFlow or Keras:
    only the code that trains or loads a Keras model does."""
    code = (
        "import sys, trainchain.cli.main, trainchain.chain.run, trainchain.chain.registry, "
        "trainchain.families.cnn\n"
        "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]"


def test_stratified_split_is_seeded_and_keeps_every_class() -> None:
    """The validation split takes the same share of each class, the same way each time."""
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    keep, held = cnn.stratified_split(labels, 0.2, seed=3)
    again_keep, again_held = cnn.stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(held, again_held) and np.array_equal(keep, again_keep)
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(100))
    assert np.bincount(labels[held]).tolist() == [10, 6, 4]
    with pytest.raises(cnn.ImageDataError, match="too few to split"):
        cnn.stratified_split(np.array([0, 0, 1]), 0.2, seed=0)


def test_the_validation_split_is_the_plans_and_its_size_bounds_the_score(
    digits: Path,
) -> None:
    """The split follows the plan's seed (a confirmation gets a fresh one), and the metrics
    carry its one score, its size and its digest: what the exact binomial bound needs."""
    from trainchain.core.verdict import lower_bound, read_estimate

    def images(seed: int) -> cnn.ImageData:
        return cnn.load_images(
            digits, image_size=8, color_mode="grayscale", validation_split=0.2, seed=seed
        )

    search, again, fresh = images(0), images(0), images(7919)
    metrics = search.validation_metrics(0.9)
    assert metrics["val_accuracy_folds"] == [0.9]
    assert metrics["val_fold_sizes"] == [len(search.y_val)]
    assert metrics["val_folds_id"] == again.validation_metrics(0.9)["val_folds_id"]
    assert metrics["val_folds_id"] != fresh.validation_metrics(0.9)["val_folds_id"]
    estimate, problem = read_estimate(metrics, "val_accuracy")
    assert problem is None and estimate is not None
    bound = lower_bound(estimate, folds_per_repeat=1, alpha=0.025)
    assert bound is not None and 0.85 < bound < 0.9


def _photo(width: int, height: int, seed: int) -> np.ndarray:
    """A photo-like RGB image: smooth gradients and waves plus sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    waves = [np.sin(xx / (5 + 3 * c) + yy / (9 + seed + c)) for c in range(3)]
    image = np.stack([128 + 90 * w for w in waves], axis=-1) + rng.normal(0, 12, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_photos(root: Path) -> dict[str, Path]:
    """train/ and test/ folders of two classes, each a mix of what users upload: a large
    JPEG (decoded at a reduced scale), a small one, an RGBA PNG, a grayscale PNG, a GIF."""
    from PIL import Image

    files: dict[str, Path] = {}
    for part in ("train", "test"):
        for c, name in enumerate(("cats", "dogs")):
            folder = root / part / name
            folder.mkdir(parents=True)
            seed = 10 * c + (part == "test")
            big = Image.fromarray(_photo(640, 480, seed))
            big.save(folder / "big.jpg", quality=90)
            Image.fromarray(_photo(45, 61, seed + 1)).save(folder / "small.jpeg", quality=75)
            rgba = Image.fromarray(_photo(50, 70, seed + 2)).convert("RGBA")
            rgba.save(folder / "alpha.png")
            Image.fromarray(_photo(33, 33, seed + 3)).convert("L").save(folder / "gray.png")
            Image.fromarray(_photo(40, 30, seed + 4)).convert("P").save(folder / "frame.gif")
            for f in folder.iterdir():
                files[f"{part}/{name}/{f.name}"] = f
    return files


@pytest.mark.parametrize("color_mode", ["rgb", "grayscale"])
def test_training_and_serving_read_a_photo_into_the_same_array(
    tmp_path: Path, color_mode: str
) -> None:
    """A JPEG, PNG or GIF gives the same uint8 array whether the training loader reads it
    (load_images), the drift check reads it (read_images) or /predict parses its bytes
    (serving's decode_image): one function decodes, converts and resizes for all three."""
    from trainchain.serving.inputs import decode_image

    files = write_photos(tmp_path)
    size = (24, 32)
    data = cnn.load_images(tmp_path, image_size=size, color_mode=color_mode, seed=0)
    prep = cnn.Preprocessing(size, color_mode, data.class_names)
    test_files, labels = cnn.image_files(tmp_path / "test", data.class_names)
    assert len(test_files) == 10 and data.y_test.tolist() == labels
    assert data.x_test.shape == (10, 24, 32, prep.channels) and data.x_test.dtype == np.uint8
    drift = cnn.read_images(test_files, prep)
    for row, path in enumerate(test_files):
        served = decode_image(path.read_bytes(), prep, max_pixels=1_000_000)
        assert served.shape == (1, *data.x_test.shape[1:]) and served.dtype == np.uint8
        assert np.array_equal(served[0], data.x_test[row]), path
        assert np.array_equal(drift[row], data.x_test[row]), path
    assert data.x_test.std() > 10  # real pictures, not a constant
    # the training part is read the same way: every training file's array is in it
    train_files, _ = cnn.image_files(tmp_path / "train", data.class_names)
    x_train_all = np.concatenate([data.x_train, data.x_val])
    for path in train_files:
        served = decode_image(path.read_bytes(), prep, max_pixels=1_000_000)[0]
        assert any(np.array_equal(served, x) for x in x_train_all), path
    assert len(files) == 20


def test_an_unreadable_training_image_is_named(tmp_path: Path) -> None:
    """A file with an image's name that Pillow cannot read stops the loader with its path."""
    write_photos(tmp_path)
    (tmp_path / "train" / "cats" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(cnn.ImageDataError, match=r"broken\.jpg: not an image file"):
        cnn.load_images(tmp_path, image_size=16)


def test_folder_without_classes_is_refused_with_the_layout_expected(tmp_path: Path) -> None:
    """A data folder that is not one sub-folder per class says what layout it needs."""
    with pytest.raises(cnn.ImageDataError, match="is not a folder"):
        cnn.class_folders(tmp_path / "missing")
    (tmp_path / "train" / "cats").mkdir(parents=True)
    (tmp_path / "train" / "cats" / "a.jpg").write_bytes(b"x")
    (tmp_path / "train" / "notes").mkdir()
    (tmp_path / "train" / "notes" / "readme.txt").write_text("no images here")
    with pytest.raises(cnn.ImageDataError, match="1 class folder"):
        cnn.class_folders(tmp_path / "train")


def test_preprocessing_refuses_an_unknown_colour_mode() -> None:
    """Preprocessing names the allowed colour modes."""
    with pytest.raises(ValueError, match="grayscale"):
        cnn.Preprocessing(image_size=(48, 48), color_mode="cmyk", class_names=("a", "b"))
    prep = cnn.Preprocessing(image_size=(48, 48), color_mode="grayscale", class_names=("a", "b"))
    assert prep.as_metadata()["channels"] == 1


# --- with TensorFlow ---------------------------------------------------------------------


def _tiny_model(prep: cnn.Preprocessing) -> Any:
    import keras
    from keras import layers

    inputs, x = cnn.input_layers(prep)
    x = layers.Conv2D(4, 3, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(len(prep.class_names), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.mark.tensorflow
def test_checkpoints_resume_after_the_last_finished_epoch_with_optimizer_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second process-like start resumes at epoch 2 with the optimizer's step count, and
    reports continue at step 3: nothing is redone."""
    report = tmp_path / "report.jsonl"
    monkeypatch.setenv("TRAINCHAIN_REPORT", str(report))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (40, 10, 10, 1), dtype=np.uint8)
    y = rng.integers(0, 2, 40)
    prep = cnn.Preprocessing(image_size=(8, 8), color_mode="grayscale", class_names=("a", "b"))
    folder = tmp_path / "ckpt"

    first = cnn.Checkpoints(folder, early_stopping=None, log=lambda _: None)
    model, start = first.restore(lambda: _tiny_model(prep))
    assert start == 0
    model.fit(x, y, validation_data=(x, y), epochs=2, batch_size=10, verbose=0,
              callbacks=[first.callback()])  # fmt: skip
    steps_after_two = int(model.optimizer.iterations.numpy())
    assert sorted(p.name for p in folder.glob("epoch-*.keras")) == ["epoch-0002.keras"]

    second = cnn.Checkpoints(folder, early_stopping=None, log=lambda _: None)
    resumed, start = second.restore(lambda: pytest.fail("must not build a new model"))
    assert start == 2
    assert int(resumed.optimizer.iterations.numpy()) == steps_after_two == 8
    resumed.fit(x, y, validation_data=(x, y), epochs=4, initial_epoch=start, batch_size=10,
                verbose=0, callbacks=[second.callback()])  # fmt: skip
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all("val_accuracy" in r for r in rows)


@pytest.mark.tensorflow
def test_warmup_cosine_rises_to_the_peak_then_decays_to_its_final_fraction() -> None:
    """The schedule starts at a tenth of the rate, peaks at the end of the warm-up and
    ends at final_fraction of the peak after epochs x steps_per_epoch steps."""
    schedule = cnn.warmup_cosine(0.01, epochs=10, steps_per_epoch=5, warmup_epochs=2)
    at = [float(schedule(step)) for step in (0, 10, 30, 50)]
    assert at[0] == pytest.approx(0.001)
    assert at[1] == pytest.approx(0.01)
    assert at[1] > at[2] > at[3]
    assert at[3] == pytest.approx(0.0001)
    with pytest.raises(ValueError, match="got 0 and 5"):
        cnn.warmup_cosine(0.01, epochs=0, steps_per_epoch=5)


@pytest.mark.tensorflow
def test_residual_blocks_and_the_training_dataset_train_a_model_on_one_hot_labels() -> None:
    """residual_block keeps or halves the size as its stride says; training_dataset gives
    one-hot label batches that a label-smoothed model trains on."""
    import keras
    from keras import layers

    inputs = keras.Input((8, 8, 1))
    same = cnn.residual_block(inputs, 4)
    halved = cnn.residual_block(same, 8, stride=2)
    assert tuple(same.shape[1:]) == (8, 8, 4) and tuple(halved.shape[1:]) == (4, 4, 8)
    outputs = layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling2D()(halved))
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.AdamW(cnn.warmup_cosine(0.01, epochs=2, steps_per_epoch=3)),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
        metrics=["accuracy"],
    )
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (24, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, 3, 24)
    ds = cnn.training_dataset(x, y, batch_size=10, num_classes=3, seed=0)
    images, labels = next(iter(ds))
    assert images.shape == (10, 8, 8, 1) and labels.shape == (10, 3)
    assert np.allclose(labels.numpy().sum(axis=1), 1.0)
    history = model.fit(ds, epochs=2, shuffle=False, verbose=0)  # the dataset shuffles
    assert len(history.history["loss"]) == 2


@pytest.mark.tensorflow
def test_early_stopping_ends_training_and_its_state_survives_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no possible improvement (min_delta 1.0) and patience 2, training stops after
    epoch 3; a restarted attempt sees it finished and trains no more."""
    policy = {"monitor": "val_accuracy", "mode": "max", "patience": 2, "min_delta": 1.0}
    monkeypatch.setenv("TRAINCHAIN_EARLY_STOPPING", json.dumps(policy))
    monkeypatch.setenv("TRAINCHAIN_REPORT", str(tmp_path / "report.jsonl"))
    rng = np.random.default_rng(1)
    x = rng.integers(0, 255, (30, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, 2, 30)
    prep = cnn.Preprocessing(image_size=(8, 8), color_mode="grayscale", class_names=("a", "b"))
    messages: list[str] = []
    first = cnn.Checkpoints(tmp_path / "ckpt", log=messages.append)
    model, _ = first.restore(lambda: _tiny_model(prep))
    history = model.fit(x, y, validation_data=(x, y), epochs=20, batch_size=10, verbose=0,
                        callbacks=[first.callback()])  # fmt: skip
    assert len(history.history["loss"]) == 3
    assert first.finished_early and "early stopping after epoch 3" in messages[-1]
    assert first.restore_best(model) == 1  # the first epoch set the best value

    again = cnn.Checkpoints(tmp_path / "ckpt", log=messages.append)
    _, start = again.restore(lambda: pytest.fail("must resume"))
    assert (start, again.finished_early) == (3, True)


@pytest.mark.tensorflow
@pytest.mark.slow
def test_chain_trains_a_real_cnn_on_digits_and_registers_it_with_its_preprocessing(
    digits_repo: DigitsRepo, home: Path
) -> None:
    """The chain runs the emotion example's script on the digits (local executor): it
    reaches val_accuracy 0.9, the champion scores >= 0.9 on the held-out folder when
    loaded from the registry, and its MLmodel records the preprocessing."""
    from mlflow.models import Model

    from trainchain.adapters.tracking import CHAMPION, Tracker
    from trainchain.chain.registry import download_heldout
    from trainchain.chain.run import run_chain
    from trainchain.core.settings import load_settings

    settings = load_settings({"TRAINCHAIN_HOME": str(home)})
    outcome = run_chain(str(digits_repo()), settings, executor="local", quiet=True)
    report = outcome.report
    assert outcome.exit_code == 0, (report.status, report.error, report.log_tail)
    assert report.best_value is not None and report.best_value >= 0.9
    assert report.best_test_value is not None and report.best_test_value >= 0.9
    assert report.became_champion and report.registry_version == "1"
    assert not list((home / "checkpoints").rglob("*.keras")), "finished trials keep none"

    tracker = Tracker(settings.tracking_uri, settings.artifacts)
    assert tracker.alias_version("digits-cnn", CHAMPION) == "1"
    local = Path(tracker.client.download_artifacts(report.best_run_id, "", str(home / "dl")))
    meta = Model.load(str(local / "model")).metadata["trainchain"]
    assert meta["image_size"] == [16, 16] and meta["color_mode"] == "grayscale"
    assert meta["class_names"] == [str(d) for d in range(10)] and meta["channels"] == 1
    prep = cnn.read_preprocessing(local / "model")  # what serving will read
    assert (prep.image_size, prep.channels, prep.scale) == ((16, 16), 1, 1.0 / 255.0)
    assert prep.class_names == tuple(str(d) for d in range(10))
    with np.load(download_heldout(tracker, report.best_run_id, home / "held")) as held:
        x, y = held["X"], held["y"]
    assert x.dtype == np.uint8 and x.shape[1:] == (16, 16, 1) and len(y) == 450
    champion_run = tracker.version_run_id("digits-cnn", "1")
    assert champion_run == report.best_run_id
    champion = tracker.load_model(champion_run, home / "load")
    predicted = np.asarray(champion.predict(x.astype(np.float32))).argmax(axis=1)
    assert float(np.mean(predicted == y)) >= 0.9
