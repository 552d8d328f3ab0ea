"""How promptly the local executor ends an attempt from outside, on this machine.

The timings the tests used to assert (tests/test_pruning.py: "stopped within 3 s",
"timed out within 5 s") are measured here instead, where a loaded CI machine cannot
make them flaky:

1. Stop latency: a script that reports once and then sleeps for a minute runs through
   ``LocalExecutor.run`` in a thread; once its report is written the stop event is set.
   Seconds from ``stop.set()`` to ``run`` returning (``stopped=True``).
2. Timeout overshoot: the same script with ``timeout`` 1 s. Seconds from the start of
   ``run`` to its return, minus the timeout (``timed_out=True``).

Each is repeated N times; the median and the largest are printed. Every wait is
bounded; the temporary folder is deleted.

    .venv/bin/python benchmarks/executors.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from trainchain.chain.training import read_report
from trainchain.executors import AttemptResult, AttemptSpec, LocalExecutor

SLEEPER = """
from trainchain import task
import time
task.report(0, val_accuracy=0.1)
time.sleep(60)
"""


def _spec(root: Path, timeout: float) -> AttemptSpec:
    repo = root / "repo"
    repo.mkdir(parents=True)
    (repo / "train.py").write_text(textwrap.dedent(SLEEPER))
    return AttemptSpec.in_trial_dir(
        root / "trial",
        1,
        params={},
        data_options={},
        repo_root=repo,
        entrypoint="train.py",
        data_dir=repo,
        checkpoint_dir=root / "checkpoint",
        trial=0,
        timeout=timeout,
    )


def stop_latency(root: Path) -> float:
    """Seconds from setting the stop event to ``run`` returning."""
    spec = _spec(root, timeout=120)
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(LocalExecutor().run, spec, None, stop)
        deadline = time.monotonic() + 60
        while not read_report(spec.report_file):
            if time.monotonic() > deadline:
                raise SystemExit("the script never reported within 60 s")
            time.sleep(0.01)
        asked = time.monotonic()
        stop.set()
        result: AttemptResult = future.result(timeout=60)
        took = time.monotonic() - asked
    assert result.stopped, result.describe()
    return took


def timeout_overshoot(root: Path, timeout: float = 1.0) -> float:
    """Seconds past ``timeout`` before ``run`` returns."""
    spec = _spec(root, timeout=timeout)
    started = time.monotonic()
    result = LocalExecutor().run(spec)
    took = time.monotonic() - started
    assert result.timed_out, result.describe()
    return took - timeout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trainchain-bench-") as tmp:
        root = Path(tmp)
        stops = [stop_latency(root / f"stop-{i}") for i in range(args.repeats)]
        overs = [timeout_overshoot(root / f"timeout-{i}") for i in range(args.repeats)]
    for what, values in (("stop latency", stops), ("timeout overshoot", overs)):
        print(
            f"{what:18s} median {statistics.median(values):.2f} s, "
            f"largest {max(values):.2f} s (n={len(values)})"
        )


if __name__ == "__main__":
    main()
