"""Java properties files: how one Jenkins job hands values to the next.

The Parameterized Trigger plugin reads ``KEY=value`` lines with
``java.util.Properties.load`` rules, so backslashes, line breaks, leading blanks
and characters outside Latin-1 are escaped here; the file is replaced atomically
so a downstream trigger never reads half of it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from trainchain.core.errors import ConfigError

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _escape(value: str) -> str:
    out = []
    for i, ch in enumerate(value):
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == " " and i == 0:
            out.append("\\ ")  # a leading blank would be dropped by the reader
        elif ord(ch) > 0x7E or ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else _surrogates(ch))
        else:
            out.append(ch)
    return "".join(out)


def _surrogates(ch: str) -> str:
    units = ch.encode("utf-16-be")
    return "".join(
        f"\\u{int.from_bytes(units[i : i + 2], 'big'):04x}" for i in range(0, len(units), 2)
    )


def render(values: Mapping[str, str]) -> str:
    lines = []
    for key, value in values.items():
        if not _KEY.match(key):
            raise ConfigError(
                f"{key!r} is not a parameter name: expected letters, digits and underscores"
            )
        lines.append(f"{key}={_escape(str(value))}")
    return "\n".join(lines) + "\n"


def write(path: str | Path, values: Mapping[str, str]) -> Path:
    """Write (replace) ``path`` with ``values``, for a downstream job's parameters."""
    from trainchain.contract.task import atomic_write_bytes

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, render(values).encode("ascii"))
    return target


def _unescape(raw: str) -> str:
    out, i = [], 0
    simple = {"n": "\n", "r": "\r", "t": "\t", "f": "\f"}
    while i < len(raw):
        ch = raw[i]
        if ch != "\\" or i + 1 == len(raw):
            out.append(ch)
            i += 1
            continue
        nxt = raw[i + 1]
        if nxt == "u":
            out.append(chr(int(raw[i + 2 : i + 6], 16)))
            i += 6
        else:
            out.append(simple.get(nxt, nxt))
            i += 2
    # surrogate pairs written for characters outside the BMP come back as one character
    return "".join(out).encode("utf-16-be", "surrogatepass").decode("utf-16-be")


def read(path: str | Path) -> dict[str, str]:
    """The values of a file :func:`write` wrote (Jenkins reads them with Java's loader)."""
    out = {}
    for line in Path(path).read_text(encoding="ascii").splitlines():
        if not line or line[0] in "#!":
            continue
        key, _, raw = line.partition("=")
        out[key] = _unescape(raw)
    return out
