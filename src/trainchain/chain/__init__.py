"""The use cases: prepare a run, train, tune, register and promote, give up, send reports."""
