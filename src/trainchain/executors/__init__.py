"""Executors run one training attempt through the file-and-environment contract.

``docker`` runs each attempt in a container of the training image and follows the
trial through its restarts; ``local`` runs the script as a subprocess of the
host's Python (machines without a Docker engine); ``auto`` is docker when an
engine answers, else local.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from trainchain.adapters.procgroup import LineSink
from trainchain.executors._base import AttemptResult, AttemptSpec, Executor
from trainchain.executors.local import LocalExecutor

if TYPE_CHECKING:
    from trainchain.core.config import ModelConfig
    from trainchain.core.settings import Settings
    from trainchain.supervise.restarts import GiveUpCallback

__all__ = [
    "AttemptResult",
    "AttemptSpec",
    "Executor",
    "LineSink",
    "LocalExecutor",
    "get_executor",
    "resolve_executor",
]

log = logging.getLogger(__name__)

EXECUTORS = ("auto", "docker", "local")


def resolve_executor(name: str, image: str | None = None) -> str:
    """What ``name`` runs on. ``auto`` is ``docker`` when an engine answers and ``image``
    exists in it, else ``local`` (with a warning that says why)."""
    from trainchain.core.errors import ConfigError

    if name not in EXECUTORS:
        raise ConfigError(
            f"unknown executor {name!r}: expected one of {', '.join(EXECUTORS)}",
            hint="--executor docker needs a Docker engine (scripts/start-docker.sh); "
            "--executor local runs without one",
        )
    if name != "auto":
        return name
    from trainchain.adapters.containers import DockerUnavailable, ImageMissing, check_image, connect

    try:
        with contextlib.closing(connect(timeout=3)) as client:
            if image is not None:
                check_image(client, image)
    except (DockerUnavailable, ImageMissing) as err:
        log.warning("--executor auto: training locally: %s", err)
        return "local"
    return "docker"


def get_executor(
    name: str,
    model: ModelConfig | None = None,
    settings: Settings | None = None,
    *,
    on_give_up: GiveUpCallback | None = None,
) -> Executor:
    """The executor ``name`` resolves to; docker takes its limits from ``model``.

    ``on_give_up``: what the Docker executor does past the restart cap, given by the
    chain layer (:func:`trainchain.chain.giveup.give_up_callback` marks the trial failed and
    sends the email); executors never reach into the chain themselves."""
    from trainchain.core.errors import ConfigError

    resolved = resolve_executor(name)
    if resolved == "local":
        return LocalExecutor()
    if model is None or settings is None:
        raise ConfigError(
            "the docker executor needs the model's config and the settings",
            hint="call get_executor(name, model, settings)",
        )
    from trainchain.executors.docker import DockerExecutor

    return DockerExecutor.from_config(
        model.train, model.watchdog, locks_dir=settings.locks, on_give_up=on_give_up
    )
