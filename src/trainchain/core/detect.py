"""Job 2: read the model code, decide the model family and the training image.

Pure logic: stdlib and :mod:`trainchain.core.config` only. Matching is by code, never by
text: every ``.py`` file and every code cell of every notebook is parsed with
:mod:`ast`, and only imports, names and attributes count. A comment or a string
that says ``Conv2D`` is not evidence.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainchain.core.config import Detection, Family, ModelConfig, Rule
from trainchain.core.errors import DetectionError

log = logging.getLogger(__name__)

DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(
        family=Family.CNN.value,
        image="trainchain/train-tensorflow:0.1.0",
        symbols=("Conv2D", "Convolution2D", "tensorflow", "keras"),
    ),
    # ``mne.decoding.CSP`` is the resolved path: a bare ``CSP`` counts only when imported from mne.
    Rule(
        family=Family.EEG.value,
        image="trainchain/train-eeg:0.1.0",
        symbols=("mne", "mne.decoding.CSP"),
    ),
    # EEG code uses scikit-learn too: sklearn alone means the sklearn image.
    Rule(
        family=Family.SKLEARN.value,
        image="trainchain/train-sklearn:0.1.0",
        symbols=("sklearn",),
        fallback=True,
    ),
)
CUSTOM_FAMILY = "custom"
SKIP_DIRS = frozenset({".venv", "venv", "__pycache__", "node_modules", "site-packages"})
MAX_FILE_BYTES = 20_000_000  # notebooks with embedded outputs can be large; beyond this, skipped
MAX_SHOWN = 20  # evidence lines in the human output
MAX_SHOWN_PER_FAMILY = 5  # evidence lines per family in an error message
_SHELL_ASSIGN = re.compile(r"^\s*[\w.,\s]+=\s*[!%]")  # ``files = !ls``, ``t = %timeit f()``
_HINT = "set `image:` in trainchain.yaml to the training image to use"


@dataclass(frozen=True)
class Evidence:
    file: str  # relative posix path
    line: int  # in the file; for a notebook, in the cell
    symbol: str
    family: str
    cell: int | None = None  # 1-based position of the notebook cell, None for a .py file

    @property
    def location(self) -> str:
        cell = "" if self.cell is None else f"#cell{self.cell}"
        return f"{self.file}{cell}:{self.line}"


@dataclass(frozen=True)
class DetectionResult:
    family: str
    image: str
    evidence: tuple[Evidence, ...]  # every rule match, sorted by file then line
    explicit: bool  # the image comes from ``image:`` in trainchain.yaml
    scores: dict[str, int] = field(default_factory=dict)  # matches per family
    warnings: tuple[str, ...] = ()  # files that could not be read or parsed
    files_scanned: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "image": self.image,
            "explicit": self.explicit,
            "scores": dict(self.scores),
            "evidence": [asdict(e) for e in self.evidence],
            "warnings": list(self.warnings),
            "files_scanned": self.files_scanned,
        }


def effective_rules(detection: Detection | None = None) -> tuple[Rule, ...]:
    """The defaults plus the config's rules; a config rule for a default family replaces it."""
    if detection is None:
        return DEFAULT_RULES
    if detection.replace_defaults:
        return detection.rules
    overridden = {r.family for r in detection.rules}
    return tuple(r for r in DEFAULT_RULES if r.family not in overridden) + detection.rules


def detect(root: Path, config: ModelConfig | None = None) -> DetectionResult:
    """Decide the family and image of the model code under ``root``; explicit ``image:`` wins."""
    root = Path(root)
    if not root.is_dir():
        raise DetectionError(f"{root} is not a folder", hint="pass the model repository's folder")
    rules = effective_rules(config.detection if config is not None else None)
    symbols, problems, files = _scan(root, frozenset(s for r in rules for s in r.symbols))
    evidence = _match(symbols, rules)
    scores = dict(Counter(e.family for e in evidence))
    matched = {e.family for e in evidence}
    candidates = [r.family for r in rules if not r.fallback and r.family in matched]
    if not candidates:
        candidates = [r.family for r in rules if r.fallback and r.family in matched]
    candidates = list(dict.fromkeys(candidates))  # rule order, no duplicates
    if config is not None and config.image:
        family = candidates[0] if len(candidates) == 1 else CUSTOM_FAMILY
        image, explicit = config.image, True
        log.info("image %s set in trainchain.yaml (detected family: %s)", image, family)
    elif len(candidates) == 1:
        family, explicit = candidates[0], False
        image = next(r.image for r in rules if r.family == family)
        log.info("detected family %s (image %s) from %d matches", family, image, scores[family])
    else:
        raise _error(
            root,
            candidates=candidates,
            evidence=evidence,
            rules=rules,
            problems=problems,
            files=files,
        )
    return DetectionResult(
        family=family,
        image=image,
        evidence=evidence,
        explicit=explicit,
        scores=scores,
        warnings=problems,
        files_scanned=files,
    )


def format_text(result: DetectionResult, limit: int = MAX_SHOWN) -> str:
    """The human output: family, image, the evidence lines (at most ``limit``), warnings."""
    source = " (set by `image:` in trainchain.yaml)" if result.explicit else ""
    counts = ", ".join(f"{f} {n}" for f, n in result.scores.items()) or "no matches"
    lines = [
        f"family:   {result.family}",
        f"image:    {result.image}{source}",
        f"evidence: {counts} in {result.files_scanned} files",
    ]
    lines += [f"  {e.location}  {e.symbol}  ({e.family})" for e in result.evidence[:limit]]
    if len(result.evidence) > limit:
        lines.append(f"  ... and {len(result.evidence) - limit} more")
    lines += [f"warning: {w}" for w in result.warnings]
    return "\n".join(lines)


# --- the decision's error --------------------------------------------------------------


def _error(
    root: Path,
    *,
    candidates: list[str],
    evidence: tuple[Evidence, ...],
    rules: tuple[Rule, ...],
    problems: tuple[str, ...],
    files: int,
) -> DetectionError:
    if candidates:
        message = (
            f"cannot decide the model family of {root}: several families match "
            f"({', '.join(candidates)})"
        )
        hint = f"{_HINT}, or change `detection.rules` so that one family matches"
    else:  # nothing matched: say what was looked for
        looked_for = "; ".join(f"{r.family}: {', '.join(r.symbols)}" for r in rules)
        message = (
            f"cannot decide the model family of {root}: no detection rule matched in {files} "
            f"Python files and notebooks (looked for {looked_for})"
        )
        hint = f"{_HINT}, or add a rule (family, image, symbols) under `detection.rules`"
    for family in candidates:
        found = [e for e in evidence if e.family == family]
        message += f"\n  {family}: " + ", ".join(
            f"{e.location} {e.symbol}" for e in found[:MAX_SHOWN_PER_FAMILY]
        )
        if len(found) > MAX_SHOWN_PER_FAMILY:
            message += f", ... and {len(found) - MAX_SHOWN_PER_FAMILY} more"
    message += "".join(f"\n  warning: {p}" for p in problems)
    return DetectionError(message, hint=hint)


# --- reading the code ------------------------------------------------------------------

# (file, cell, line, symbol)
_Symbol = tuple[str, int | None, int, str]


def _match(symbols: Iterable[_Symbol], rules: tuple[Rule, ...]) -> tuple[Evidence, ...]:
    by_symbol: dict[str, list[str]] = {}
    for rule in rules:
        for symbol in rule.symbols:
            by_symbol.setdefault(symbol, []).append(rule.family)
    found = {
        Evidence(file=file, line=line, symbol=symbol, family=family, cell=cell)
        for file, cell, line, symbol in symbols
        for family in by_symbol.get(symbol, ())
    }
    return tuple(sorted(found, key=lambda e: (e.file, e.cell or 0, e.line, e.symbol, e.family)))


def _scan(root: Path, wanted: frozenset[str]) -> tuple[list[_Symbol], tuple[str, ...], int]:
    """The ``wanted`` symbols found under ``root``, the files skipped, the files read."""
    symbols: list[_Symbol] = []
    problems: list[str] = []
    files = 0
    for path in _source_files(root, problems):
        rel = path.relative_to(root).as_posix()
        files += 1
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
            units: list[tuple[int | None, str | bytes]] = (
                _notebook_cells(path.read_text(encoding="utf-8"))
                if path.suffix == ".ipynb"
                else [(None, path.read_bytes())]  # bytes: ast honours a ``# coding:`` line
            )
        except (OSError, ValueError) as err:  # UnicodeDecodeError, JSONDecodeError: ValueError
            problems.append(f"{rel}: not read ({err}); skipped")
            continue
        trees: list[tuple[int | None, ast.Module]] = []
        for cell, source in units:
            where = rel if cell is None else f"{rel}#cell{cell}"
            try:
                with warnings.catch_warnings():  # the user's invalid escapes are not our warnings
                    warnings.simplefilter("ignore")
                    trees.append((cell, ast.parse(source, filename=where)))
            except SyntaxError as err:
                problems.append(f"{where}: syntax error at line {err.lineno} ({err.msg}); skipped")
            except (ValueError, RecursionError) as err:
                problems.append(f"{where}: cannot be parsed ({err}); skipped")
        symbols += [(rel, c, line, sym) for c, line, sym in _symbols(trees) if sym in wanted]
    for problem in problems:
        log.warning("%s", problem)
    return symbols, tuple(problems), files


def _source_files(root: Path, problems: list[str]) -> Iterator[Path]:
    def onerror(err: OSError) -> None:
        problems.append(f"{err.filename}: not read ({err.strerror}); skipped")

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith((".py", ".ipynb")):
                yield Path(dirpath, name)


def _notebook_cells(text: str) -> list[tuple[int | None, str | bytes]]:
    """The code cells of an nbformat 4 notebook, IPython magics and shell lines blanked."""
    notebook = json.loads(text)
    cells = notebook.get("cells") if isinstance(notebook, dict) else None
    if not isinstance(cells, list):
        raise ValueError("not an nbformat 4 notebook: no 'cells' list")
    units: list[tuple[int | None, str | bytes]] = []
    for number, cell in enumerate(cells, start=1):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        if isinstance(source, list):
            source = "".join(str(part) for part in source)
        if isinstance(source, str):
            units.append((number, _blank_magics(source)))
    return units


def _blank_magics(source: str) -> str:
    lines = source.split("\n")
    if lines[0].lstrip().startswith("%%"):  # a cell magic: the whole cell is not Python
        return ""
    shell = ("%", "!")
    return "\n".join(
        "" if line.lstrip().startswith(shell) or _SHELL_ASSIGN.match(line) else line
        for line in lines
    )


def _prefixes(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _symbols(trees: list[tuple[int | None, ast.Module]]) -> Iterator[tuple[int | None, int, str]]:
    """Imported modules (and prefixes), imported names, names, attributes, dotted paths."""
    aliases: dict[str, str] = {}  # bound name -> what it refers to (``tf`` -> ``tensorflow``)
    for cell, tree in trees:  # imports first: a notebook imports in one cell, uses in another
        for line, symbol in _imports(tree, aliases):
            yield cell, line, symbol
    for cell, tree in trees:
        inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                yield cell, node.lineno, node.id
                if aliases.get(node.id, node.id) != node.id:
                    yield cell, node.lineno, aliases[node.id]
            elif isinstance(node, ast.Attribute):
                line = node.end_lineno or node.lineno  # the attribute's own line in a chain
                dotted = _dotted(node, aliases)
                # Inside a chain on an imported module, an attribute is a path part, not a
                # name: ``mlflow.sklearn.save_model`` is ``mlflow.sklearn``, not ``sklearn``.
                if dotted is None or id(node) not in inner:
                    yield cell, line, node.attr
                if dotted is not None:
                    yield cell, line, dotted


def _imports(tree: ast.Module, aliases: dict[str, str]) -> Iterator[tuple[int, str]]:
    """``from a.b import C as D``: ``a``, ``a.b``, ``C``, ``a.b.C``; records ``D`` -> ``a.b.C``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield from ((a.lineno, p) for p in _prefixes(a.name))
                bound = a.asname or a.name.split(".")[0]
                aliases[bound] = a.name if a.asname else bound
        elif isinstance(node, ast.ImportFrom):
            module = node.module if node.level == 0 else None  # relative: the repo's own code
            if module:
                yield from ((node.lineno, p) for p in _prefixes(module))
            for a in node.names:
                if a.name == "*":
                    continue
                yield a.lineno, a.name
                if module:
                    yield a.lineno, f"{module}.{a.name}"
                    aliases[a.asname or a.name] = f"{module}.{a.name}"


def _dotted(node: ast.Attribute, aliases: dict[str, str]) -> str | None:
    """``mne.decoding.CSP`` for ``decoding.CSP`` after ``from mne import decoding``."""
    parts: list[str] = []
    value: ast.expr = node
    while isinstance(value, ast.Attribute):
        parts.append(value.attr)
        value = value.value
    if isinstance(value, ast.Name) and value.id in aliases:
        return ".".join([aliases[value.id], *reversed(parts)])
    return None


# --- image names: which family a training image is for -----------------------------------


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
