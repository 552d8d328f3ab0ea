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
# http.server's BaseHTTPRequestHandler calls do_GET/do_POST and log_message, and reads
# server_version and close_connection; ThreadingHTTPServer reads daemon_threads
# (webhook.py).
_.do_GET
_.do_POST
_.log_message
_.server_version
_.close_connection
_.daemon_threads
