"""Everything a job needs about one model repository, worked out once at the edge."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from trainchain.adapters.digest import data_digest
from trainchain.adapters.gitrepo import describe
from trainchain.core import keys
from trainchain.core.config import (
    Family,
    LoadedConfig,
    load_config,
    resolve_data_dir,
    with_overrides,
)
from trainchain.core.detect import DetectionResult, detect
from trainchain.core.errors import ConfigError
from trainchain.core.redaction import redact
from trainchain.core.settings import Settings
from trainchain.executors import resolve_executor

log = logging.getLogger(__name__)

_CODE_SUFFIXES = {".py", ".ipynb", ".yaml", ".yml", ".txt", ".toml", ".cfg", ".json"}


@dataclass(frozen=True)
class Lineage:
    """Where a run comes from (the code, data, image, executor, and why it ran): the
    MLflow tags of every run, copied to the registered version."""

    repository: str
    commit: str
    data_digest: str
    image: str
    executor: str
    family: str = ""
    jenkins_build_url: str | None = None
    reason: str = ""
    config_digest: str = ""  # the resolved configuration (overrides applied)

    def tags(self) -> dict[str, str]:
        tags = {
            keys.REPOSITORY: self.repository,
            keys.COMMIT: self.commit,
            keys.DATA_DIGEST: self.data_digest,
            keys.IMAGE: self.image,
            keys.EXECUTOR: self.executor,
            keys.FAMILY: self.family,
        }
        if self.jenkins_build_url:
            tags[keys.JENKINS_BUILD_URL] = self.jenkins_build_url
        if self.reason:
            tags[keys.REASON] = self.reason
        if self.config_digest:
            tags[keys.CONFIG_DIGEST] = self.config_digest
        return tags


@dataclass(frozen=True)
class Prepared:
    loaded: LoadedConfig
    settings: Settings
    data_dir: Path
    detection: DetectionResult
    lineage: Lineage
    code_key: str  # the commit when clean, else a digest of the code

    @property
    def name(self) -> str:
        return self.loaded.model.name

    def study_base(self) -> str:
        """Runs of the same code, data, goal, space and validation continue one study."""
        model = self.loaded.model
        goal = json.dumps(
            {
                "goal": model.goal.model_dump(mode="json"),
                "space": model.model_dump(mode="json")["search_space"],
                "validation": model.validation.model_dump(mode="json"),
            },
            sort_keys=True,
        )
        config_key = hashlib.sha256(goal.encode()).hexdigest()[:8]
        data_key = self.lineage.data_digest.removeprefix("sha256:")[:8]
        return f"{model.name}-{self.code_key[:10]}-{data_key}-{config_key}"


def code_digest(root: Path, skip: Path | None = None) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(
            part.startswith(".") or part in {"__pycache__", "node_modules"} for part in rel.parts
        ):
            continue
        if skip is not None and (p == skip or skip in p.parents):
            continue
        if p.is_file() and p.suffix in _CODE_SUFFIXES and p.stat().st_size < 5_000_000:
            h.update(rel.as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def config_digest(loaded: LoadedConfig) -> str:
    """``sha256:<hex>`` of the resolved configuration (trainchain.yaml with the command's
    overrides): one of what makes two trained models the same one."""
    text = json.dumps(loaded.model.model_dump(mode="json"), sort_keys=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _data_hint(loaded: LoadedConfig, data_dir: Path, family: str) -> str:
    hint = "point --data, or data.path (its ${VARIABLES}), at the data"
    if "${" in loaded.model.data.path:
        hint += f" (data.path is {loaded.model.data.path!r})"
    if family == Family.EEG:
        hint += f"; synthetic EEG recordings: `trainchain data synth-eeg --out {data_dir}`"
    elif family == Family.CNN:
        options = loaded.model.data.options
        train, test = options.get("train", "train"), options.get("test", "test")
        hint += (
            f"; images go one folder per class under {data_dir / str(train)}/ and, held out, "
            f'{data_dir / str(test)}/ (the README\'s "Image CNNs" section says where to get '
            "the examples' images)"
        )
    return hint


def prepare(
    path: str | Path,
    settings: Settings,
    *,
    data: str | None = None,
    executor: str = "local",
    threshold: float | None = None,
    max_trials: int | None = None,
    timeout: float | None = None,
    require_data: bool = True,
    repository: str | None = None,
    commit: str | None = None,
    image: str | None = None,
) -> Prepared:
    """Load, override and check a model repository for a chain. ``image`` replaces the
    detected training image (Jenkins passes the one its detect job chose)."""
    loaded = load_config(path)
    if threshold is not None or max_trials is not None or timeout is not None:
        loaded = LoadedConfig(
            model=with_overrides(
                loaded.model, threshold=threshold, max_trials=max_trials, timeout=timeout
            ),
            root=loaded.root,
        )
    env = dict(os.environ) | {"TRAINCHAIN_HOME": str(settings.home)}
    data_dir = resolve_data_dir(loaded, env, data)
    detection = detect(loaded.root, loaded.model)
    if image:
        detection = replace(detection, image=image)
    if require_data and not data_dir.exists():
        raise ConfigError(
            f"the data folder {data_dir} does not exist (data.path in "
            f"{loaded.root / 'trainchain.yaml'}, or --data)",
            hint=_data_hint(loaded, data_dir, detection.family),
        )
    source = describe(loaded.root)
    repo = redact(repository or source.repository)  # lineage tags and reports hold it
    sha = commit or source.commit
    code_key = (
        sha
        if (commit or not source.dirty) and sha != "none"
        else ("dirty-" + code_digest(loaded.root, skip=data_dir)[:12])
    )
    # "auto" resolves to what will really run
    executor = resolve_executor(executor, detection.image)
    image = (
        detection.image
        if executor != "local"
        else f"local:python{sys.version_info.major}.{sys.version_info.minor}"
    )
    lineage = Lineage(
        repository=repo,
        commit=sha + ("" if commit or not source.dirty else "+dirty"),
        data_digest=data_digest(data_dir) if data_dir.exists() else "missing",
        image=image,
        executor=executor,
        family=detection.family,
        jenkins_build_url=settings.jenkins_build_url,
        reason=settings.reason,
        config_digest=config_digest(loaded),
    )
    return Prepared(loaded, settings, data_dir, detection, lineage, code_key)
