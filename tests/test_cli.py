"""The `trainchain` command as a user runs it: real subprocesses, real git, real stores."""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import shlex
from pathlib import Path

import pytest

from tests.conftest import ToyRepo, git, run_cli
from trainchain.cli.help import subcommands
from trainchain.cli.main import build_parser
from trainchain.core.status import ExitCode, exit_status_table


def _home(home: Path) -> list[str]:
    return ["--home", str(home)]


def test_run_below_goal_exits_3_with_failure_email(
    toy_repo: ToyRepo, home: Path, no_cwd_writes: Path
) -> None:
    """Budget spent below the goal: exit 3, a failure email in the outbox, nothing promoted,
    and nothing written into the current directory."""
    repo = toy_repo(threshold=0.9999, max_trials=3)
    out = run_cli("run", str(repo), "--home", str(home))
    assert out.returncode == 3, out.stderr
    assert "NOT reached" in out.stdout and "trials:    3 of 3" in out.stdout
    assert "champion:  none" in out.stdout
    emails = sorted((home / "outbox").glob("*.eml"))
    assert len(emails) == 1
    msg = email.message_from_bytes(emails[0].read_bytes(), policy=email.policy.default)
    assert "NOT reached" in msg["Subject"] and msg["X-Trainchain-Status"] == "goal_not_reached"
    assert str(emails[0]) in out.stdout
    body = msg.get_body(("plain",)).get_content()
    assert "toy: trial 2 attempt 1 starting at step 0" in body  # the last log lines


def test_threshold_override_on_the_command_line(toy_repo: ToyRepo, home: Path) -> None:
    """--threshold overrides trainchain.yaml and is validated: the error names the option
    and the value typed, and the hint is about the option, not the file."""
    repo = toy_repo(threshold=0.5)
    out = run_cli("tune", str(repo), "--threshold", "2", *_home(home))
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "error: --threshold 2: outside the range of metric 'accuracy': expected a number "
        "from 0 to 1",
        "  hint: change --threshold on the command line, or leave it out to use what "
        "trainchain.yaml says",
    ]


def test_run_pulls_a_git_repository_at_a_ref(toy_repo: ToyRepo, home: Path, tmp_path: Path) -> None:
    """Given a repository URL, run pulls it at the ref and tags runs with that commit."""
    repo = toy_repo(threshold=0.3)  # the defaults reach it
    sha = git(repo, "rev-parse", "HEAD")
    out = run_cli("run", f"file://{repo}", "--ref", "main", *_home(home))
    assert out.returncode == 0, out.stderr
    assert f"@ {sha[:12]}" in out.stdout
    # the toy script saves no model: the goal is reached but nothing can be registered
    assert "champion:  none" in out.stdout and "saved no model" in out.stdout
    report = json.loads(next((home / "chains").glob("*.json")).read_text())
    assert report["commit"] == sha and report["repository"] == f"file://{repo}"
    assert (home / "workspaces").is_dir()


def test_run_of_a_path_that_does_not_exist_says_so(tmp_path: Path, home: Path) -> None:
    """`run` of a local path that does not exist says so and what to give, with no clone
    failure and no hint about credentials."""
    missing = tmp_path / "missing" / "folder"
    out = run_cli("run", str(missing), *_home(home))
    assert out.returncode == 5
    assert out.stderr.splitlines()[0] == (
        f"error: {missing} does not exist: give a model folder or a git URL"
    )
    assert "cannot clone" not in out.stderr and "credential" not in out.stderr


def test_pull_bad_ref_is_one_clear_error(toy_repo: ToyRepo, home: Path) -> None:
    """An unknown ref exits non-zero with one line naming it."""
    out = run_cli("pull", str(toy_repo()), "--ref", "no-such-branch", *_home(home))
    assert out.returncode == 5
    assert "ref 'no-such-branch' not found" in out.stderr
    assert "Traceback" not in out.stderr


def test_pull_prints_workspace_and_commit(toy_repo: ToyRepo, home: Path) -> None:
    """pull prints the workspace path and the commit."""
    repo = toy_repo()
    out = run_cli("pull", str(repo), "--json", *_home(home))
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["commit"] == git(repo, "rev-parse", "HEAD")
    assert (Path(info["path"]) / "train.py").exists()


def test_train_once_with_overrides_and_failing_script(toy_repo: ToyRepo, home: Path) -> None:
    """train runs once with --set; a failing script exits non-zero showing its last lines."""
    out = run_cli("train", str(toy_repo()), "--set", "x=0.7", *_home(home))
    assert out.returncode == 0, out.stderr
    assert "val_accuracy=1" in out.stdout and "mlflow run:" in out.stdout

    bad = run_cli("train", str(toy_repo(name="bad", mode="crash")), *_home(home))
    assert bad.returncode == 6
    assert "exited with status 2" in bad.stderr
    assert "toy: crashing on purpose" in bad.stderr  # the last log lines

    wrong = run_cli("train", str(toy_repo(name="w")), "--set", "x=2", *_home(home))
    assert wrong.returncode == 2 and r"expected a float in [0.0, 1.0]" in wrong.stderr


def test_notify_resends_the_latest_chain(toy_repo: ToyRepo, home: Path) -> None:
    """notify (job 5 on its own) emails the latest chain's outcome again."""
    assert run_cli("tune", str(toy_repo(threshold=0.3)), *_home(home)).returncode == 0
    out = run_cli("notify", "--model", "toy", *_home(home))
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.split("email:")[1].strip())
    msg = email.message_from_bytes(path.read_bytes())
    assert msg["X-Trainchain-Status"] == "succeeded"


def test_missing_data_and_missing_config_are_clear(
    tmp_path: Path, toy_repo: ToyRepo, home: Path
) -> None:
    """A missing data folder or trainchain.yaml is one clear error with a hint."""
    out = run_cli("tune", str(toy_repo()), "--data", str(tmp_path / "nope"), *_home(home))
    assert out.returncode == 2 and "does not exist" in out.stderr and "hint:" in out.stderr
    out = run_cli("detect", str(tmp_path), *_home(home))
    assert out.returncode == 4 and "set `image:`" in out.stderr


def test_promote_job_on_its_own(toy_repo: ToyRepo, home: Path) -> None:
    """promote (as its own Jenkins job) reads the chain report; an unknown chain is clear."""
    assert run_cli("tune", str(toy_repo(threshold=0.3)), *_home(home)).returncode == 0
    out = run_cli("promote", "--model", "toy", *_home(home))
    assert out.returncode == 0, out.stderr
    assert "saved no model" in out.stdout  # the toy script writes metrics only
    out = run_cli("promote", "--chain", "nope", *_home(home))
    assert out.returncode == 2 and "no chain 'nope'" in out.stderr


def _commands(
    parser: argparse.ArgumentParser, words: str = "trainchain"
) -> list[tuple[str, argparse.ArgumentParser]]:
    """`trainchain` and every command under it, by the words that run it."""
    found = [(words, parser)]
    for name, sub in subcommands(parser).items():
        found += _commands(sub, f"{words} {name}")
    return found


COMMANDS = _commands(build_parser())


def test_help_ends_with_the_exit_statuses_and_examples() -> None:
    """`trainchain --help` lists every exit status with its meaning, then examples."""
    out = run_cli("--help")
    assert out.returncode == 0, out.stderr
    epilog = out.stdout[out.stdout.index("exit status:") :].splitlines()
    assert epilog[1 : 1 + len(ExitCode)] == exit_status_table()
    assert "examples:" in epilog
    assert "  trainchain run examples/eeg-motor-imagery" in out.stdout


@pytest.mark.parametrize(("words", "parser"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_command_has_help_for_each_option_and_examples_that_parse(
    words: str, parser: argparse.ArgumentParser
) -> None:
    """Each command's --help says what it does and what each option is, ends with the exit
    statuses, and gives examples of itself that the parser accepts as written."""
    text = parser.format_help()
    assert parser.description, f"{words}: no description"
    undocumented = [
        a.option_strings or a.dest
        for a in parser._actions
        if not a.help and not isinstance(a, argparse._SubParsersAction)
    ]
    assert undocumented == [], f"{words}: options without help"
    assert "\n".join(["exit status:", *exit_status_table()]) in text
    examples = text[text.index("examples:") :].splitlines()[1:]
    assert examples, f"{words}: no example"
    for example in examples:
        argv = shlex.split(example, comments=True)
        assert " ".join(argv).startswith(words), example
        build_parser().parse_args(argv[1:])  # exits (status 2) when it does not parse
