"""`trainchain serve`: being built (issue 6)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from trainchain.errors import TrainchainError


def _todo(args: argparse.Namespace) -> int:
    raise TrainchainError("trainchain serve is being built")


def register(
    add: Callable[[str, Any, str], argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    add("serve", _todo, "serve the registry's champion over HTTP (being built)")
