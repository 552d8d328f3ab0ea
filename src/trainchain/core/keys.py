"""Every ``trainchain.*`` key, spelled once: MLflow tags and Docker container labels.

Tags and labels are read back by other processes (the watchdog, `promote`, the serving
app, a later chain), so each key is a constant here and a literal nowhere else. A key
that is both a tag and a label (``CHAIN``, ``TRIAL``) names the same thing in both.
"""

from __future__ import annotations

PREFIX = "trainchain."

# --- MLflow run tags: a run's lineage (``chain.context.Lineage.tags``), copied to the version
REPOSITORY = "trainchain.repository"
COMMIT = "trainchain.commit"
DATA_DIGEST = "trainchain.data_digest"
IMAGE = "trainchain.image"
EXECUTOR = "trainchain.executor"
FAMILY = "trainchain.family"
JENKINS_BUILD_URL = "trainchain.jenkins_build_url"
REASON = "trainchain.reason"  # why the chain ran (`trainchain run --reason`), when it was said
CONFIG_DIGEST = "trainchain.config_digest"  # sha256 of the resolved trainchain.yaml

# --- MLflow run tags: a trial's run (CHAIN and TRIAL are container labels too)
CHAIN = "trainchain.chain"
TRIAL = "trainchain.trial"
PARAMS = "trainchain.params"  # the trial's hyperparameters, JSON
# "<run id>:<artifact path>" of the held-out arrays a trial was scored on
HELDOUT = "trainchain.heldout"
VALIDATION = "trainchain.validation"  # the validation plan, JSON
ATTEMPTS = "trainchain.attempts"
# a trial: ok, pruned, stopped, failed, refused, interrupted; a chain: its RunState
STATUS = "trainchain.status"
ERROR = "trainchain.error"
PRUNED_STEP = "trainchain.pruned_step"
PURPOSE = "trainchain.purpose"  # "confirm" on a confirmation run
CONFIRMS = "trainchain.confirms"  # the trial number a confirmation run confirms
CONFIRMED = "trainchain.confirmed"

# --- MLflow run tags: the chain's parent run
VERDICT = "trainchain.verdict"
STOP_REASON = "trainchain.stop_reason"

# --- MLflow registry tags
PROMOTION = "trainchain.promotion"  # a model version: why it was or was not promoted
CHAMPION_HISTORY = "trainchain.champion_history"  # a registered model: earlier champions

# --- Docker container labels (with CHAIN and TRIAL above)
MANAGED = "trainchain.managed"
MODEL = "trainchain.model"
RUN = "trainchain.run"  # the MLflow run id
ATTEMPT = "trainchain.attempt"
RESTARTS = "trainchain.restarts"
ATTEMPT_DIR = "trainchain.attempt_dir"  # host folder for this attempt's log and records
LOG_NAME = "trainchain.log_name"  # the log file's name inside the attempt folder
REPORT_FILE = "trainchain.report_file"  # host path of the report (the heartbeat)
MAX_RESTARTS = "trainchain.max_restarts"
HEARTBEAT_LIMIT = "trainchain.heartbeat_limit"
BACKOFF = "trainchain.backoff"  # "<first delay>/<longest delay>" in seconds
