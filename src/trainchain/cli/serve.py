"""`trainchain serve`: the registry's champion over HTTP, under gunicorn."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainchain.cli.common import out as _out
from trainchain.core.errors import ConfigError

MODEL_ENV = "TRAINCHAIN_SERVE_MODEL"
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}") from None
    if not 0 <= port < 65536:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {port}")
    return port


def _workers(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of processes >= 1, got {text!r}"
        ) from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a number of processes >= 1, got {n}")
    return n


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from trainchain.core.settings import for_command
    from trainchain.core.sizes import human_size, parse_size
    from trainchain.serving.config import (
        DEFAULT_CAPTURE_RATE,
        MIN_BODY,
        BatchOptions,
        CaptureConfig,
        ServeConfig,
        default_tf_threads,
    )

    model = args.model or os.environ.get(MODEL_ENV, "").strip()
    if not model:
        raise ConfigError(
            "no model to serve: --model is not given and TRAINCHAIN_SERVE_MODEL is not set",
            hint="pass --model NAME (a registered model; `trainchain models NAME` lists its "
            "versions) or set TRAINCHAIN_SERVE_MODEL",
        )
    settings = for_command(args.home)
    master = os.getpid()
    # until gunicorn installs its own handlers, SIGTERM still runs the clean-up below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    run_dir = Path(tempfile.mkdtemp(prefix="trainchain-serve-"))
    try:
        metrics_dir = run_dir / "prometheus"
        metrics_dir.mkdir()
        # prometheus_client picks its multiprocess mode when imported: before any import
        os.environ[METRICS_ENV] = str(metrics_dir)
        config = ServeConfig.from_settings(
            settings,
            model,
            reload_interval=args.reload_interval,
            canary_share=args.canary_share,
            shadow=args.shadow,
            max_body=parse_size(args.max_body, at_least=MIN_BODY),
            workdir=run_dir / "models",
            metrics_dir=metrics_dir,
            capture=CaptureConfig(
                Path(args.capture).resolve(),
                rate=DEFAULT_CAPTURE_RATE if args.capture_rate is None else args.capture_rate,
                max_bytes=parse_size(args.capture_max, "--capture-max"),
            )
            if args.capture
            else None,
            batching=BatchOptions(
                max_batch=args.batch_max, max_wait=args.batch_wait / 1000, queue=args.batch_queue
            ),
            tf_threads=args.tf_threads or default_tf_threads(args.workers),
            **_drift_options(args, run_dir),
        )
        if config.capture is not None:
            try:
                config.capture.folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ConfigError(
                    f"--capture {args.capture}: the folder cannot be made ({err})",
                    hint="pass a folder this user can write to",
                ) from None
        if not args.quiet:
            logging.getLogger("trainchain.serving").setLevel(logging.INFO)
        from trainchain.serving.server import run

        registry_lines = _registry_lines(config, settings, args)
        host = f"[{args.host}]" if ":" in args.host else args.host
        _out(f"serving:   {model} at http://{host}:{args.port} ({args.workers} worker(s))")
        for line in registry_lines:
            _out(line)
        _out(
            f"limits:    body {human_size(config.max_body)}, {config.max_epochs} epochs, "
            f"{config.max_image_pixels} pixels per request"
        )
        if config.capture is not None:
            _out(
                f"capture:   {config.capture.rate:.0%} of requests into {config.capture.folder} "
                f"(at most {human_size(config.capture.max_bytes)}); true labels by POST /feedback"
            )
        _out(_drift_line(config))
        _out(_images_line(config, args.tf_threads is None))
        sys.stdout.flush()
        return run(config, args.host, args.port, args.workers)
    finally:
        # gunicorn's workers are forks of this process: only the master cleans up
        if os.getpid() == master:
            os.environ.pop(METRICS_ENV, None)
            shutil.rmtree(run_dir, ignore_errors=True)


def _registry_lines(config: Any, settings: Any, args: argparse.Namespace) -> list[str]:
    """What the registry holds of the model, as the lines `serve` prints: its champion and
    challenger. A model the registry does not hold is a RegistryError (exit 7, worded as
    `trainchain models` words it) unless --wait-for-model."""
    from trainchain.adapters.tracking import CHALLENGER, CHAMPION, Tracker

    model, every = config.model, f"checked every {config.reload_interval:g} s"
    tracker = Tracker(settings.tracking_uri, settings.artifacts)
    aliases = tracker.aliases(model)
    if aliases is None and not args.wait_for_model:
        raise tracker.no_such_model(
            model,
            "check the name (`trainchain models NAME` lists a model's versions), run the "
            "chain on a model repository first (`trainchain run PATH`), or pass "
            "--wait-for-model to start now and serve it once it has a champion",
        )
    aliases = aliases or {}
    champion, challenger = aliases.get(CHAMPION), aliases.get(CHALLENGER)
    lines = [
        f"champion:  none yet in {tracker.shown_uri}; /health answers 503 until "
        f"{model}@champion exists ({every})"
        if champion is None
        else f"champion:  {model} v{champion} (reloaded when the alias moves, {every})"
    ]
    if config.uses_challenger:
        mode = (
            f"canary {config.canary_share:.0%} of requests"
            if config.canary_share
            else "shadow (compared, never answers)"
        )
        lines.append(
            f"challenger: v{challenger} - {mode}"
            if challenger
            else f"challenger: none yet - {mode} once {model}@challenger exists"
        )
    elif challenger is not None:
        lines.append(
            f"challenger: v{challenger} - not served (--canary-share F or --shadow serve it)"
        )
    return lines


def _images_line(config: Any, default_threads: bool) -> str:
    """What `serve` prints of /predict's batching and TensorFlow's threads."""
    b, (intra, inter) = config.batching, config.tf_threads
    batching = (
        f"up to {b.max_batch} concurrent /predict requests per model call (waiting at most "
        f"{b.max_wait * 1000:g} ms for them, {b.queue} queued at most)"
        if b.enabled
        else "one model call per /predict request (--batch-max 1)"
    )
    share = " (the cores shared by the workers)" if default_threads else ""
    return (
        f"images:    {batching}; TensorFlow {intra} intra-op, {inter} inter-op thread(s) "
        f"per worker{share}"
    )


def _tf_threads(text: str) -> tuple[int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) == 1:
        values = (values[0], 1)
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected INTRA[,INTER] thread counts >= 1 (2 or 2,1), got {text!r}"
        )
    return values[0], values[1]


def _batch_arguments(sp: argparse.ArgumentParser) -> None:
    from trainchain.serving.config import (
        DEFAULT_BATCH_MAX,
        DEFAULT_BATCH_QUEUE,
        DEFAULT_BATCH_WAIT,
    )

    images = sp.add_argument_group(
        "images", "POST /predict: concurrent requests in one model call, TensorFlow's threads"
    )
    images.add_argument(
        "--batch-max",
        type=int,
        default=DEFAULT_BATCH_MAX,
        metavar="N",
        help="at most N images in one model call; 1 turns batching off "
        f"(default: {DEFAULT_BATCH_MAX})",
    )
    images.add_argument(
        "--batch-wait",
        type=float,
        default=DEFAULT_BATCH_WAIT * 1000,
        metavar="MS",
        help="wait at most MS milliseconds after a batch's first image for the requests "
        "still being decoded to join; a request alone never waits "
        f"(default: {DEFAULT_BATCH_WAIT * 1000:g})",
    )
    images.add_argument(
        "--batch-queue",
        type=int,
        default=DEFAULT_BATCH_QUEUE,
        metavar="N",
        help="at most N images waiting for the model per worker; beyond, 503 "
        f"(default: {DEFAULT_BATCH_QUEUE})",
    )
    images.add_argument(
        "--tf-threads",
        type=_tf_threads,
        metavar="INTRA[,INTER]",
        help="TensorFlow's intra-op and inter-op threads in each worker (default: the "
        "cores divided by --workers, at least 1, and 1 inter-op thread)",
    )


# --------------------------------------------------------------------------- drift


def _drift_options(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """ServeConfig's drift options: ``monitoring:`` of --monitoring-config (a model
    repository or its trainchain.yaml; the registry does not keep it), else the defaults,
    with --drift-window, --drift-min-window and --drift-alpha on top; None with --no-drift.
    The window the workers share is a database in the server's run folder."""
    from trainchain.core.config import Monitoring, apply_flags, load_config

    if args.no_drift:  # with --retrain-url: ServeConfig says they do not go together
        return {"monitoring": None, "retrain": _retrain(args)}
    if args.monitoring_config:
        base = load_config(args.monitoring_config).model.monitoring
        keeps = f"monitoring: of {args.monitoring_config}"
    else:
        base = Monitoring()  # type: ignore[call-arg]
        keeps = "the defaults of monitoring:"
    min_window, min_flag = args.drift_min_window, "--drift-min-window"
    if args.drift_window is not None and min_window is None:
        # a smaller window alone is tested from at most that many inputs
        min_window, min_flag = min(base.min_window, args.drift_window), "--drift-window"
    monitoring = apply_flags(
        base,
        [
            ("--drift-window", ("window",), args.drift_window),
            (min_flag, ("min_window",), min_window),
            ("--drift-alpha", ("alpha",), args.drift_alpha),
        ],
        keeps=keeps,
    )
    return {
        "monitoring": monitoring,
        "drift_db": run_dir / "drift.sqlite",
        "drift_interval": args.drift_interval,
        "retrain": _retrain(args),
    }


def _retrain(args: argparse.Namespace) -> Any:
    """--retrain-url's RetrainConfig (None without it): the token of --retrain-token-file
    (else $TRAINCHAIN_ALERT_TOKEN), the cooldown as `hooks serve --retrain-cooldown` reads it."""
    from trainchain.cli.common import ALERT_TOKEN_ENV, alert_token
    from trainchain.core.alerts import parse_duration
    from trainchain.serving.config import RetrainConfig

    if args.retrain_url is None:
        if args.retrain_token_file is not None:
            raise ConfigError(
                "--retrain-token-file without --retrain-url",
                hint="give --retrain-url (hooks serve's /alerts) too, or leave both out",
            )
        return None
    token = alert_token(args.retrain_token_file)
    if token is None:
        raise ConfigError(
            f"--retrain-url needs hooks serve's alert token: --retrain-token-file FILE or "
            f"{ALERT_TOKEN_ENV}",
            hint="the same token as `trainchain hooks serve --alert-token-file`",
        )
    return RetrainConfig(args.retrain_url, token, parse_duration(args.retrain_cooldown))


def _drift_line(config: Any) -> str:
    m = config.monitoring
    if m is None:
        return "drift:     off (--no-drift)"
    line = (
        f"drift:     window {m.window} inputs (tested from {m.min_window}), alpha {m.alpha:g} "
        f"({m.correction}), at most every {config.drift_interval:g} s; GET /drift"
    )
    if config.retrain is not None:
        line += (
            f"\nretrain:   asked of {config.retrain.url} after {m.persist_windows} drifted "
            f"tests in a row, at most every {config.retrain.cooldown:g} s per model"
        )
    return line


def _drift_arguments(sp: argparse.ArgumentParser) -> None:
    drift = sp.add_argument_group(
        "drift", "the champion's inputs tested against its training data's reference"
    )
    drift.add_argument(
        "--monitoring-config",
        metavar="REPO_OR_YAML",
        help="a model repository (or its trainchain.yaml) whose monitoring: section to use "
        "(default: the defaults: window 200, min_window 50, alpha 0.01, holm)",
    )
    drift.add_argument("--drift-window", type=int, metavar="N", help="inputs kept and tested")
    drift.add_argument(
        "--drift-min-window", type=int, metavar="N", help="inputs needed before a first test"
    )
    drift.add_argument(
        "--drift-alpha", type=float, metavar="P", help="false-alarm rate of one test (0..1)"
    )
    drift.add_argument(
        "--drift-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="test the window at most this often per worker, on GET /drift and /metrics "
        "scrapes (default: 10)",
    )
    drift.add_argument(
        "--no-drift", action="store_true", help="do not monitor the inputs for drift"
    )
    drift.add_argument(
        "--retrain-url",
        metavar="URL",
        help="ask `trainchain hooks serve` for a retrain without Prometheus: POST a drift "
        "alert (Alertmanager's webhook JSON) to its /alerts, e.g. "
        "http://127.0.0.1:8088/alerts, once monitoring.persist_windows drift tests in a row "
        "said drifted (the window is then tested every --drift-interval, scraped or not)",
    )
    drift.add_argument(
        "--retrain-token-file",
        metavar="FILE",
        help="the bearer token for --retrain-url, the first line of FILE (hooks serve's "
        "--alert-token-file; default: $TRAINCHAIN_ALERT_TOKEN)",
    )
    drift.add_argument(
        "--retrain-cooldown",
        default="6h",
        metavar="DURATION",
        help="ask at most once per DURATION per model (30m, 6h, 1d; default: 6h); hooks "
        "serve's own pending and cooldown rules apply too",
    )


def register(
    add: Callable[[str, Any, str], argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    sp = add(
        "serve",
        cmd_serve,
        "serve the registry's champion over HTTP: /classify (EEG), /predict (images), "
        "/feedback, /health, /model, /metrics, /drift, /openapi.json",
    )
    sp.add_argument(
        "--model",
        metavar="NAME",
        help=f"the registered model to serve (default: ${MODEL_ENV})",
    )
    sp.add_argument(
        "--wait-for-model",
        action="store_true",
        help="start even when the model is not registered yet: /health answers 503 until "
        "it has a champion, which is then loaded (default: a name the registry does not "
        "hold is an error, exit 7)",
    )
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    sp.add_argument("--port", type=_port, default=5005, help="port (default: 5005)")
    sp.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="worker processes, each with its own copy of the model (default: 1)",
    )
    sp.add_argument(
        "--reload-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how often to check the registry's aliases; a moved alias is loaded and swapped "
        "in without failing a request (default: 5)",
    )
    sp.add_argument(
        "--canary-share",
        type=float,
        default=0.0,
        metavar="F",
        help="share of requests (0..1) the challenger answers (default: 0)",
    )
    sp.add_argument(
        "--shadow",
        action="store_true",
        help="also send every request to the challenger, log and count whether it agrees; "
        "the champion always answers",
    )
    sp.add_argument(
        "--max-body",
        default="16MiB",
        metavar="SIZE",
        help="largest request body, e.g. 16MiB, 512K (K, M, G are powers of 1024; "
        "default: 16MiB); larger ones get 413",
    )
    sp.add_argument(
        "--capture",
        metavar="DIR",
        help="store a sampled share of the requests (inputs, predictions) in DIR, for true "
        "labels by POST /feedback and `trainchain data capture DIR` (default: none)",
    )
    sp.add_argument(
        "--capture-rate",
        type=float,
        metavar="F",
        help="share of requests (0..1] --capture stores (default: 0.1, one in ten)",
    )
    sp.add_argument(
        "--capture-max",
        default="500MiB",
        metavar="SIZE",
        help="size cap of the --capture folder; the oldest captures are deleted beyond it "
        "(default: 500MiB)",
    )
    _batch_arguments(sp)
    _drift_arguments(sp)
