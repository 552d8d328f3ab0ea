"""The image CNN family (Keras 3 on TensorFlow): image folders, epoch checkpoints, the model.

Training scripts stay plain Keras; this module gives them what the training contract
asks for and Keras does not do by itself:

- :func:`image_pixels`: the one way an image becomes the model's input (decoded,
  converted, resized with Pillow), for training, the drift check and serving alike;
- :func:`load_images`: a folder-per-class dataset as ``uint8`` arrays, with a seeded
  validation split of the training folder and a separate held-out test folder;
- :class:`Checkpoints` and :meth:`Checkpoints.callback`: after every epoch an atomic
  checkpoint (model with optimizer state, the epoch, the early-stopping state) and a
  report line; a restarted attempt resumes after the last finished epoch, and early
  stopping (``TRAINCHAIN_EARLY_STOPPING``) survives the restart;
- :func:`save_model`: the model in MLflow's ``keras`` flavor, with the preprocessing
  serving must apply (image size, colour mode, scaling, class names) in its metadata.

Keras and TensorFlow are imported inside the functions: importing this module costs
nothing, and only the TensorFlow image (or a host with TensorFlow) runs them.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainchain.contract import task
from trainchain.core.config import Family
from trainchain.families.base import FamilyDataError, FamilySpec

log = logging.getLogger(__name__)

COLOR_MODES = {"rgb": 3, "grayscale": 1}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
STATE_FILE = "state.json"
BEST_WEIGHTS = "best.weights.h5"
METADATA_KEY = "trainchain"


# What the family's models are: Keras models on TensorFlow, preprocessing in their metadata.


class ImageDataError(FamilyDataError):
    """The image folders are not laid out as the family expects."""


# Keras's interpolation names (what Preprocessing records) to Pillow's resampling filters.
RESAMPLE = {
    "nearest": "NEAREST",
    "bilinear": "BILINEAR",
    "bicubic": "BICUBIC",
    "lanczos3": "LANCZOS",
    "lanczos5": "LANCZOS",
    "area": "BOX",
    "gaussian": "BICUBIC",
    "mitchellcubic": "BICUBIC",
}
# A JPEG is decoded at a reduced scale (1/2, 1/4, 1/8: libjpeg's DCT scaling) only while
# it stays at least this many times the target size; Pillow's thumbnail() uses 2 too.
JPEG_DRAFT_GAP = 2


@dataclass(frozen=True)
class Preprocessing:
    """What turns an image file into the model's input, recorded with the model.

    An image file becomes the model's input in one way, :func:`image_pixels`: decoded,
    converted to ``color_mode`` and resized to ``image_size`` with ``interpolation``
    (Pillow's filter, antialiased), ``uint8`` 0-255. Training (:func:`load_images`), the
    drift check (:func:`read_images`) and serving (``/predict``) all call it, so one
    photo gives one array everywhere. The model itself also resizes (the same filter,
    antialiased: :func:`input_layers`; a no-op at ``image_size``) and scales by
    ``scale``, so it takes images of any size with ``channels`` channels.
    """

    image_size: tuple[int, int]
    color_mode: str
    class_names: tuple[str, ...]
    scale: float = 1.0 / 255.0
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.color_mode not in COLOR_MODES:
            raise ValueError(
                f"color_mode must be one of {sorted(COLOR_MODES)}, got {self.color_mode!r}"
            )
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size must be (height, width) >= 1, got {self.image_size}")
        if self.interpolation not in RESAMPLE:
            raise ValueError(
                f"interpolation must be one of {sorted(RESAMPLE)}, got {self.interpolation!r}"
            )

    @property
    def channels(self) -> int:
        return COLOR_MODES[self.color_mode]

    def as_metadata(self) -> dict[str, Any]:
        out = asdict(self)
        out["image_size"] = list(self.image_size)
        out["class_names"] = list(self.class_names)
        out["channels"] = self.channels
        out["input"] = "image: uint8 0-255, shape (n, height, width, channels), any size"
        out["output"] = "class probabilities in the order of class_names"
        return out


@dataclass(frozen=True)
class ImageData:
    """A folder-per-class dataset as arrays: train and validation from the training
    folder (a seeded split, the same in every trial), test from the held-out folder."""

    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any
    x_test: Any
    y_test: Any
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    color_mode: str
    test_image_size: tuple[int, int]
    sources: dict[str, str] = field(default_factory=dict)
    val_index: Any = None  # the training folder's images that form the validation part

    def validation_metrics(self, val_accuracy: float) -> dict[str, Any]:
        """The contract's keys for this one validation split: ``val_accuracy``, its one
        "fold" with its size (trainchain bounds it with the exact binomial interval) and
        the digest of the split (the same in every trial of a study; a confirmation run
        gets a fresh split from its plan's seed)."""
        from trainchain.contract import task

        return {
            "val_accuracy": float(val_accuracy),
            f"val_accuracy{task.FOLDS_SUFFIX}": [float(val_accuracy)],
            "val_fold_sizes": [len(self.y_val)],
            task.FOLDS_ID_KEY: task.folds_id([[] if self.val_index is None else self.val_index]),
        }

    def describe(self) -> str:
        return (
            f"{len(self.y_train)} training, {len(self.y_val)} validation and "
            f"{len(self.y_test)} test images; classes {', '.join(self.class_names)}; "
            f"{self.image_size[0]}x{self.image_size[1]} {self.color_mode}"
        )


def _size(name: str, value: Any) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, Sequence)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        raise ImageDataError(f"{name} must be a size in pixels (48 or [48, 48]), got {value!r}")
    return int(value[0]), int(value[1])


def class_folders(folder: Path) -> list[str]:
    """The class names: the sub-folders of ``folder`` that hold at least one image."""
    if not folder.is_dir():
        raise ImageDataError(
            f"{folder} is not a folder: expected one sub-folder of images per class "
            "(train/cats/*.jpg, train/dogs/*.jpg, ...)"
        )
    names = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_dir()
        and not p.name.startswith(".")
        and any(f.suffix.lower() in IMAGE_EXTENSIONS for f in p.iterdir())
    )
    if len(names) < 2:
        raise ImageDataError(
            f"{folder} has {len(names)} class folder(s) with images: expected at least two "
            f"sub-folders holding {', '.join(IMAGE_EXTENSIONS)} files, one per class"
        )
    return names


def image_pixels(
    image: Any, image_size: tuple[int, int], color_mode: str, interpolation: str = "bilinear"
) -> Any:
    """The one way an image becomes the model's input: a Pillow image (opened, not yet
    loaded) as ``uint8`` ``(height, width, channels)``.

    Converted to ``color_mode`` and resized to ``image_size`` (height, width) with Pillow's
    filter for ``interpolation`` (antialiased when it shrinks). A JPEG much larger than
    the target is decoded at a reduced scale first (at least JPEG_DRAFT_GAP times the
    target), as Pillow's thumbnail() does. Training, the drift check and serving all call
    this, so the same file gives the same array in each.
    """
    import numpy as np
    from PIL import Image

    mode = "RGB" if color_mode == "rgb" else "L"
    height, width = image_size
    drafted = image.draft(mode, (width * JPEG_DRAFT_GAP, height * JPEG_DRAFT_GAP))
    box = drafted[1] if drafted is not None else None
    converted = image.convert(mode)
    if converted.size != (width, height) or box is not None:
        resample = getattr(Image.Resampling, RESAMPLE[interpolation])
        converted = converted.resize((width, height), resample, box=box)
    pixels = np.asarray(converted)
    return pixels[..., np.newaxis] if pixels.ndim == 2 else pixels


def read_image(
    path: Path, image_size: tuple[int, int], color_mode: str, interpolation: str = "bilinear"
) -> Any:
    """An image file as the model's input (:func:`image_pixels`), or an ImageDataError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return image_pixels(img, image_size, color_mode, interpolation)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        raise ImageDataError(f"{path}: not an image file this family reads: {err}") from None


def image_files(folder: Path, class_names: Sequence[str]) -> tuple[list[Path], list[int]]:
    """Every image under ``folder/<class>/`` (sub-folders too), in class order and by path
    within a class, with its class index."""
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(class_names):
        found = sorted(
            p
            for p in (folder / name).rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)
            and p.is_file()
        )
        paths += found
        labels += [index] * len(found)
    return paths, labels


def _read_all(
    paths: Sequence[Path], image_size: tuple[int, int], color_mode: str, interpolation: str
) -> Any:
    """``read_image`` of every path into one ``uint8`` array, decoded on every core (Pillow
    lets go of the GIL while it decodes and resizes)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    height, width = image_size
    out = np.empty((len(paths), height, width, COLOR_MODES[color_mode]), dtype=np.uint8)

    def read(i: int) -> None:
        out[i] = read_image(paths[i], image_size, color_mode, interpolation)

    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        for _ in pool.map(read, range(len(paths))):
            pass
    return out


def _read_folder(
    folder: Path, class_names: Sequence[str], image_size: tuple[int, int], color_mode: str
) -> tuple[Any, Any]:
    import numpy as np

    paths, labels = image_files(folder, class_names)
    return _read_all(paths, image_size, color_mode, "bilinear"), np.asarray(labels, np.int64)


def stratified_split(labels: Any, share: float, seed: int) -> tuple[Any, Any]:
    """Indices of the kept and the split-off part: ``share`` of each class, seeded."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    kept, split_off = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n = round(len(idx) * share)
        if n < 1 or n >= len(idx):
            raise ImageDataError(
                f"class {label} has {len(idx)} images: too few to split off {share:.0%} "
                "for validation; add images or change validation_split"
            )
        split_off.append(idx[:n])
        kept.append(idx[n:])
    return rng.permutation(np.concatenate(kept)), np.sort(np.concatenate(split_off))


def load_images(
    root: Path,
    *,
    image_size: int | Sequence[int],
    color_mode: str = "rgb",
    train: str = "train",
    test: str = "test",
    validation_split: float = 0.2,
    seed: int = 0,
    test_image_size: int | Sequence[int] | None = None,
) -> ImageData:
    """Read ``root/train/<class>/*`` and ``root/test/<class>/*`` into ``uint8`` arrays.

    The validation part is a stratified, seeded share of the training folder, the same
    in every trial; tuning looks only at it. The test folder is the held-out data:
    read at ``test_image_size`` (default ``image_size``), which should not depend on a
    hyperparameter, so that models of different input sizes are compared on the same
    arrays (each model resizes its input itself).
    """
    import numpy as np

    size = _size("image_size", image_size)
    test_size = _size("test_image_size", test_image_size or size)
    if color_mode not in COLOR_MODES:
        raise ImageDataError(f"color_mode must be one of {sorted(COLOR_MODES)}, got {color_mode!r}")
    if not 0.0 < validation_split < 1.0:
        raise ImageDataError(f"validation_split must be between 0 and 1, got {validation_split}")
    root = Path(root)
    train_dir, test_dir = root / train, root / test
    names = class_folders(train_dir)
    test_names = class_folders(test_dir)
    if test_names != names:
        raise ImageDataError(
            f"the class folders differ: {train_dir} has {names}, {test_dir} has {test_names}; "
            "expected the same classes in both"
        )
    x, y = _read_folder(train_dir, names, size, color_mode)
    train_idx, val_idx = stratified_split(y, validation_split, seed)
    x_train, y_train, x_val, y_val = x[train_idx], y[train_idx], x[val_idx], y[val_idx]
    x_test, y_test = _read_folder(test_dir, names, test_size, color_mode)
    return ImageData(
        x_train=np.ascontiguousarray(x_train),
        y_train=y_train,
        x_val=np.ascontiguousarray(x_val),
        y_val=y_val,
        x_test=x_test,
        y_test=y_test,
        class_names=tuple(names),
        image_size=size,
        color_mode=color_mode,
        test_image_size=test_size,
        sources={"train": str(train_dir), "test": str(test_dir)},
        val_index=val_idx,
    )


def input_layers(preprocessing: Preprocessing) -> tuple[Any, Any]:
    """The model's input and its preprocessing: images of any size, resized and scaled.

    Returns ``(inputs, x)``: build the rest of the network on ``x`` and make the model
    with ``keras.Model(inputs, outputs)``; the preprocessing is then part of the model.
    """
    import keras
    from keras import layers

    height, width = preprocessing.image_size
    inputs = keras.Input(shape=(None, None, preprocessing.channels), name="image")
    # antialiased, as image_pixels resizes: the held-out images read at another size (and
    # any image given to the model directly) are shrunk as serving shrinks a photo
    resize = layers.Resizing(
        height, width, interpolation=preprocessing.interpolation, antialias=True
    )
    x = resize(inputs)
    x = layers.Rescaling(preprocessing.scale)(x)
    return inputs, x


def set_tensorflow_threads(intra: int, inter: int) -> bool:
    """TensorFlow's intra-op and inter-op thread pools for this process (serving sets them
    per worker, so that workers do not oversubscribe the cores). They can be set only
    before TensorFlow's first operation: False (and a warning) when it is too late."""
    import tensorflow as tf

    threading = tf.config.threading
    current = (
        threading.get_intra_op_parallelism_threads(),
        threading.get_inter_op_parallelism_threads(),
    )
    if current == (intra, inter):
        return True
    try:
        threading.set_intra_op_parallelism_threads(intra)
        threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError as err:  # TensorFlow's runtime has started in this process
        log.warning(
            "TensorFlow threads stay at intra %s, inter %s (asked: %d, %d): %s",
            current[0] or "default",
            current[1] or "default",
            intra,
            inter,
            err,
        )
        return False
    return True


# --- training recipe: blocks, schedule, input pipeline ----------------------------------


def residual_block(x: Any, filters: int, *, stride: int = 1, bn_momentum: float = 0.9) -> Any:
    """A ResNet basic block (He et al. 2016): two 3x3 convolutions with batch normalisation,
    added to the input (through a strided 1x1 convolution when the shape changes), ReLU.

    ``bn_momentum`` 0.9 rather than Keras's 0.99: with a few thousand images an epoch is a
    few dozen steps, too few for 0.99 to give usable statistics in the first epochs.
    """
    from keras import layers

    shortcut = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    y = layers.BatchNormalization(momentum=bn_momentum)(y)
    y = layers.ReLU()(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization(momentum=bn_momentum)(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(shortcut)
        shortcut = layers.BatchNormalization(momentum=bn_momentum)(shortcut)
    return layers.ReLU()(layers.Add()([y, shortcut]))


def warmup_cosine(
    learning_rate: float,
    *,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: int = 2,
    final_fraction: float = 0.01,
) -> Any:
    """A learning-rate schedule: linear warm-up from a tenth of ``learning_rate`` over
    ``warmup_epochs`` (at most half the run), then cosine decay to ``final_fraction`` of it
    at the end of ``epochs`` (Loshchilov and Hutter 2017; Goyal et al. 2017).

    It counts optimizer steps, which a checkpoint keeps, so a resumed attempt continues
    the same curve. The curve is fixed by ``epochs``: a run stopped earlier (early
    stopping, pruning) ends at a higher learning rate than the full run would.
    """
    import keras

    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(
            f"epochs and steps_per_epoch must be >= 1, got {epochs} and {steps_per_epoch}"
        )
    total = epochs * steps_per_epoch
    warmup = min(warmup_epochs * steps_per_epoch, total // 2)
    if warmup < 1:
        return keras.optimizers.schedules.CosineDecay(learning_rate, total, alpha=final_fraction)
    return keras.optimizers.schedules.CosineDecay(
        learning_rate / 10,
        total - warmup,
        alpha=final_fraction,
        warmup_target=learning_rate,
        warmup_steps=warmup,
    )


def training_dataset(x: Any, y: Any, *, batch_size: int, num_classes: int, seed: int) -> Any:
    """The training images as a ``tf.data`` pipeline: reshuffled every epoch (seeded),
    batched, labels one-hot (what label smoothing in ``CategoricalCrossentropy`` needs),
    the next batches prefetched while the model trains on this one."""
    import tensorflow as tf

    labels = tf.one_hot(tf.constant(y, tf.int32), num_classes)
    ds = tf.data.Dataset.from_tensor_slices((x, labels))
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE)


# --- checkpoints, reports, early stopping ---------------------------------------------


@dataclass
class _State:
    epoch: int = 0  # epochs finished
    checkpoint: str | None = None  # file name of the model saved after ``epoch``
    monitor: str = "val_accuracy"
    mode: str = "max"
    best: float | None = None
    best_epoch: int = 0
    wait: int = 0
    stopped_early: bool = False


class Checkpoints:
    """Epoch checkpoints in ``TRAINCHAIN_CHECKPOINT_DIR``, written so a kill at any moment
    leaves the last finished epoch loadable.

    Each epoch: the model (weights and optimizer state) to a new file, the best weights
    so far when they improved, then ``state.json`` naming them, each replaced atomically;
    older epoch files are removed after. Resuming loads what ``state.json`` names.
    """

    def __init__(
        self,
        folder: Path | None = None,
        *,
        monitor: str = "val_accuracy",
        mode: str = "max",
        early_stopping: Mapping[str, Any] | bool | None = True,
        log: Callable[[str], None] = print,
    ) -> None:
        self.folder = Path(folder) if folder is not None else task.checkpoint_dir()
        self.folder.mkdir(parents=True, exist_ok=True)
        policy = task.early_stopping() if early_stopping is True else early_stopping or None
        self.patience: int | None = None
        self.min_delta = 0.0
        if policy:
            monitor = str(policy.get("monitor", monitor))
            mode = str(policy.get("mode", mode))
            self.patience = int(policy.get("patience", 5))
            self.min_delta = float(policy.get("min_delta", 0.0))
        if mode not in {"max", "min"}:
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.log = log
        self.state = _State(monitor=monitor, mode=mode)

    @property
    def state_file(self) -> Path:
        return self.folder / STATE_FILE

    def load_state(self) -> _State | None:
        if not self.state_file.exists():
            return None
        raw = json.loads(self.state_file.read_text(encoding="utf-8"))
        known = {k: v for k, v in raw.items() if k in _State.__dataclass_fields__}
        return _State(**known)

    def restore(self, build: Callable[[], Any]) -> tuple[Any, int]:
        """The model and the epoch to start from: the checkpoint's, or ``build()`` and 0."""
        import keras

        saved = self.load_state()
        if saved is None or saved.checkpoint is None:
            return build(), 0
        path = self.folder / saved.checkpoint
        if not path.exists():
            raise FileNotFoundError(
                f"{self.state_file} names {saved.checkpoint}, which is missing: the "
                "checkpoint folder was changed by hand; empty it to start over"
            )
        # our own monitor and policy win; the counters come from the checkpoint
        saved.monitor, saved.mode = self.state.monitor, self.state.mode
        self.state = saved
        model = keras.models.load_model(path)
        self.log(
            f"resuming after epoch {saved.epoch} from {path.name}"
            + (
                f" (best {saved.monitor} {saved.best:.4f} at epoch {saved.best_epoch})"
                if saved.best is not None
                else ""
            )
        )
        return model, saved.epoch

    @property
    def finished_early(self) -> bool:
        return self.state.stopped_early

    def _improved(self, value: float) -> bool:
        best = self.state.best
        if best is None:
            return True
        if self.state.mode == "max":
            return value > best + self.min_delta
        return value < best - self.min_delta

    def _save(self, model: Any, epoch: int, logs: Mapping[str, Any]) -> None:
        value = logs.get(self.state.monitor)
        improved = False
        if value is not None and math.isfinite(float(value)):
            improved = self._improved(float(value))
        if improved:
            _save_atomically(self.folder / BEST_WEIGHTS, model.save_weights)
            self.state.best = float(value)  # type: ignore[arg-type]
            self.state.best_epoch = epoch
            self.state.wait = 0
        else:
            self.state.wait += 1
        if self.patience is not None and self.state.wait >= self.patience:
            self.state.stopped_early = True
        name = f"epoch-{epoch:04d}.keras"
        _save_atomically(self.folder / name, model.save)
        previous = self.state.checkpoint
        self.state.epoch = epoch
        self.state.checkpoint = name
        task.atomic_write_bytes(
            self.state_file, json.dumps(asdict(self.state), indent=2).encode("utf-8")
        )
        if previous and previous != name:
            (self.folder / previous).unlink(missing_ok=True)

    def callback(self) -> Any:
        """A Keras callback: checkpoint, then report, after every epoch; early stopping."""
        import keras

        owner = self

        class _TrainchainEpochs(keras.callbacks.Callback):  # type: ignore[misc]
            def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
                logs = dict(logs or {})
                finished = epoch + 1
                owner._save(self.model, finished, logs)
                values = {k: float(v) for k, v in logs.items() if _is_number(v)}
                task.report(finished, **values)
                if owner.state.stopped_early:
                    owner.log(
                        f"early stopping after epoch {finished}: {owner.state.monitor} has not "
                        f"improved for {owner.state.wait} epochs (best "
                        f"{owner.state.best} at epoch {owner.state.best_epoch})"
                    )
                    self.model.stop_training = True

        return _TrainchainEpochs()

    def restore_best(self, model: Any) -> int:
        """Load the best weights seen (by the monitored value); return their epoch."""
        path = self.folder / BEST_WEIGHTS
        if self.state.best is None or not path.exists():
            return self.state.epoch
        model.load_weights(str(path))
        return self.state.best_epoch


def _is_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _save_atomically(path: Path, save: Callable[[str], Any]) -> None:
    """``save(name)`` to a temporary file beside ``path``, then replace ``path`` with it.

    Keras picks the format by the file's suffix, so the temporary name keeps it.
    """
    tmp = path.with_name(f"tmp-{path.name}")
    try:
        save(str(tmp))
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- the model for MLflow -----------------------------------------------------------


def save_model(
    model: Any, path: Path, preprocessing: Preprocessing, reference_images: Any = None
) -> Path:
    """Save ``model`` in MLflow's ``keras`` flavor, its preprocessing in the metadata; with
    ``reference_images`` (the training images, never the held-out ones) also its drift
    reference (``drift_reference.json`` in the model folder)."""
    import mlflow.keras
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1, preprocessing.channels))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(preprocessing.class_names)))]),
    )
    mlflow.keras.save_model(
        model,
        str(path),
        signature=signature,
        pip_requirements=SPEC.pip_requirements(),
        metadata={METADATA_KEY: preprocessing.as_metadata()},
    )
    if reference_images is not None:
        from trainchain.families.drift import write_reference

        write_reference(drift_reference(model, reference_images, preprocessing), path)
    return Path(path)


def read_preprocessing(model_path: Path) -> Preprocessing:
    """The preprocessing recorded with a saved model (what serving must apply)."""
    import yaml

    mlmodel = yaml.safe_load((Path(model_path) / "MLmodel").read_text(encoding="utf-8"))
    meta = (mlmodel.get("metadata") or {}).get(METADATA_KEY)
    if not meta:
        raise ValueError(f"{model_path}/MLmodel records no {METADATA_KEY} preprocessing")
    return Preprocessing(
        image_size=(int(meta["image_size"][0]), int(meta["image_size"][1])),
        color_mode=str(meta["color_mode"]),
        class_names=tuple(str(c) for c in meta["class_names"]),
        scale=float(meta["scale"]),
        interpolation=str(meta["interpolation"]),
    )


def save_heldout(data: ImageData, path: Path | None = None) -> Path:
    """The held-out test arrays for trainchain's champion/challenger comparison."""
    import numpy as np

    target = Path(path) if path is not None else task.heldout_path()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, X=data.x_test, y=data.y_test)
    task.atomic_write_bytes(target, buffer.getvalue())
    return target


def score_and_save(
    model: Any,
    data: ImageData,
    preprocessing: Preprocessing,
    *,
    best_epoch: int,
    started: float,
    batch_size: int = 64,
    one_hot: bool = True,
) -> dict[str, Any]:
    """The end of an image model's training script, as the contract asks: the model (its
    best epoch restored) scored on the validation split and once on the held-out folder,
    saved with its preprocessing and drift reference, the held-out arrays kept for the
    promotion's paired test, and the metrics written (``started``: the script's
    ``time.perf_counter()`` at its start). ``one_hot``: the model's loss takes one-hot
    labels (categorical cross-entropy, label smoothing), else class indices."""
    import time

    import keras

    classes = len(data.class_names)

    def labels(y: Any) -> Any:
        return keras.utils.to_categorical(y, classes) if one_hot else y

    _, val_accuracy = model.evaluate(
        data.x_val, labels(data.y_val), batch_size=batch_size, verbose=0
    )
    _, test_accuracy = model.evaluate(
        data.x_test, labels(data.y_test), batch_size=batch_size, verbose=0
    )
    print(
        f"best epoch {best_epoch}: val_accuracy {val_accuracy:.4f}, "
        f"test_accuracy {test_accuracy:.4f}",
        flush=True,
    )
    save_model(model, task.model_dir(), preprocessing, reference_images=data.x_train)
    save_heldout(data)
    metrics = {
        **data.validation_metrics(val_accuracy),
        "test_accuracy": test_accuracy,
        "n_test": len(data.y_test),
        "best_epoch": best_epoch,
        "train_seconds": time.perf_counter() - started,
    }
    task.write_metrics(metrics)
    return metrics


# --------------------------------------------------------------------------- drift

# The statistics the image family declares for drift monitoring (trainchain.core.drift):
# brightness, contrast and sharpness of each image, its per-channel colour means, and the
# model's confidence (its largest class probability) when the model or its output is given.
IMAGE_FEATURES = ("brightness", "contrast", "sharpness")
_CHANNEL_NAMES = {1: ("gray",), 3: ("red", "green", "blue")}


def summarise(batch: Any, model: Any = None, probabilities: Any = None) -> dict[str, Any]:
    """Drift summary of images ``(n, height, width, channels)`` (``uint8`` 0-255, or
    ``(n, height, width)`` grey): ``{group: (n, features)}`` with groups ``image``
    (brightness: mean level, contrast: its SD, sharpness: mean absolute difference of
    neighbouring pixels, all on a 0-1 scale), ``colour`` (mean of each channel) and,
    given the model (or its ``probabilities``), ``confidence`` (the largest probability)."""
    import numpy as np

    x = np.asarray(batch, dtype=np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or len(x) < 1 or min(x.shape[1:3]) < 2 or x.shape[-1] not in _CHANNEL_NAMES:
        raise ImageDataError(
            "images for a drift summary: expected an array (n, height, width, channels) of "
            f"images at least 2 x 2 with 1 or 3 channels, got shape {x.shape}"
        )
    x = x / 255.0
    gray = x.mean(axis=-1)
    sharpness = (
        np.abs(np.diff(gray, axis=1)).mean(axis=(1, 2))
        + np.abs(np.diff(gray, axis=2)).mean(axis=(1, 2))
    ) / 2.0
    out: dict[str, Any] = {
        "image": np.stack(
            [gray.mean(axis=(1, 2)), gray.std(axis=(1, 2)), sharpness], axis=1
        ).astype(np.float64),
        "colour": x.mean(axis=(1, 2)).astype(np.float64),
    }
    if probabilities is None and model is not None:
        probabilities = predict_probabilities(model, np.asarray(batch, dtype=np.float32))
    if probabilities is not None:
        out["confidence"] = np.asarray(probabilities, dtype=np.float64).max(axis=-1)[:, None]
    return out


def predict_probabilities(model: Any, x: Any) -> Any:
    """Class probabilities of a Keras model (quietly) or any model with ``predict``."""
    try:
        return model.predict(x, verbose=0)
    except TypeError:
        return model.predict(x)


def drift_reference(model: Any, images: Any, preprocessing: Preprocessing, seed: int = 0) -> Any:
    """The drift reference of a trained model on its training ``images``: their summary and
    the classes the model predicts for them, at most ``trainchain.core.drift.MAX_ROWS``."""
    import numpy as np

    from trainchain.core.drift import MAX_ROWS, Reference

    x = np.asarray(images)
    if len(x) > MAX_ROWS:
        x = x[np.sort(np.random.default_rng(seed).permutation(len(x))[:MAX_ROWS])]
    probabilities = np.asarray(predict_probabilities(model, x.astype(np.float32)), dtype=np.float64)
    summary = summarise(x, probabilities=probabilities)
    channels = summary["colour"].shape[1]
    names = {
        "image": list(IMAGE_FEATURES),
        "colour": list(_CHANNEL_NAMES[channels]),
        "confidence": ["max_probability"],
    }
    classes = [preprocessing.class_names[int(i)] for i in probabilities.argmax(axis=-1)]
    return Reference.build(
        "cnn", summary, names=names, predictions=classes, seed=seed, input_shape=x.shape[1:]
    )


def read_images(paths: Sequence[Path], preprocessing: Preprocessing) -> Any:
    """Image files as the model's input, ``uint8`` ``(n, height, width, channels)``: each
    by :func:`image_pixels`, as training and serving read them."""
    return _read_all(
        list(paths), preprocessing.image_size, preprocessing.color_mode, preprocessing.interpolation
    )


def drift_monitor(model_dir: Path) -> Any:
    """The family's :data:`~trainchain.families.base.DriftMonitor` for the Keras model
    saved in ``model_dir``: summary (with the model's confidence) and predicted classes."""
    import mlflow.keras
    import numpy as np

    names = read_preprocessing(model_dir).class_names
    keras_model = mlflow.keras.load_model(str(model_dir))

    def monitor(batch: Any) -> tuple[dict[str, Any], list[str]]:
        probabilities = np.asarray(
            predict_probabilities(keras_model, np.asarray(batch, np.float32))
        )
        summary = summarise(batch, probabilities=probabilities)
        return summary, [names[int(i)] for i in probabilities.argmax(axis=-1)]

    return monitor


def serving_summary(batch: Any, probabilities: Any = None) -> dict[str, Any]:
    """The :data:`~trainchain.families.base.ServingSummary` of one request's images (the
    decoded ``uint8`` array the model takes): every group of :func:`summarise`, the
    confidence from the probabilities the service's prediction gave (the model does not
    run again)."""
    return summarise(batch, probabilities=probabilities)


# The family's contract (trainchain.families.base), declared once its functions exist.
SPEC = FamilySpec(
    family=Family.CNN,
    inputs="images: uint8 0-255 (n, height, width, channels), any size",
    flavor="keras",
    requirements=("keras", "tensorflow-cpu", "tensorflow", "numpy"),
    drift_monitor=drift_monitor,
    serving_summary=serving_summary,
)
