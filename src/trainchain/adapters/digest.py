"""A content digest of a data folder, for lineage (stdlib only)."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def data_digest(path: Path) -> str:
    """SHA-256 over every file's relative path and content, in sorted order.

    Hidden files and folders are left out. A missing folder has no digest.
    """
    root = Path(path)
    if not root.exists():
        return "missing"
    h = hashlib.sha256()
    files = (
        [root]
        if root.is_file()
        else sorted(
            p
            for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
    )
    for file in files:
        rel = file.name if file == root else file.relative_to(root).as_posix()
        h.update(rel.encode("utf-8") + b"\0")
        with file.open("rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        h.update(b"\0")
    return "sha256:" + h.hexdigest()
