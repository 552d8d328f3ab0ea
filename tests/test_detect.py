"""Detection: the model family and image come from the code (imports, names), never from text."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from trainchain.core.config import Detection, Rule, parse_config
from trainchain.core.detect import (
    DEFAULT_RULES,
    Evidence,
    detect,
    effective_rules,
    format_text,
)
from trainchain.core.errors import DetectionError

KERAS = """\
import numpy as np
from tensorflow import keras
from tensorflow.keras import layers


def build(n_classes):
    return keras.Sequential([
        layers.Input(shape=(28, 28, 1)),
        layers.Conv2D(32, 3, activation="relu"),
        layers.Flatten(),
        layers.Dense(n_classes),
    ])
"""

EEG = """\
import mne
from mne.decoding import CSP
from sklearn.pipeline import make_pipeline
from sklearn.svm import SVC


def pipeline():
    return make_pipeline(CSP(n_components=4, rank="full"), SVC())
"""

SKLEARN = """\
from sklearn.linear_model import LogisticRegression

model = LogisticRegression()
"""

# Names of other families only in comments, docstrings and strings: not evidence.
MENTIONS_ONLY = '''\
"""A small model. We tried tensorflow and a Conv2D, and mne for EEG; not any more."""
# import tensorflow as tf
# from mne.decoding import CSP
from sklearn.ensemble import RandomForestClassifier

NOTE = "layers.Conv2D(32, 3) would need tensorflow; mne.decoding.CSP needs mne"


def fit(x, y):
    """Conv2D? keras? No: a forest."""
    return RandomForestClassifier().fit(x, y)  # not Conv2D
'''


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


def notebook(cells: list[tuple[str, str]]) -> str:
    return json.dumps(
        {
            "nbformat": 4,
            "nbformat_minor": 5,
            "metadata": {},
            "cells": [
                {"cell_type": kind, "metadata": {}, "source": src.splitlines(keepends=True)}
                | ({"outputs": [], "execution_count": None} if kind == "code" else {})
                for kind, src in cells
            ],
        }
    )


def config(**extra: Any) -> Any:
    data = {
        "name": "m",
        "goal": {"threshold": 0.5},
        "search_space": {"C": {"type": "float", "low": 0.1, "high": 10, "default": 1}},
    }
    return parse_config(data | extra)


def test_keras_conv2d_is_cnn_with_file_line_evidence(tmp_path: Path) -> None:
    """Keras Conv2D code is the cnn family, with file:line evidence for each symbol found."""
    result = detect(write(tmp_path, {"model/net.py": KERAS}))
    assert (result.family, result.image, result.explicit) == (
        "cnn",
        "trainchain/train-tensorflow:0.1.0",
        False,
    )
    assert Evidence("model/net.py", 9, "Conv2D", "cnn") in result.evidence
    assert Evidence("model/net.py", 2, "tensorflow", "cnn") in result.evidence
    assert Evidence("model/net.py", 7, "keras", "cnn") in result.evidence
    assert "model/net.py:9  Conv2D  (cnn)" in format_text(result)


def test_mne_csp_is_eeg_even_with_sklearn(tmp_path: Path) -> None:
    """mne's CSP makes code eeg even when it also uses sklearn, the fallback family."""
    result = detect(write(tmp_path, {"train.py": EEG}))
    assert (result.family, result.image) == ("eeg", "trainchain/train-eeg:0.1.0")
    assert Evidence("train.py", 2, "mne.decoding.CSP", "eeg") in result.evidence
    assert (
        Evidence("train.py", 8, "mne.decoding.CSP", "eeg") in result.evidence
    )  # the CSP(...) call
    assert result.scores["sklearn"] >= 1  # seen, but a fallback does not count against eeg


def test_csp_counts_only_when_imported_from_mne(tmp_path: Path) -> None:
    """A CSP imported from another library is not eeg evidence."""
    code = "from mylib import CSP\nfrom sklearn.svm import SVC\nCSP()\n"
    assert detect(write(tmp_path, {"train.py": code})).family == "sklearn"


def test_sklearn_alone_is_sklearn(tmp_path: Path) -> None:
    """Code that imports only sklearn is the sklearn family, with that import as its evidence."""
    result = detect(write(tmp_path, {"train.py": SKLEARN}))
    assert (result.family, result.image) == ("sklearn", "trainchain/train-sklearn:0.1.0")
    assert [(e.line, e.symbol) for e in result.evidence] == [(1, "sklearn")]


def test_comments_docstrings_and_strings_are_not_evidence(tmp_path: Path) -> None:
    """Library names in comments, docstrings and strings are not evidence."""
    result = detect(write(tmp_path, {"train.py": MENTIONS_ONLY}))
    assert result.family == "sklearn"
    assert {e.family for e in result.evidence} == {"sklearn"}


def test_aliases_and_dotted_paths_resolve(tmp_path: Path) -> None:
    """An import alias resolves, so m.decoding.CSP counts as mne.decoding.CSP."""
    code = "import mne as m\nimport numpy as np\nest = m.decoding.CSP()\n"
    result = detect(write(tmp_path, {"eeg.py": code}))
    assert Evidence("eeg.py", 3, "mne.decoding.CSP", "eeg") in result.evidence


def test_a_submodule_of_another_package_is_not_that_package(tmp_path: Path) -> None:
    """mlflow.sklearn belongs to mlflow: it is no evidence for scikit-learn."""
    code = "import mlflow.sklearn\nimport mne\nmlflow.sklearn.save_model(None, 'm')\n"
    result = detect(write(tmp_path, {"train.py": code}))
    assert result.family == "eeg"
    assert "sklearn" not in result.scores  # mlflow.sklearn is mlflow's, not scikit-learn


def test_notebook_code_cells_count_markdown_cells_do_not(tmp_path: Path) -> None:
    """In a notebook, code cells are evidence located by cell and line, names resolve across
    cells, and markdown cells, magics and shell lines are not evidence."""
    nb = notebook(
        [
            ("markdown", "# EEG\nWe use `import mne` and mne.decoding.CSP here.\n"),
            ("code", "%matplotlib inline\n!pip install keras\nimport tensorflow as tf\n"),
            ("code", "%%bash\nimport mne\n"),
            ("code", "files = !ls\nmodel = tf.keras.Sequential()\n"),
        ]
    )
    result = detect(write(tmp_path, {"notebooks/explore.ipynb": nb}))
    assert result.family == "cnn"
    assert result.warnings == ()
    assert {e.family for e in result.evidence} == {"cnn"}
    located = {(e.cell, e.line, e.symbol) for e in result.evidence}
    assert (2, 3, "tensorflow") in located
    assert (4, 2, "tensorflow") in located  # tf, resolved across cells
    assert "notebooks/explore.ipynb#cell2:3  tensorflow  (cnn)" in format_text(result)


def test_markdown_only_notebook_is_no_evidence(tmp_path: Path) -> None:
    """A notebook with only markdown cells adds no evidence."""
    nb = notebook([("markdown", "import mne\nfrom tensorflow import keras\n")])
    write(tmp_path, {"readme.ipynb": nb, "train.py": SKLEARN})
    assert detect(tmp_path).family == "sklearn"


def test_hidden_and_virtualenv_folders_are_skipped(tmp_path: Path) -> None:
    """Hidden, virtualenv, node_modules and checkpoint folders are not scanned."""
    write(
        tmp_path,
        {
            "train.py": SKLEARN,
            ".venv/lib/keras.py": KERAS,
            "venv/x.py": KERAS,
            "node_modules/y.py": EEG,
            ".ipynb_checkpoints/z.py": EEG,
        },
    )
    result = detect(tmp_path)
    assert (result.family, result.files_scanned) == ("sklearn", 1)


def test_keras_and_mne_is_a_tie_listing_both_families(tmp_path: Path) -> None:
    """Keras and mne in one project is a tie: the error lists both families with evidence
    and hints at `image:`."""
    write(tmp_path, {"cnn.py": KERAS, "eeg.py": EEG})
    with pytest.raises(DetectionError) as info:
        detect(tmp_path)
    message = info.value.message
    assert "cnn" in message
    assert "eeg" in message
    assert "cnn.py:9 Conv2D" in message
    assert "eeg.py:1 mne" in message
    assert "image:" in (info.value.hint or "")


def test_no_match_raises_with_the_image_hint(tmp_path: Path) -> None:
    """No matching rule is an error (exit code 4) that says how many files were scanned and
    hints at `image:`."""
    write(tmp_path, {"train.py": "import numpy as np\nprint(np.zeros(3))\n"})
    with pytest.raises(DetectionError) as info:
        detect(tmp_path)
    assert "no detection rule matched in 1 Python files" in info.value.message
    assert "set `image:` in trainchain.yaml" in (info.value.hint or "")
    assert info.value.exit_code == 4


def test_explicit_image_wins(tmp_path: Path) -> None:
    """An `image:` in the config is used over the detected one, and the text says so."""
    write(tmp_path, {"train.py": EEG})
    result = detect(tmp_path, config(image="registry.local/my-eeg:2"))
    assert (result.family, result.image, result.explicit) == (
        "eeg",
        "registry.local/my-eeg:2",
        True,
    )
    assert "set by `image:`" in format_text(result)


def test_explicit_image_without_match_or_with_tie_is_custom(tmp_path: Path) -> None:
    """With an explicit image and no match or a tie, the family is custom, not an error."""
    empty = detect(write(tmp_path / "a", {"x.py": "x = 1\n"}), config(image="mine:1"))
    tie = detect(write(tmp_path / "b", {"c.py": KERAS, "e.py": EEG}), config(image="mine:1"))
    assert (empty.family, empty.image) == ("custom", "mine:1")
    assert (tie.family, tie.image) == ("custom", "mine:1")


def test_config_rule_adds_a_family(tmp_path: Path) -> None:
    """A detection rule in the config adds a family that wins over the sklearn fallback."""
    torch_rule = {"family": "pytorch", "image": "me/train-torch:1", "symbols": ["torch"]}
    code = "import torch\nfrom sklearn.metrics import accuracy_score\n"
    result = detect(write(tmp_path, {"train.py": code}), config(detection={"rules": [torch_rule]}))
    assert (result.family, result.image) == ("pytorch", "me/train-torch:1")
    assert Evidence("train.py", 1, "torch", "pytorch") in result.evidence


def test_config_rule_replaces_the_default_of_its_family(tmp_path: Path) -> None:
    """A config rule for a default family replaces that family's default rule."""
    rule = {"family": "cnn", "image": "me/cnn:2", "symbols": ["Conv2D"]}
    rules = effective_rules(Detection.model_validate({"rules": [rule]}))
    assert [r.family for r in rules].count("cnn") == 1
    result = detect(write(tmp_path, {"net.py": KERAS}), config(detection={"rules": [rule]}))
    assert (result.family, result.image) == ("cnn", "me/cnn:2")
    assert {e.symbol for e in result.evidence} == {"Conv2D"}  # tensorflow, keras: not this rule's


def test_replace_defaults_uses_only_the_config_rules(tmp_path: Path) -> None:
    """With replace_defaults only the config's rules apply, so default families no longer match."""
    rule = Rule(family="jax", image="me/jax:1", symbols=("jax",))
    assert effective_rules(Detection(rules=(rule,), replace_defaults=True)) == (rule,)
    assert effective_rules(None) == DEFAULT_RULES
    detection = {"rules": [rule.model_dump()], "replace_defaults": True}
    with pytest.raises(DetectionError):
        detect(write(tmp_path, {"net.py": KERAS}), config(detection=detection))


def test_syntax_errors_do_not_crash_and_are_reported(tmp_path: Path) -> None:
    """Unparsable, non-UTF-8 and broken notebook files become warnings, not crashes; a
    declared coding line is honoured."""
    broken = "import tensorflow\ndef broken(:\n"
    write(tmp_path, {"broken.py": broken, "train.py": SKLEARN, "bad.ipynb": "{not json"})
    (tmp_path / "binary.py").write_bytes(b"import keras\nx = '\xff'\n")  # not UTF-8, no coding
    (tmp_path / "latin1.py").write_bytes(b"# coding: latin-1\nimport mne\nx = '\xe9'\n")
    result = detect(tmp_path)
    assert result.family == "eeg"  # latin1.py counts: its coding line is honoured
    assert {e.file for e in result.evidence} == {"latin1.py", "train.py"}
    assert any(w.startswith("broken.py: syntax error at line 2") for w in result.warnings)
    assert any(w.startswith("binary.py: syntax error") for w in result.warnings)
    assert any(w.startswith("bad.ipynb: not read") for w in result.warnings)
    assert "warning: broken.py" in format_text(result)


def test_invalid_escape_in_user_code_is_not_a_warning(tmp_path: Path) -> None:
    """An invalid escape sequence in user code does not produce a warning."""
    result = detect(write(tmp_path, {"train.py": 'import sklearn\nPATTERN = "\\d+"\n'}))
    assert (result.family, result.warnings) == ("sklearn", ())


def test_evidence_is_sorted_deduplicated_and_the_text_is_capped(tmp_path: Path) -> None:
    """Evidence is sorted by file and line, one per symbol per line, and the text shows at
    most `limit` lines then says how many more."""
    body = "".join(f"y{i} = layers.Conv2D(8, 3); z{i} = layers.Conv2D(8, 3)\n" for i in range(40))
    write(tmp_path, {"b.py": "from tensorflow.keras import layers\n" + body, "a.py": SKLEARN})
    result = detect(tmp_path)
    keys = [(e.file, e.line) for e in result.evidence]
    assert keys == sorted(keys)
    assert len(result.evidence) == len(set(result.evidence))
    assert sum(1 for e in result.evidence if e.symbol == "Conv2D") == 40  # one per line
    text = format_text(result, limit=10)
    assert f"... and {len(result.evidence) - 10} more" in text
    assert len(text.splitlines()) < 20


def test_to_dict_is_json_serialisable(tmp_path: Path) -> None:
    """The result's to_dict survives a JSON round trip with its family and evidence."""
    result = detect(write(tmp_path, {"train.py": EEG}))
    data = json.loads(json.dumps(result.to_dict()))
    assert data["family"] == "eeg"
    assert data["explicit"] is False
    assert {"file": "train.py", "line": 1, "symbol": "mne", "family": "eeg", "cell": None} in (
        data["evidence"]
    )


def test_not_a_folder_is_a_detection_error(tmp_path: Path) -> None:
    """Detecting in a path that is not a folder is a DetectionError saying so."""
    with pytest.raises(DetectionError, match="is not a folder"):
        detect(tmp_path / "missing")
