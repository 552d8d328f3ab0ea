"""The app under gunicorn: N worker processes, each loading the model itself.

gunicorn's ``BaseApplication`` embedded, so ``trainchain serve`` is one command: the
``gthread`` worker class (a few threads per worker), ``preload_app=False`` (each
worker builds its app, and so loads its model, after the fork, and takes requests once
its first check of the registry is done), a graceful timeout,
no access log (``/metrics`` counts requests), no control socket.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from gunicorn.app.base import BaseApplication

from trainchain.serving.config import ServeConfig

log = logging.getLogger(__name__)

THREADS = 4
GRACEFUL_TIMEOUT = 20
WORKER_TIMEOUT = 120  # a worker busy longer than this (a stuck request) is restarted
FIRST_CHECK_S = 60.0  # a worker takes requests once its first look at the registry is done


def _mark_dead(server: Any, worker: Any) -> None:
    """gunicorn ``child_exit``: drop a dead worker's live gauges from the metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def options(config: ServeConfig, host: str, port: int, workers: int) -> dict[str, Any]:
    """gunicorn settings for ``config`` on ``host:port`` with ``workers`` processes."""
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    out: dict[str, Any] = {
        "bind": [bind],
        "workers": workers,
        "worker_class": "gthread",
        "threads": THREADS,
        "preload_app": False,
        "graceful_timeout": GRACEFUL_TIMEOUT,
        "timeout": WORKER_TIMEOUT,
        "keepalive": 5,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "proc_name": f"trainchain-serve-{config.model}",
        "control_socket_disable": True,
    }
    if config.metrics_dir is not None:
        out["child_exit"] = _mark_dead
    return out


class Embedded(BaseApplication):  # type: ignore[misc]
    """gunicorn running the app ``load()`` builds, in each worker (after the fork)."""

    def __init__(self, load: Callable[[], Any], settings: Mapping[str, Any]) -> None:
        self._load = load
        self.settings = dict(settings)
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.settings.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self._load()


def _serving_app(config: ServeConfig) -> Any:
    """The app of one worker, built after the fork; it returns (and the worker begins to
    accept connections) once its first check of the registry is done, loaded or failed,
    or after FIRST_CHECK_S: with several workers, one that answered ``/health`` 200 must
    not leave the next request to a worker still loading the champion (a 503)."""
    from trainchain.serving.app import EXTENSION, create_app

    app = create_app(config)
    holder = app.extensions[EXTENSION].holder
    if not holder.wait_for(lambda: holder.checks > 0, FIRST_CHECK_S):
        log.warning(
            "worker %d: the registry's first check took over %.0f s; taking requests now "
            "(503 until the champion is loaded)",
            os.getpid(),
            FIRST_CHECK_S,
        )
    return app


def run_embedded(load: Callable[[], Any], settings: Mapping[str, Any]) -> int:
    """Serve ``load()``'s app under gunicorn until SIGTERM or SIGINT (graceful); the exit
    status of gunicorn's arbiter. Also what `trainchain hooks serve` runs.

    Only the calling (master) process returns: a worker's exit is not caught here.
    """
    master = os.getpid()
    try:
        Embedded(load, settings).run()
    except SystemExit as stop:
        if os.getpid() != master:
            raise
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    return 0


def run(config: ServeConfig, host: str, port: int, workers: int) -> int:
    """Serve ``create_app(config)`` until SIGTERM or SIGINT (graceful); the exit status of
    gunicorn's arbiter."""
    return run_embedded(partial(_serving_app, config), options(config, host, port, workers))
