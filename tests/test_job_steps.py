"""The classic chain as Jenkins runs it: one `trainchain` call per job, values handed on in
properties files, the later jobs on other machines that share only the tracking stores."""

from __future__ import annotations

import email
import email.policy
import logging
import threading
from pathlib import Path

import pytest

from tests.conftest import ToyRepo, git, run_cli
from trainchain.adapters import properties
from trainchain.chain.tune import model_lock
from trainchain.core.errors import Busy
from trainchain.triggers.hooks import repo_key


def test_properties_round_trip_escapes_what_java_would_misread(tmp_path: Path) -> None:
    """Backslashes, line breaks, a leading blank and non-ASCII survive a properties file."""
    values = {"A": "x=y:z", "B": " lead\\back\nline é 😀", "C": ""}
    path = properties.write(tmp_path / "sub" / "p.properties", values)
    text = path.read_text(encoding="ascii")
    assert "B=\\ lead\\\\back\\nline \\u00e9 \\ud83d\\ude00" in text.splitlines()
    assert properties.read(path) == values


def test_freestyle_chain_hands_values_from_job_to_job(
    toy_repo: ToyRepo, tmp_path: Path, home: Path
) -> None:
    """pull, detect, train, tune and notify, each its own process; notify runs on another
    machine (another TRAINCHAIN_HOME) and finds the chain through the shared MLflow store."""
    repo = toy_repo(threshold=0.3)  # the defaults reach it
    sha = git(repo, "rev-parse", "HEAD")
    stores = {
        "TRAINCHAIN_TRACKING_URI": f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}",
        "TRAINCHAIN_STUDY_STORAGE": f"sqlite:///{tmp_path / 'shared' / 'optuna.db'}",
    }
    agent = {**stores, "TRAINCHAIN_HOME": str(tmp_path / "agent-1")}
    handed = tmp_path / "trainchain.properties"

    out = run_cli("pull", f"file://{repo}", "--ref", "main", "--properties", str(handed), env=agent)
    assert out.returncode == 0, out.stderr
    params = properties.read(handed)
    assert params == {"REPOSITORY": f"file://{repo}", "COMMIT": sha}

    out = run_cli(
        "detect",
        params["REPOSITORY"],
        "--ref",
        params["COMMIT"],
        "--properties",
        str(handed),
        env=agent,
    )
    assert out.returncode == 0, out.stderr
    params |= properties.read(handed)
    assert params["IMAGE"] == "python:3.11-slim"  # the toy's trainchain.yaml names it

    job = [params["REPOSITORY"], "--ref", params["COMMIT"], "--executor", "local"]
    out = run_cli("train", *job, "--image", params["IMAGE"], "--properties", str(handed), env=agent)
    assert out.returncode == 0, out.stderr
    params |= properties.read(handed)
    assert len(params["RUN_ID"]) == 32 and params["RUN_ID"] in out.stdout

    out = run_cli("tune", *job, "--promote", "--properties", str(handed), env=agent)
    assert out.returncode == 0, out.stderr
    params |= properties.read(handed)
    assert params["STATUS"] == "succeeded" and params["CHAIN"].startswith("toy-")
    assert "registry:" in out.stdout  # --promote ran (the toy saves no model to register)

    other = {**stores, "TRAINCHAIN_HOME": str(tmp_path / "agent-2")}
    out = run_cli("notify", "--chain", params["CHAIN"], env=other)
    assert out.returncode == 0, out.stderr
    (eml,) = (tmp_path / "agent-2" / "outbox").glob("*.eml")
    msg = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    body = msg.get_body(("plain",)).get_content()
    assert params["CHAIN"] in body and sha[:12] in body
    assert msg["X-Trainchain-Status"] == "succeeded"


def test_notify_without_a_chain_id_says_which_job_to_look_at(home: Path) -> None:
    """An empty CHAIN (tune failed before a chain began) is one clear error, not a guess."""
    out = run_cli("notify", "--chain", "", "--home", str(home))
    assert out.returncode == 2, out.stderr
    assert "--chain is empty" in out.stderr and "job 4" in out.stderr


def test_notify_of_an_unknown_chain_names_both_places_looked(home: Path) -> None:
    """A chain id found neither locally nor in MLflow: the error names both places."""
    out = run_cli("notify", "--chain", "nope-123", "--home", str(home))
    assert out.returncode == 2, out.stderr
    assert "no chain 'nope-123'" in out.stderr and "not in MLflow" in out.stderr


def test_a_failed_step_leaves_no_properties_of_an_earlier_build(
    toy_repo: ToyRepo, tmp_path: Path, home: Path
) -> None:
    """The properties file is removed when a step starts, so a failure hands on nothing stale."""
    handed = tmp_path / "trainchain.properties"
    properties.write(handed, {"CHAIN": "chain-of-an-earlier-build"})
    out = run_cli(
        "tune", str(tmp_path / "missing"), "--properties", str(handed), "--home", str(home)
    )
    assert out.returncode != 0
    assert not handed.exists()


def test_a_second_tuning_of_the_same_model_waits_for_the_lock_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """model_lock refuses a second holder at once by default, and with a wait takes the lock
    as soon as the first holder lets go (the first lets go only once the second has been
    refused and is waiting)."""
    held, waiting, released = threading.Event(), threading.Event(), threading.Event()

    class WaitSeen(logging.Handler):  # the lock library's own word that it waits to retry
        def emit(self, record: logging.LogRecord) -> None:
            if "not acquired" in record.getMessage():
                waiting.set()

    lock_log = logging.getLogger("filelock")
    monkeypatch.setattr(lock_log, "handlers", [*lock_log.handlers, WaitSeen()])
    caplog.set_level(logging.DEBUG, logger="filelock")

    def hold() -> None:
        with model_lock(tmp_path, "toy"):
            held.set()
            waiting.wait(30)
            released.set()  # the last thing before the lock is let go

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(30), "the first holder never took the lock"
    with (
        pytest.raises(Busy, match="another trainchain process is tuning toy"),
        model_lock(tmp_path, "toy"),
    ):
        pass
    assert not waiting.is_set()  # wait=0: refused at once, no wait between tries
    with model_lock(tmp_path, "toy", wait=30):
        assert waiting.is_set()  # it was refused and waited
        assert released.is_set()  # held only after the first let go
    holder.join(30)


def test_a_local_repository_is_one_repository_as_a_path_and_as_a_file_url(tmp_path: Path) -> None:
    """The post-receive hook (a path) and the webhook (a file:// URL) queue on one lock."""
    bare = tmp_path / "models.git"
    assert repo_key(str(bare)) == repo_key(f"file://{bare}")
