"""The local executor's process group and its log pump: no engine, a real child process."""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainchain.adapters.procgroup import pump
from trainchain.executors import AttemptSpec, LocalExecutor

# 200 000 lines of 8 bytes: about 1.6 MB, far more than a pipe buffer (64 KiB)
FLOODER = """
import sys
for i in range(200_000):
    sys.stdout.write(f"{i:07d}\\n")
sys.stdout.flush()
sys.exit(3)
"""


def _spec(tmp_path: Path, script: str) -> AttemptSpec:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "train.py").write_text(script, encoding="utf-8")
    return AttemptSpec.in_trial_dir(
        tmp_path / "trial",
        1,
        params={},
        data_options={},
        repo_root=repo,
        entrypoint="train.py",
        data_dir=repo,
        checkpoint_dir=tmp_path / "checkpoint",
        trial=0,
        timeout=120.0,  # generous: it only bounds a child that would stay blocked
    )


def test_a_failing_sink_does_not_block_the_training_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sink that raises on the first line: the pump keeps draining, so a child writing
    more than a pipe buffer ends with its own status (not a timeout), its whole log is
    kept, and the sink's failure is logged once."""
    calls: list[str] = []

    def broken_sink(line: str) -> None:
        calls.append(line)
        raise RuntimeError("the console went away")

    spec = _spec(tmp_path, FLOODER)
    with caplog.at_level(logging.ERROR, logger="trainchain.adapters.procgroup"):
        result = LocalExecutor().run(spec, broken_sink)

    assert not result.timed_out
    assert result.exit_code == 3
    lines = spec.log_file.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 200_000 and lines[-1] == "0199999"
    assert result.log_tail.splitlines()[-1] == "0199999"
    assert calls[0] == "0000000"
    failures = [r for r in caplog.records if "the log line sink" in r.getMessage()]
    assert len(failures) == 1
    assert "trial 0 attempt 1" in failures[0].getMessage()


def test_the_pump_ends_quietly_when_its_stream_breaks() -> None:
    """A stream that fails midway (a container removed under it) ends the pump; what came
    before is kept."""

    def stream() -> Iterator[str]:
        yield "one"
        raise OSError("connection reset")

    tail: collections.deque[str] = collections.deque(maxlen=5)
    pump(stream(), log_file=None, tail=tail, on_line=None, source="a test stream")
    assert list(tail) == ["one"]
