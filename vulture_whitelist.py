"""Names vulture takes for dead code that a framework or a file format uses.

vulture (scripts/test.sh, configured in pyproject.toml) reads this file as code that uses
each name below. Every entry says who calls or reads it. Flask's routes and hooks
(``@app.*``) and pydantic's validators are left out by decorator, in pyproject.toml.
"""

from vulture.whitelist_utils import Whitelist

_ = Whitelist()

# pydantic reads a model's configuration from the class attribute `model_config`
# (config.py).
_.model_config
# Enum member looked up by value, Direction("minimize"), when a trainchain.yaml says so.
_.MINIMIZE
# Keras calls Callback.on_epoch_end after every epoch and reads model.stop_training after
# it (families/cnn.py, Checkpoints.callback).
_.on_epoch_end
_.stop_training
# Flask's JSON provider reads app.json.sort_keys (serving/app.py keeps key order).
_.sort_keys
# Tests reach the Service behind an app made by create_app (tests/test_serving.py,
# tests/test_serving_fuzz.py); the public accessor spares them app.extensions' key.
_.service_of
# Written to the run's status file (asdict) and read back by RunStatus.from_dict
# (hooks.py); `trainchain hooks status RUN_ID` prints it: when the run was queued.
_.queued_at
# Test-only views of state the code keeps: whether a delivery id was seen
# (tests/test_trigger_queue.py), waiting for a model holder's next load
# (tests/test_serving.py), holding a repository busy (tests/test_hooks.py).
_.received
_.wait_for
_.try_lock
# monitoring.capture of trainchain.yaml (core/config.py): documented in the README, not read
# yet (`trainchain serve --capture DIR` turns capture on).
_.capture
# argparse reads a parser's formatter_class when it prints --help (cli/help.py sets it on
# every command, with the epilog of exit statuses and examples).
_.formatter_class
