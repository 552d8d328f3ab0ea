"""trainchain: a git push of model code becomes a trained, tuned, registered, served model.

The tree is layered, and `lint-imports` (pyproject's contracts) holds every import to it:
``cli`` > ``triggers`` | ``serving`` > ``chain`` > ``supervise`` > ``executors`` >
``adapters`` | ``families`` > ``core`` > ``contract``. A training script's API is
``from trainchain import task`` (:mod:`trainchain.contract.task`).
"""

from trainchain.contract import task

__version__ = "0.1.0"
__all__ = ["__version__", "task"]
