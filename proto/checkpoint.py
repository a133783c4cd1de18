"""Durable files: the one way every service writes a checkpoint or a small state file so that a crash at any
moment leaves either the old version or the new one, never a torn one.

Two patterns, both "write elsewhere, fsync, rename into place, fsync the directory" (a rename is atomic on
POSIX file systems, and only the directory's fsync makes the rename itself survive a power loss):

- :func:`write_atomic`: one file (a JSON state, a keys file) replaced in place;
- :func:`commit_dir`: a directory of files (a checkpoint, a policy version) written under a temporary name
  in the same parent, then published whole under its final name.
"""

import os
import uuid
from pathlib import Path


def fsync(path: Path) -> None:
    """Flush a file or directory to disk (a directory's fsync makes a rename in it durable).

    Raises ``OSError`` (e.g. ``FileNotFoundError``) when ``path`` cannot be opened or flushed.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` (``str`` is written as UTF-8) atomically and durably.

    The data goes to a temporary file beside ``path`` (created with permissions ``mode``), which is fsync'ed,
    renamed over ``path`` and followed by an fsync of the directory. Raises ``OSError`` on a write failure;
    ``path`` then still holds its previous content.
    """
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync(path.parent)


def commit_dir(tmp: Path, final: Path) -> None:
    """Publish the fully written directory ``tmp`` as ``final`` (same parent directory): fsync each file in
    it and the directory itself, rename it, fsync the parent.

    Raises ``OSError`` when ``final`` exists as a non-empty directory or on a write failure (``tmp`` is then
    left for the caller to remove).
    """
    for f in tmp.iterdir():
        fsync(f)
    fsync(tmp)
    os.rename(tmp, final)
    fsync(final.parent)
