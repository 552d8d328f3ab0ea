"""Facial emotions (angry, fear, happy, sad) from 48x48 grayscale faces: a CNN.

Six hidden layers with ReLU (four Conv2D, two Dense) and a softmax output, with batch
normalisation and pooling after the convolutions, dropout before the dense layers, and
light augmentation. Run by trainchain
(`trainchain train .`, `tune .`, `run .`): it reads this trial's hyperparameters, trains
on the training folder minus a seeded validation share (val_accuracy, what tuning looks
at), scores the held-out folder once (test_accuracy) and saves the model, preprocessing
included, as an MLflow Keras model. After every epoch it writes a checkpoint and a
report line, so a restarted attempt resumes where it stopped.
"""

from __future__ import annotations

import time

import keras
from keras import layers

from trainchain import task
from trainchain.families.cnn import (
    Checkpoints,
    Preprocessing,
    input_layers,
    load_images,
    save_heldout,
    save_model,
)


def build_model(p, prep):
    """Conv(f) Conv(f) pool, Conv(2f) Conv(2f) pool, Dense(units) Dense(units/2), softmax.

    Batch normalisation with momentum 0.9: with a few thousand images an epoch is a few
    dozen steps, too few for the default 0.99 to give usable statistics early on.
    """
    inputs, x = input_layers(prep)  # any size, uint8 -> resized to 48x48, scaled to 0-1
    strength = p["augmentation"]
    if strength > 0:  # active in training only
        x = layers.RandomFlip("horizontal")(x)
        x = layers.RandomRotation(strength * 0.1)(x)
        x = layers.RandomTranslation(strength * 0.1, strength * 0.1)(x)
    f = p["filters"]
    for filters in (f, 2 * f):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(p["dense_units"], activation="relu")(x)
    x = layers.Dropout(p["dropout"])(x)
    x = layers.Dense(p["dense_units"] // 2, activation="relu")(x)
    x = layers.Dropout(p["dropout"])(x)
    outputs = layers.Dense(len(prep.class_names), activation="softmax")(x)
    model = keras.Model(inputs, outputs, name="emotion_cnn")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=p["learning_rate"]),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def main():
    started = time.perf_counter()
    p = task.params()
    opts = task.data_options()
    plan = task.validation()  # its seed picks the validation split (fresh to confirm)
    keras.utils.set_random_seed(opts.get("seed", 0) + task.trial())
    size = opts.get("image_size", 48)
    data = load_images(
        task.data_dir(),
        image_size=size,
        color_mode="grayscale",
        train=opts.get("train", "train"),
        test=opts.get("test", "validation"),
        validation_split=opts.get("validation_split", 0.2),
        seed=plan["seed"],
    )
    print(f"data: {data.describe()} ({time.perf_counter() - started:.1f} s)", flush=True)
    prep = Preprocessing(
        image_size=(size, size), color_mode="grayscale", class_names=data.class_names
    )

    checkpoints = Checkpoints()
    model, initial_epoch = checkpoints.restore(lambda: build_model(p, prep))
    if not checkpoints.finished_early and initial_epoch < p["epochs"]:
        model.fit(
            data.x_train,
            data.y_train,
            validation_data=(data.x_val, data.y_val),
            batch_size=p["batch_size"],
            epochs=p["epochs"],
            initial_epoch=initial_epoch,
            shuffle=True,
            callbacks=[checkpoints.callback()],
            verbose=2,
        )
    best_epoch = checkpoints.restore_best(model)

    _, val_accuracy = model.evaluate(data.x_val, data.y_val, batch_size=128, verbose=0)
    _, test_accuracy = model.evaluate(data.x_test, data.y_test, batch_size=128, verbose=0)
    print(
        f"best epoch {best_epoch}: val_accuracy {val_accuracy:.4f}, "
        f"test_accuracy {test_accuracy:.4f}",
        flush=True,
    )
    save_model(model, task.model_dir(), prep, reference_images=data.x_train)
    save_heldout(data)
    task.write_metrics(
        {
            **data.validation_metrics(val_accuracy),
            "test_accuracy": test_accuracy,
            "n_test": len(data.y_test),
            "best_epoch": best_epoch,
            "train_seconds": time.perf_counter() - started,
        }
    )


if __name__ == "__main__":
    main()
