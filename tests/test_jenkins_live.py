"""`trainchain jenkins ...` against a real Jenkins.

Runs when JENKINS_URL, JENKINS_USER and JENKINS_TOKEN name a Jenkins this machine can
reach (e.g. the controller of docker-compose.yml); skipped otherwise, as here, where
no Jenkins can run. tests/test_jenkins_client.py covers the same commands against a
stand-in server. The jobs these tests create are named ``trainchain-selftest-*`` and
deleted afterwards; the trainchain jobs themselves are installed, not deleted.
"""

from __future__ import annotations

import importlib
import os
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trainchain.cli import main
from trainchain.jenkins import default_jobs_dir

pytestmark = pytest.mark.jenkins

VARS = ("JENKINS_URL", "JENKINS_USER", "JENKINS_TOKEN")

SELFTEST_YAML = """
- job:
    name: {name}
    description: A trainchain self-test job (tests/test_jenkins_live.py); safe to delete.
    parameters:
      - string: {{name: GREETING, default: hello}}
      - choice: {{name: OUTCOME, choices: [pass, unstable]}}
    builders:
      - shell:
          command: |
            echo "selftest says $GREETING"
            for i in 1 2 3; do echo "line $i"; sleep 1; done
            if [ "$OUTCOME" = unstable ]; then exit 3; fi
          unstable-return: 3
"""


@pytest.fixture
def jenkins_env() -> dict[str, str]:
    missing = [v for v in VARS if not os.environ.get(v)]
    if missing:
        pytest.skip("needs a real Jenkins: set JENKINS_URL, JENKINS_USER and JENKINS_TOKEN")
    return {v: os.environ[v] for v in VARS}


@pytest.fixture
def selftest_job(jenkins_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A throwaway job definition in tmp; the job is deleted from Jenkins afterwards."""
    name = f"trainchain-selftest-{uuid.uuid4().hex[:8]}"
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "selftest.yaml").write_text(textwrap.dedent(SELFTEST_YAML.format(name=name)))
    yield name, jobs
    server: Any = importlib.import_module("jenkins").Jenkins(
        jenkins_env["JENKINS_URL"],
        jenkins_env["JENKINS_USER"],
        jenkins_env["JENKINS_TOKEN"],
        timeout=30,
    )
    if server.job_exists(name):
        server.delete_job(name)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_installing_the_trainchain_jobs_twice_changes_nothing(
    jenkins_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The real jobs/ installs, and a second install finds every job and view unchanged
    (Jenkins' re-written config.xml compares equal to ours)."""
    if not default_jobs_dir().is_dir():
        pytest.skip(f"no job definitions at {default_jobs_dir()}")
    code, out, err = cli(capsys, "jenkins", "install")
    assert code == 0, err
    assert out.strip()
    code, out, err = cli(capsys, "jenkins", "install")
    assert code == 0, err
    lines = out.splitlines()
    assert lines and all(line.startswith("unchanged ") for line in lines), out


def test_trigger_and_follow_a_job(
    selftest_job: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A job triggered with a parameter and followed prints its console once and exits 0;
    an unstable build exits 3."""
    name, jobs = selftest_job
    code, out, err = cli(capsys, "jenkins", "install", "--jobs", str(jobs))
    assert (code, out.strip()) == (0, f"created {name}"), err
    code, out, err = cli(
        capsys, "jenkins", "trigger", name, "--param", "GREETING=bonjour", "--follow",
        "--timeout", "600", "--poll", "1",
    )  # fmt: skip
    assert code == 0, err
    assert out.count("selftest says bonjour") == 1
    assert out.index("line 1") < out.index("line 2") < out.index("line 3")
    assert f"{name} #1: SUCCESS" in out

    code, out, err = cli(
        capsys, "jenkins", "trigger", name, "--param", "OUTCOME=unstable", "--wait",
        "--timeout", "600", "--poll", "1",
    )  # fmt: skip
    assert code == 3, err  # the shell step's exit 3 marks the build unstable
    assert f"{name} #2: UNSTABLE" in out
    code, out, err = cli(capsys, "jenkins", "status", name, "--json")
    assert code == 0, err
    assert '"last_build": 2' in out
