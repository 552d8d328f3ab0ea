"""trainchain: a git push of model code becomes a trained, tuned, registered, served model."""

__version__ = "0.1.0"
