"""Training images: which image each detection rule names, and whether it is built.

Building is done by ``scripts/build-images.sh`` (local base image, host wheelhouse,
``docker build --network none``); ``trainchain images build`` runs it from the checkout.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainchain.config import Rule
from trainchain.errors import TrainchainError

BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-images.sh"


@dataclass(frozen=True)
class ImageInfo:
    family: str
    image: str
    present: bool
    size_mb: float | None = None
    created: str | None = None

    @property
    def build_name(self) -> str:
        """The name build-images.sh knows it by: trainchain/train-NAME:TAG -> NAME."""
        return self.image.rsplit("/", 1)[-1].split(":")[0].removeprefix("train-")


def docker_client(timeout: float = 10) -> Any:
    """A docker SDK client that answers, or a clear error saying how to start an engine
    (the Docker executor's client: one way to reach the engine)."""
    from trainchain.containers import connect

    return connect(timeout=timeout)


def engine_answers(timeout: float = 3) -> bool:
    try:
        docker_client(timeout)
    except TrainchainError:
        return False
    return True


def list_images(rules: tuple[Rule, ...]) -> list[ImageInfo]:
    import docker

    client = docker_client()
    out = []
    for rule in rules:
        try:
            image = client.images.get(rule.image)
        except docker.errors.ImageNotFound:
            out.append(ImageInfo(rule.family, rule.image, present=False))
            continue
        out.append(
            ImageInfo(
                rule.family,
                rule.image,
                present=True,
                size_mb=float(image.attrs.get("Size", 0)) / 1e6,
                created=str(image.attrs.get("Created", ""))[:19],
            )
        )
    return out


def build(families: list[str]) -> int:
    if not BUILD_SCRIPT.exists():
        raise TrainchainError(
            f"{BUILD_SCRIPT} is not there: images are built from a trainchain checkout",
            hint="clone the trainchain repository and run scripts/build-images.sh",
        )
    return subprocess.run(["bash", str(BUILD_SCRIPT), *families], check=False).returncode
