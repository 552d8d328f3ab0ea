"""Training images: their names, which image each detection rule names, whether it is built.

Building is done by ``scripts/build-images.sh`` (local base image, host wheelhouse,
``docker build --network none``); ``trainchain images build`` runs it from the checkout.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainchain.core.config import Rule
from trainchain.core.errors import TrainchainError

BUILD_SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "build-images.sh"


@dataclass(frozen=True)
class ImageName:
    """An image reference taken apart: ``[registry[:port]/]path/name[:tag][@digest]``."""

    repository: str  # everything before the tag and digest
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The last path component: ``train-eeg`` of ``trainchain/train-eeg:0.1.0``."""
        return self.repository.rsplit("/", 1)[-1]

    @property
    def family(self) -> str | None:
        """``eeg`` for a trainchain training image ``.../train-eeg``; None for any other."""
        if not self.name.startswith("train-"):
            return None
        return self.name.removeprefix("train-") or None


def parse_image(image: str) -> ImageName:
    """``localhost:5000/trainchain/train-eeg:0.1.0@sha256:ab..`` -> its repository, tag and
    digest (a ``:`` before the last ``/`` is a registry's port, not a tag)."""
    rest, _, digest = image.partition("@")
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        return ImageName(rest[:colon], rest[colon + 1 :] or None, digest or None)
    return ImageName(rest, None, digest or None)


def image_family(image: str) -> str:
    """``trainchain/train-eeg:0.1.0`` -> ``eeg``; ``<family>`` when the name says nothing
    (for a hint: ``scripts/build-images.sh <family>``)."""
    return parse_image(image).family or "<family>"


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
    from trainchain.adapters.containers import connect

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
