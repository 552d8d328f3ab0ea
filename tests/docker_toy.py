"""The small Docker image the Docker-tier tests train in: ``trainchain/test-toy:latest``, a
local Debian base with Python 3.11, a venv on PATH, the trainchain package and uid 1000.
Built once (from the base scripts/build-images.sh made, else with mmdebstrap) and kept
while the stdlib-only task helper it serves is unchanged."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE_IMAGE = "trainchain/test-base:bookworm"
TOY_IMAGE = "trainchain/test-toy:latest"
SOURCE_LABEL = "trainchain.test.source"
BUILD_BASE = "trainchain/python-base:3.11-bookworm"

DOCKERFILE = """
ARG BASE_IMAGE={base}
FROM ${{BASE_IMAGE}}
RUN python3.11 -m venv --without-pip /opt/venv \\
 && (useradd --uid 1000 --user-group --create-home trainer 2>/dev/null \\
     || (echo 'trainer:x:1000:1000::/tmp:/bin/sh' >> /etc/passwd \\
         && echo 'trainer:x:1000:' >> /etc/group))
COPY trainchain /opt/trainchain/trainchain
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/opt/trainchain PYTHONDONTWRITEBYTECODE=1
LABEL {source_label}={source}
USER 1000:1000
"""


def _source_digest() -> str:
    """The toy needs only the stdlib-only task helper (and the package root that exports
    it): rebuild when either changes."""
    digest = hashlib.sha256()
    for part in ("src/trainchain/__init__.py", "src/trainchain/contract/task.py"):
        digest.update((REPO_ROOT / part).read_bytes())
    return digest.hexdigest()[:16]


def _ensure_base(client: Any) -> None:
    import docker

    try:
        client.images.get(BASE_IMAGE)
        return
    except docker.errors.ImageNotFound:
        pass
    try:  # the base scripts/build-images.sh made (as in CI) is the same Debian + Python
        client.images.get(BUILD_BASE).tag(BASE_IMAGE)
        return
    except docker.errors.ImageNotFound:
        pass
    if not shutil.which("mmdebstrap"):
        pytest.fail(f"{BASE_IMAGE} is missing and mmdebstrap is not installed to make it")
    script = (
        "set -o pipefail; eatmydata mmdebstrap --quiet --variant=minbase "
        "--include=python3.11,python3.11-venv,ca-certificates bookworm - "
        f"| docker import - {BASE_IMAGE}"
    )
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, f"could not make {BASE_IMAGE}:\n{done.stderr[-3000:]}"


def ensure_toy_image(client: Any, context: Path) -> str:
    """The toy image's name, built first (in the empty folder ``context``) when it is missing
    or was built from another version of the task helper."""
    import docker

    source = _source_digest()
    stale = None
    try:
        existing = client.images.get(TOY_IMAGE)
        if existing.labels.get(SOURCE_LABEL) == source:
            return TOY_IMAGE
        stale = existing.id
    except docker.errors.ImageNotFound:
        pass
    _ensure_base(client)
    shutil.copytree(
        REPO_ROOT / "src" / "trainchain",
        context / "trainchain",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (context / "Dockerfile").write_text(
        DOCKERFILE.format(base=BASE_IMAGE, source_label=SOURCE_LABEL, source=source)
    )
    client.images.build(
        path=str(context), tag=TOY_IMAGE, network_mode="none", rm=True, forcerm=True
    )
    if stale is not None:  # the previous test image, now untagged
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(stale)
    return TOY_IMAGE
