"""Training images in the Docker engine: the image each detection rule names, whether it is
built, and building them (an image name taken apart: :func:`trainchain.core.detect.parse_image`).

Building is done by ``scripts/build-images.sh`` (local base image, host wheelhouse,
``docker build --network none``); ``trainchain images build`` runs it from the checkout.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainchain.adapters.containers import connect
from trainchain.core.config import Rule
from trainchain.core.detect import parse_image
from trainchain.core.errors import TrainchainError

BUILD_SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "build-images.sh"


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
        ref = parse_image(self.image)
        return ref.family or ref.name


def docker_client(timeout: float = 10) -> Any:
    """A docker SDK client that answers, or a clear error saying how to start an engine
    (the Docker executor's client: one way to reach the engine)."""
    return connect(timeout=timeout)


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
