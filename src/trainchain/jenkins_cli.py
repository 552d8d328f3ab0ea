"""`trainchain jenkins ...`: being built (issue 5)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from trainchain.errors import TrainchainError


def _todo(args: argparse.Namespace) -> int:
    raise TrainchainError("trainchain jenkins is being built")


def register(
    add: Callable[[str, Any, str], argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    add("jenkins", _todo, "jenkins (being built)")
