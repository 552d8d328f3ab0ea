"""Sizes in bytes, read from and written for people: the one parser for every ``--max-body``.

Units are binary: K, M and G (alone, or as KB, KiB, MB, MiB, GB, GiB, any case) are
powers of 1024, so ``5K``, ``5KB`` and ``5KiB`` are all 5120 bytes.
"""

from __future__ import annotations

import re

from trainchain.core.errors import ConfigError

_FACTORS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([KMG])i?B?|(B))?\s*$", re.IGNORECASE)
_HUMAN = (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


def parse_size(text: str, option: str = "--max-body", at_least: int = 0) -> int:
    """``"16MiB"``, ``"512K"``, ``"1048576"``: a number of bytes, at least ``at_least``.
    ``option`` names the flag in an error ("" where argparse names it already)."""
    match = _SIZE.match(text)
    what = f"{option} {text!r}" if option else repr(text)
    if match is None:
        raise ConfigError(
            f"{what} is not a size: expected a number of bytes with an optional "
            "unit K, M or G (powers of 1024; KB, KiB, MB, MiB, GB, GiB alike), "
            "for example 16MiB or 512K"
        )
    unit = (match.group(2) or match.group(3) or "").upper()
    size = int(float(match.group(1)) * _FACTORS[unit])
    if size < at_least:
        raise ConfigError(f"{what} is {human_size(size)}: expected at least {human_size(at_least)}")
    return size


def human_size(size: int) -> str:
    """A byte count as the largest binary unit it is a whole multiple of (16 MiB)."""
    for unit, factor in _HUMAN:
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} byte" if size == 1 else f"{size} bytes"


def rounded_size(size: float) -> str:
    """A byte count to three significant digits in the largest binary unit it reaches
    (384 KiB, 64.5 KiB): for sizes that are estimates or need not be exact."""
    for unit, factor in _HUMAN:
        if size >= factor:
            return f"{size / factor:.3g} {unit}"
    return f"{size:.0f} bytes"
