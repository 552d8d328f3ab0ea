#!/usr/bin/env bash
# Build the training images (trainchain/train-FAMILY) and the prediction service's image
# (trainchain/serve) from the one images/Dockerfile, each with --build-arg FAMILY=FAMILY
# and its lock images/FAMILY/requirements.txt (the service: --target serve), without
# reaching any container registry or package index from inside a build:
#   - base image: $BASE_IMAGE if set; else python:3.11-slim-bookworm when present or
#     pullable; else a local Debian bookworm + Python 3.11 base made with mmdebstrap,
#     cached compressed so that the next time it only has to be loaded;
#   - a wheelhouse made on the host (pip, binary wheels for Python 3.11 on manylinux
#     x86_64/aarch64), cached per family by the hash of its requirements.txt, plus a
#     wheel of trainchain built from this repository (cached by the hash of src/);
#   - docker build --network none, and only when the inputs changed: each image is
#     labelled trainchain.inputs=<sha256 of the Dockerfile, the family's requirements,
#     the build arguments and target, trainchain's sources and the base image's id>, and
#     an image whose label matches is kept.
# Idempotent; a second run with nothing changed takes seconds.
#
# Usage: scripts/build-images.sh [--context-only] [FAMILY ...]
#   FAMILY: eeg, sklearn, tensorflow, serve, or all (default: eeg sklearn; the TensorFlow
#   image is built only when named, its wheel alone is 1.3 GB; serve is the prediction
#   service, trainchain/serve)
#   --context-only: only make the build contexts (CACHE/context/FAMILY) for a plain
#   `docker build`; needs no Docker engine.
# Environment: BASE_IMAGE, TRAINCHAIN_CACHE (default ~/.cache/trainchain),
#   TRAINCHAIN_RETRY_PULL=1 (try to pull the official base even if a pull failed less
#   than a day ago).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

VERSION=0.1.0
CACHE=${TRAINCHAIN_CACHE:-$HOME/.cache/trainchain}
OFFICIAL_BASE=python:3.11-slim-bookworm
LOCAL_BASE=trainchain/python-base:3.11-bookworm
BASE_TAR=$CACHE/python-base-3.11-bookworm.tar.zst
ALL_FAMILIES=(eeg sklearn tensorflow serve)
DEFAULT_FAMILIES=(eeg sklearn)
PY=$ROOT/.venv/bin/python

die() { echo "error: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }
# Each step prints what it did and how long it took: "==> step: what (1.2 s)".
report() { echo "==> $1: $2 ($(since "$3"))"; }
# A machine-wide pip.conf may name local indexes that do not exist; pip then warns once
# per package. Those lines are noise, every other line of pip's is kept.
pip_quiet() { "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2); }

context_only=false
families=()
for arg in "$@"; do
  case $arg in
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    --context-only) context_only=true ;;
    all) families+=("${ALL_FAMILIES[@]}") ;;
    eeg | sklearn | tensorflow | serve) families+=("$arg") ;;
    *) echo "error: unknown family or option '$arg'; expected eeg, sklearn, tensorflow, serve, all or --context-only" >&2
       exit 2 ;;
  esac
done
[ "${#families[@]}" -gt 0 ] || families=("${DEFAULT_FAMILIES[@]}")
# Each family once, in the order given.
read -r -a families <<< "$(printf '%s\n' "${families[@]}" | awk '!seen[$0]++' | tr '\n' ' ')"

t_all=$(now)
mkdir -p "$CACHE"
# One run at a time per cache: runs share the wheelhouses, contexts and image tags.
exec 9> "$CACHE/build-images.lock"
if ! flock -n 9; then
  echo "==> another build-images.sh is using $CACHE; waiting for it"
  flock 9
fi

if ! $context_only; then
  docker info >/dev/null 2>&1 || die "no Docker engine answers; start one with scripts/start-docker.sh"
fi

# --- the host environment that makes the wheels ------------------------------------
if [ ! -x "$PY" ]; then
  echo "==> .venv is missing: running scripts/setup.sh"
  scripts/setup.sh
fi

# --- base image ---------------------------------------------------------------------
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# apt-get update at most once per run, and only when something has to be installed.
apt_updated=false
apt_install() {
  [ "$(id -u)" -eq 0 ] || die "need $* (Debian packages) and not root: sudo apt-get install $*"
  if ! $apt_updated; then apt-get update -qq; apt_updated=true; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# A Debian bookworm root file system with Python 3.11 (python3) and the venv module,
# imported as an image with the environment the official image has.
make_local_base() {
  local missing=() tool
  for tool in mmdebstrap eatmydata zstd; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  [ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"
  local rootfs
  rootfs=$(mktemp "$CACHE/rootfs.XXXXXX.tar")
  # Documentation, manual pages and translations are left out (they are ~25% of it).
  if ! eatmydata mmdebstrap --quiet --variant=minbase \
      --include=python3.11,python3.11-venv,python3,ca-certificates \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
      bookworm "$rootfs" < /dev/null; then
    rm -f "$rootfs"
    die "mmdebstrap could not make the Debian bookworm base (is the Debian mirror reachable?)"
  fi
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'LABEL org.opencontainers.image.title="Debian bookworm with Python 3.11 (mmdebstrap)"' \
    --change 'CMD ["python3"]' \
    "$rootfs" "$LOCAL_BASE" >/dev/null
  rm -f "$rootfs"
  docker save "$LOCAL_BASE" | zstd -q -T0 -o "$BASE_TAR.part"
  mv "$BASE_TAR.part" "$BASE_TAR"
}

# Pulling the official base: tried when it is not present, at most once a day after a
# failure (a registry that is not there answers quickly here, but may hang elsewhere).
try_pull() {
  local marker=$CACHE/pull-failed
  if [ "${TRAINCHAIN_RETRY_PULL:-0}" != 1 ] && [ -n "$(find "$marker" -mmin -1440 2>/dev/null)" ]; then
    return 1
  fi
  if timeout 60 docker pull -q "$OFFICIAL_BASE" >/dev/null 2>&1; then
    rm -f "$marker"
    return 0
  fi
  touch "$marker"
  return 1
}

choose_base() {
  local t
  t=$(now)
  if [ -n "${BASE_IMAGE:-}" ]; then
    if ! have_image "$BASE_IMAGE"; then
      timeout 300 docker pull -q "$BASE_IMAGE" >/dev/null \
        || die "BASE_IMAGE=$BASE_IMAGE is neither present nor pullable"
    fi
    base=$BASE_IMAGE
    report base "$base (from BASE_IMAGE)" "$t"
  elif have_image "$OFFICIAL_BASE"; then
    base=$OFFICIAL_BASE
    report base "$base (present)" "$t"
  elif try_pull; then
    base=$OFFICIAL_BASE
    report base "$base (pulled)" "$t"
  else
    base=$LOCAL_BASE
    if have_image "$LOCAL_BASE"; then
      report base "$base (present; $OFFICIAL_BASE cannot be pulled)" "$t"
    elif [ -s "$BASE_TAR" ]; then
      zstd -dc "$BASE_TAR" | docker load -q >/dev/null
      report base "$base (loaded from $BASE_TAR)" "$t"
    else
      echo "==> base: $OFFICIAL_BASE cannot be pulled; making $LOCAL_BASE with mmdebstrap"
      make_local_base
      report base "$base (made with mmdebstrap, cached in $BASE_TAR)" "$t"
    fi
  fi
  base_id=$(docker image inspect -f '{{.Id}}' "$base")
}

# --- trainchain's own wheel ---------------------------------------------------------
# Keyed by the hash of the package's files and pyproject.toml; built from a copy of
# them, so nothing (build/, *.egg-info) is written into the repository.
trainchain_wheel() {
  local t files tmp
  t=$(now)
  src_hash=$( {
    find src/trainchain -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 \
      | sort -z | xargs -0 sha256sum
    sha256sum pyproject.toml
  } | sha256sum | cut -c1-16)
  tc_wheel_dir=$CACHE/trainchain-wheel/$src_hash
  files=("$tc_wheel_dir"/trainchain-*.whl)
  if [ -f "${files[0]}" ]; then
    report "trainchain wheel" "cached ($(basename "${files[0]}"), sources $src_hash)" "$t"
    return
  fi
  tmp=$(mktemp -d)
  tar -C "$ROOT" --exclude=__pycache__ --exclude='*.egg-info' --exclude='*.pyc' \
    -cf - pyproject.toml README.md src | tar -C "$tmp" -xf -
  rm -rf "$tc_wheel_dir.part"
  (cd "$tmp" && pip_quiet "$PY" -m pip wheel --quiet --disable-pip-version-check \
     --no-deps --no-build-isolation . -w "$tc_wheel_dir.part")
  rm -rf "$tmp"
  find "$CACHE/trainchain-wheel" -mindepth 1 -maxdepth 1 -type d ! -name '*.part' \
    -exec rm -rf {} +
  mv "$tc_wheel_dir.part" "$tc_wheel_dir"
  files=("$tc_wheel_dir"/trainchain-*.whl)
  report "trainchain wheel" "built $(basename "${files[0]}") (sources $src_hash)" "$t"
}

# --- a family's wheelhouse ----------------------------------------------------------
# Every pin of images/FAMILY/requirements.txt as a binary wheel for CPython 3.11 on
# glibc <= 2.36 (bookworm), whatever the host is; --no-deps, since the file is a
# complete lock (the image's `pip install --no-index` proves it is).
wheelhouse() {
  local family=$1 t req_hash
  t=$(now)
  req_hash=$(sha256sum "images/$family/requirements.txt" | cut -c1-16)
  wheelhouse_dir=$CACHE/wheelhouse/$family-$req_hash
  if [ -f "$wheelhouse_dir/.complete" ]; then
    report "wheelhouse $family" "cached ($(find "$wheelhouse_dir" -name '*.whl' | wc -l) wheels, $(du -sh "$wheelhouse_dir" | cut -f1))" "$t"
    return
  fi
  rm -rf "$wheelhouse_dir.part"
  mkdir -p "$wheelhouse_dir.part"
  # pip does not widen a manylinux_2_N platform to the older ones: name them all.
  local arch platforms=() minor
  arch=$(uname -m)
  for minor in $(seq 36 -1 5); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done
  platforms+=(--platform "manylinux2014_$arch")
  if [ "$arch" = x86_64 ]; then
    platforms+=(--platform manylinux2010_x86_64 --platform manylinux1_x86_64)
  fi
  pip_quiet "$PY" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 \
    "${platforms[@]}" -r "images/$family/requirements.txt" -d "$wheelhouse_dir.part"
  touch "$wheelhouse_dir.part/.complete"
  find "$CACHE/wheelhouse" -mindepth 1 -maxdepth 1 -type d -name "$family-*" \
    ! -name '*.part' -exec rm -rf {} +
  mv "$wheelhouse_dir.part" "$wheelhouse_dir"
  report "wheelhouse $family" "downloaded $(find "$wheelhouse_dir" -name '*.whl' | wc -l) wheels ($(du -sh "$wheelhouse_dir" | cut -f1))" "$t"
}

# --- a family's build context -------------------------------------------------------
# CACHE/context/FAMILY: Dockerfile (images/Dockerfile), requirements.txt (the family's
# lock), wheelhouse/, trainchain-wheel/ (hard links into the cache where the file system
# allows, copies otherwise).
make_context() {
  local family=$1
  context_dir=$CACHE/context/$family
  rm -rf "$context_dir"
  mkdir -p "$context_dir/wheelhouse" "$context_dir/trainchain-wheel"
  cp images/Dockerfile "images/$family/requirements.txt" "$context_dir/"
  cp -l "$wheelhouse_dir"/*.whl "$context_dir/wheelhouse/" 2>/dev/null \
    || cp "$wheelhouse_dir"/*.whl "$context_dir/wheelhouse/"
  cp "$tc_wheel_dir"/trainchain-*.whl "$context_dir/trainchain-wheel/"
}

smoke_command() {
  case $1 in
    eeg) echo "import mne, sklearn, scipy, numpy, mlflow.sklearn, cloudpickle; from trainchain import task; from trainchain.families.eeg import build_pipeline, load_epochs; print('mne', mne.__version__, 'sklearn', sklearn.__version__, 'numpy', numpy.__version__)" ;;
    sklearn) echo "import sklearn, scipy, numpy, mlflow.sklearn, cloudpickle; from trainchain import task; from trainchain.families.sklearn import build_pipeline, load_table; print('sklearn', sklearn.__version__, 'numpy', numpy.__version__)" ;;
    tensorflow) echo "import tensorflow as tf, keras, numpy, mlflow, cloudpickle; from trainchain import task; print('tensorflow', tf.__version__, 'keras', keras.__version__, 'numpy', numpy.__version__)" ;;
    serve) echo "import shutil, subprocess, mlflow.sklearn; from importlib.metadata import version; from trainchain.families.eeg import build_pipeline; from trainchain.serving.app import create_app; subprocess.run([shutil.which('trainchain'), 'serve', '--help'], check=True, capture_output=True); print(*(f'{p} {version(p)}' for p in ('flask', 'gunicorn', 'mne', 'scikit-learn')), '; trainchain serve --help runs')" ;;
  esac
}

# The image imports what its family's scripts import, and does not run as root.
smoke_test() {
  local family=$1 image=$2 t out uid errors
  t=$(now)
  errors=$(mktemp)
  out=$(docker run --rm --network none "$image" python -c "$(smoke_command "$family")" 2> "$errors") \
    || { cat "$errors" >&2; rm -f "$errors"; die "smoke test of $image failed"; }
  rm -f "$errors"
  uid=$(docker run --rm --network none "$image" id -u)
  [ "$uid" != 0 ] || die "$image runs as root"
  report "smoke test $family" "$out; uid $uid" "$t"
}

# Untagged build-stage images of FAMILY (label trainchain.stage, images/Dockerfile) whose
# ids the build log LOG does not name: stages of earlier builds no build reuses. The
# trainchain stage is a child of the venv stage, so it goes first; an image still in use
# (a child image, a container) is left and named.
remove_stale_stages() {
  local family=$1 log=$2 stage id used
  used=$(grep -oE -- '---> [0-9a-f]{12}' "$log" | cut -c6- | sort -u)
  for stage in trainchain venv; do
    for id in $(docker images -q --filter dangling=true \
                  --filter "label=trainchain.stage=$stage $family"); do
      grep -qx "$id" <<< "$used" && continue
      docker rmi "$id" >/dev/null 2>&1 \
        || echo "    note: kept untagged $stage stage $id of $family (still in use)"
    done
  done
}

build_family() {
  local family=$1 image=trainchain/train-$1:$VERSION target=train t inputs current log
  if [ "$family" = serve ]; then
    image=trainchain/serve:$VERSION
    target=serve
  fi
  # The build's arguments besides the base: its family and the Dockerfile's target.
  local build_args=(--build-arg "FAMILY=$family" --target "$target")
  wheelhouse "$family"
  if $context_only; then
    t=$(now)
    make_context "$family"
    report "context $family" "$context_dir; build it with: docker build ${build_args[*]} -t $image $context_dir" "$t"
    return
  fi
  t=$(now)
  inputs=$( {
    sha256sum images/Dockerfile "images/$family/requirements.txt"
    echo "build arguments ${build_args[*]}"
    echo "trainchain sources $src_hash"
    echo "base $base $base_id"
  } | sha256sum | cut -d' ' -f1)
  current=$(docker image inspect -f '{{index .Config.Labels "trainchain.inputs"}}' "$image" 2>/dev/null || true)
  if [ "$current" = "$inputs" ]; then
    report "image $family" "$image is up to date (inputs ${inputs:0:12})" "$t"
    return
  fi
  make_context "$family"
  mkdir -p "$CACHE/logs"
  log=$CACHE/logs/build-$family.log
  echo "==> image $family: building $image on $base (log: $log)"
  if ! docker build --network none --build-arg "BASE_IMAGE=$base" "${build_args[@]}" \
      --label "trainchain.inputs=$inputs" -t "$image" "$context_dir" > "$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "docker build of $image failed (whole log: $log)"
  fi
  # The image this one replaces, now untagged; then the family's build stages (untagged
  # images the classic builder keeps as cache) that this build did not use: without it
  # every build whose inputs changed left about 1 to 2 GB behind.
  docker image prune -f --filter "label=trainchain.family=$family" >/dev/null
  remove_stale_stages "$family" "$log"
  rm -rf "$context_dir"
  report "image $family" "built $image, $(docker image inspect -f '{{.Size}}' "$image" | awk '{ printf "%.0f MB", $1 / 1e6 }') (inputs ${inputs:0:12})" "$t"
  smoke_test "$family" "$image"
}

if ! $context_only; then
  choose_base
fi
trainchain_wheel
for family in "${families[@]}"; do
  build_family "$family"
done
if ! $context_only; then
  docker images 'trainchain/*'
fi
echo "done in $(since "$t_all")"
