"""The training images' sources, checked without a Docker engine.

One Dockerfile (images/Dockerfile) builds every image, with ``--build-arg FAMILY``; each
family folder of images/ holds a complete, exactly pinned lock (requirements.txt). These
tests read them: the base is an ARG with a pinned official default, packages come only
from the wheelhouse, the image runs as a non-root user from a virtual environment at
/opt/venv, nothing secret is declared, and the pins agree with the repository's
requirements.txt. Building and running the images is the Docker tier's.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import trainchain
from trainchain.core.detect import DEFAULT_RULES

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGES = REPO_ROOT / "images"
DOCKERFILE = IMAGES / "Dockerfile"
# The training images (target train); images/serve (the prediction service, target serve)
# has tests/test_serve_image.py.
FAMILIES = sorted(
    p.name for p in IMAGES.iterdir() if (p / "requirements.txt").is_file() and p.name != "serve"
)
DEFAULT_BASE = "python:3.11-slim-bookworm"
SECRET_WORDS = ("PASSWORD", "PASSWD", "TOKEN", "SECRET", "CREDENTIAL", "API_KEY", "PRIVATE_KEY")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    assert not pending, f"{dockerfile}: ends inside a continued line"
    return out


def final_stage(steps: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    """The instructions that make the image of target ``name``: its stage and the stages it
    starts from, from its ``FROM ${BASE_IMAGE}`` on (the earlier build stages, such as the
    wheelhouse's, are not in the image; the global ARGs are left out)."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for keyword, args in steps:
        if keyword == "FROM":
            words = args.split()
            current = [(keyword, args)]
            stages[words[2] if len(words) == 3 and words[1].upper() == "AS" else ""] = current
        elif current:
            current.append((keyword, args))
    assert name in stages, f"no stage {name} in {DOCKERFILE}"
    chain: list[tuple[str, str]] = []
    for _ in range(len(stages)):  # each stage starts from an earlier one or the base
        if name not in stages:
            break
        chain = stages[name] + chain
        name = stages[name][0][1].split()[0]
    return chain


def pins(requirements: Path, *, includes: tuple[str, ...] = ()) -> dict[str, str]:
    """{canonical name: version} of a requirements file; every line must be an exact pin,
    or one of ``includes`` (such as ``-r requirements.txt``)."""
    found: dict[str, str] = {}
    for number, raw in enumerate(requirements.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line or line in includes:
            continue
        match = PIN.match(line)
        assert match, f"{requirements}:{number}: {line!r} is not an exact pin (name==version)"
        name = canonical(match.group(1))
        assert name not in found, f"{requirements}:{number}: {name} is pinned twice"
        found[name] = match.group(2)
    return found


def test_every_family_detection_names_has_an_image_folder() -> None:
    """Every image that detection names is trainchain/train-<family> at the package version, with an
    images/<family> folder."""
    assert FAMILIES == ["eeg", "sklearn", "tensorflow"]
    for rule in DEFAULT_RULES:
        match = re.fullmatch(r"trainchain/train-([a-z0-9]+):(.+)", rule.image)
        assert match, f"detection names an image outside trainchain/train-*: {rule.image}"
        assert match.group(1) in FAMILIES, (
            f"no images/{match.group(1)}/requirements.txt for {rule.image}"
        )
        assert match.group(2) == trainchain.__version__


def test_one_dockerfile_builds_every_family() -> None:
    """No family folder has a Dockerfile of its own; the one Dockerfile takes FAMILY as a
    build argument (and says so when it is missing), and its default target is train."""
    assert not sorted(IMAGES.glob("*/Dockerfile"))
    steps = instructions(DOCKERFILE)
    assert ("ARG", "FAMILY") in steps
    runs = " ".join(args for keyword, args in steps if keyword == "RUN")
    assert 'test -n "$FAMILY" ||' in runs and "--build-arg FAMILY=" in runs
    froms = [args for keyword, args in steps if keyword == "FROM"]
    assert froms[-1].split()[-1] == "train", "the default (last) target is a training image"
    assert "python3.11" not in DOCKERFILE.read_text(encoding="utf-8"), (
        "the Python version's site-packages path is derived, not written"
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_base_image_is_an_arg_with_a_pinned_official_default(family: str) -> None:
    """The base image is the first ARG with a pinned default; every stage starts from it or an
    earlier stage, the final one from the plain base."""
    steps = instructions(DOCKERFILE)
    assert steps[0] == ("ARG", f"BASE_IMAGE={DEFAULT_BASE}"), "the first instruction sets the base"
    stages: list[str] = []
    for keyword, args in steps:
        if keyword != "FROM":
            continue
        words = args.split()
        source = words[0]
        assert source == "${BASE_IMAGE}" or source in stages, (
            f"FROM {source}: every stage starts from ${{BASE_IMAGE}} or an earlier stage"
        )
        if len(words) == 3 and words[1].upper() == "AS":
            stages.append(words[2])
    final_from = final_stage(steps, "train")[0][1].split()[0]
    assert final_from == "${BASE_IMAGE}", "the final stage is the plain base"


@pytest.mark.parametrize("family", FAMILIES)
def test_installs_only_from_the_wheelhouse_into_opt_venv(family: str) -> None:
    """pip installs only from the copied wheelhouse into /opt/venv (the lock, then trainchain
    without dependencies), and nothing is fetched from the network."""
    steps = instructions(DOCKERFILE)
    runs = [args for keyword, args in steps if keyword == "RUN"]
    installs = [
        part for run in runs for part in run.split("&&") if re.search(r"pip\s+install", part)
    ]
    assert installs, "no pip install"
    for part in installs:
        assert "--no-index" in part, f"pip install without --no-index: {part.strip()}"
        assert "--find-links /tmp/" in part, f"pip install not from a copied folder: {part}"
        assert part.strip().startswith("/opt/venv/bin/python -m pip"), part
    assert any("python3 -m venv /opt/venv" in run for run in runs)
    requirement_install = [p for p in installs if "-r /tmp/requirements.txt" in p]
    assert requirement_install, "the lock is not what gets installed"
    trainchain_install = [p for p in installs if re.search(r"\btrainchain\s*$", p.strip())]
    assert trainchain_install and all("--no-deps" in p for p in trainchain_install), (
        "trainchain goes in without its dependencies (the lock gives what the family needs)"
    )
    joined = " ".join(runs)
    for fetcher in ("curl ", "wget ", "pip download", "--index-url", "--extra-index-url"):
        assert fetcher not in joined, f"the build fetches from the network: {fetcher.strip()}"
    env = " ".join(args for keyword, args in steps if keyword == "ENV")
    assert "PATH=/opt/venv/bin:$PATH" in env


@pytest.mark.parametrize("family", FAMILIES)
def test_wheelhouse_stays_out_of_the_final_image(family: str) -> None:
    """The final stage copies only from earlier stages, never the wheelhouse."""
    steps = instructions(DOCKERFILE)
    final = final_stage(steps, "train")
    for keyword, args in final:
        if keyword in ("COPY", "ADD"):
            assert args.startswith("--from="), f"the final stage copies from the context: {args}"
            assert "wheelhouse" not in args


@pytest.mark.parametrize("family", FAMILIES)
def test_runs_as_the_non_root_user_with_labels_and_environment(family: str) -> None:
    """The final image runs as the non-root trainchain user in /work, with family and version
    labels and the expected environment."""
    steps = final_stage(instructions(DOCKERFILE), "train")
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users, "no USER: the image would run as root"
    assert users[-1] not in ("root", "0", "0:0"), f"runs as {users[-1]}"
    assert users[-1] == "trainchain"
    runs = " ".join(args for keyword, args in steps if keyword == "RUN")
    assert "useradd --uid 1000" in runs
    assert ("WORKDIR", "/work") in steps
    labels = " ".join(args for keyword, args in steps if keyword == "LABEL")
    # the family comes from the build argument build-images.sh passes
    assert 'trainchain.family="${FAMILY}"' in labels
    assert ("ARG", "FAMILY") in steps
    assert f'org.opencontainers.image.version="{trainchain.__version__}"' in labels
    assert "org.opencontainers.image.title=" in labels
    env = " ".join(args for keyword, args in steps if keyword == "ENV")
    for setting in ("PYTHONUNBUFFERED=1", "MNE_LOGGING_LEVEL=ERROR", "MPLCONFIGDIR=/tmp"):
        assert setting in env


@pytest.mark.parametrize("family", FAMILIES)
def test_no_secret_in_any_instruction(family: str) -> None:
    """No Dockerfile instruction carries a secret-looking word or mounts a secret."""
    for keyword, args in instructions(DOCKERFILE):
        if keyword in ("ENV", "ARG", "COPY", "ADD", "LABEL"):
            upper = args.upper()
            for word in SECRET_WORDS:
                assert word not in upper, f"{keyword} {args}: looks like it carries a secret"
        if keyword == "RUN":
            assert "--mount=type=secret" not in args


@pytest.mark.parametrize("family", FAMILIES)
def test_requirements_are_exact_pins_that_agree_with_the_repository(family: str) -> None:
    """Each family's requirements are exact pins, agree with the repository's, and include what
    its scripts import, but not trainchain."""
    image_pins = pins(IMAGES / family / "requirements.txt")
    repo_pins = pins(REPO_ROOT / "requirements.txt")
    for name, version in image_pins.items():
        if name in repo_pins:
            assert version == repo_pins[name], (
                f"images/{family}/requirements.txt pins {name}=={version}, "
                f"requirements.txt {name}=={repo_pins[name]}"
            )
    # What each family's scripts import (detection's libraries), what saving the model
    # needs (mlflow.sklearn imports pandas) and what the family's helpers use (the image
    # CNN family reads images with Pillow, as serving does).
    wanted = {
        "eeg": {"mne", "scikit-learn", "scipy", "numpy", "mlflow-skinny", "cloudpickle", "pandas"},
        "sklearn": {"scikit-learn", "scipy", "numpy", "mlflow-skinny", "cloudpickle", "pandas"},
        "tensorflow": {
            "tensorflow-cpu",
            "keras",
            "numpy",
            "mlflow-skinny",
            "cloudpickle",
            "pillow",
        },
    }[family]
    assert wanted <= set(image_pins), f"missing: {sorted(wanted - set(image_pins))}"
    assert "trainchain" not in image_pins, "trainchain comes from its own wheel, not the lock"


@pytest.mark.parametrize("script", ["build-images.sh", "start-docker.sh"])
def test_scripts_parse(script: str) -> None:
    """The image scripts are executable and parse with bash -n."""
    path = REPO_ROOT / "scripts" / script
    assert path.stat().st_mode & 0o111, f"{script} is not executable"
    bash = shutil.which("bash")
    assert bash is not None
    done = subprocess.run([bash, "-n", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_build_script_names_the_images_detection_uses() -> None:
    """build-images.sh builds trainchain/train-<family>:<version> from the one Dockerfile, with
    FAMILY as a build argument, offline and from the pinned base."""
    text = (REPO_ROOT / "scripts" / "build-images.sh").read_text(encoding="utf-8")
    assert f"VERSION={trainchain.__version__}" in text
    assert "image=trainchain/train-$1:$VERSION" in text
    assert "--network none" in text
    # one Dockerfile, the family as a build argument that the idempotence label includes
    assert "cp images/Dockerfile" in text
    assert '--build-arg "FAMILY=$family"' in text
    assert 'echo "build arguments ${build_args[*]}"' in text
    assert f"OFFICIAL_BASE={DEFAULT_BASE}" in text


def test_host_tensorflow_lock_matches_the_tensorflow_image() -> None:
    """requirements-tensorflow.txt installs on the host exactly the TF image's versions."""
    host = REPO_ROOT / "requirements-tensorflow.txt"
    assert "-r requirements.txt" in host.read_text(encoding="utf-8").splitlines()
    host_pins = pins(host, includes=("-r requirements.txt",))
    image_pins = pins(IMAGES / "tensorflow" / "requirements.txt")
    repo_pins = pins(REPO_ROOT / "requirements.txt")
    assert {"tensorflow-cpu", "keras", "h5py"} <= set(host_pins)
    for name, version in host_pins.items():
        assert image_pins.get(name) == version, (
            f"{name}=={version}: the image has {image_pins.get(name)}"
        )
    # together with requirements.txt, the host has every package the image has
    missing = set(image_pins) - set(host_pins) - set(repo_pins) - {"setuptools", "wheel"}
    assert not missing, f"requirements-tensorflow.txt lacks {sorted(missing)}"


@pytest.mark.parametrize(
    ("image", "parts", "build_name"),
    [
        ("trainchain/train-eeg:0.1.0", ("trainchain/train-eeg", "0.1.0", None, "eeg"), "eeg"),
        ("train-cnn", ("train-cnn", None, None, "cnn"), "cnn"),
        (
            "localhost:5000/trainchain/train-sklearn:1@sha256:ab12",
            ("localhost:5000/trainchain/train-sklearn", "1", "sha256:ab12", "sklearn"),
            "sklearn",
        ),
        ("localhost:5000/train-eeg", ("localhost:5000/train-eeg", None, None, "eeg"), "eeg"),
        ("python:3.11-slim", ("python", "3.11-slim", None, None), "python"),
        ("ghcr.io/org/tools:latest", ("ghcr.io/org/tools", "latest", None, None), "tools"),
    ],
)
def test_image_names_parse_one_way(
    image: str, parts: tuple[str, str | None, str | None, str | None], build_name: str
) -> None:
    """One parser (repository, tag, digest, family): a registry's port is not a tag, and
    train-NAME is the family NAME, for the build hint and for `trainchain images`."""
    from trainchain.adapters.images import ImageInfo
    from trainchain.core.detect import image_family, parse_image

    ref = parse_image(image)
    assert (ref.repository, ref.tag, ref.digest, ref.family) == parts
    assert image_family(image) == (parts[3] or "<family>")
    assert ImageInfo("x", image, present=False).build_name == build_name
