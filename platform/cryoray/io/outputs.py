"""Where commands write: output folders checked before any work, files that appear whole or not at all, and a cleanup
that removes, when a command fails, what it created and nothing else.

A user's file is never overwritten by accident (an output folder holding a finished run needs ``--overwrite``) and
never left half-written (every file is written under a temporary name in its folder, then renamed).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

from cryoray.errors import CryorayInputError

RESULT_FILE = "result.json"  # what a finished job, predict, apply or denoise run leaves in its output folder


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Write through a temporary file in the same folder, then rename: the file is complete or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")  # created by ``write``: usual permissions
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_output_dir(
    folder: str | Path, flag: str, overwrite: bool, own_files: Collection[str] = (), overwrite_flag: bool = True
) -> Path:
    """The resolved output folder, or a ``CryorayInputError`` before any work: a path that exists as a file (or under
    one), or, without ``overwrite``, a folder holding a finished run's ``result.json`` or one of ``own_files`` (the
    command's outputs). ``overwrite_flag``: whether the command offers ``--overwrite`` (the message says so)."""
    folder = Path(folder).expanduser().resolve()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        got = "an existing file" if existing == folder else f"{existing} is a file"
        raise CryorayInputError(folder, flag, "a folder (new or existing)", got)
    if not overwrite and folder.is_dir():
        taken = [name for name in (RESULT_FILE, *own_files) if (folder / name).exists()]
        if taken:
            hint = " (choose another folder, or pass --overwrite)" if overwrite_flag else " (choose another folder)"
            raise CryorayInputError(folder, flag, f"a folder without another run's outputs{hint}", f"{taken[0]} exists")
    return folder


@contextlib.contextmanager
def removed_on_failure(folder: Path, names: Collection[str] | None = None) -> Iterator[None]:
    """Run the body; if it raises (an interrupt too), remove what it wrote in ``folder``: the entries that are new or
    were replaced (only ``names`` and their temporaries when given), then ``folder`` and the parents it had to create,
    when left empty. An entry the body did not write is never touched."""
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    before = _identities(folder)
    try:
        yield
    except BaseException:
        for name, identity in _identities(folder).items():
            if before.get(name) != identity and (names is None or _made_for(name, names)):
                entry = folder / name
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        for path in created:
            with contextlib.suppress(OSError):  # not empty: something else wrote there meanwhile
                path.rmdir()
        raise


def _identities(folder: Path) -> dict[str, tuple[int, int]]:
    """Each entry's (inode, modification time): a file written again, even under its old name, gets a new one."""
    if not folder.is_dir():
        return {}
    return {
        entry.name: (entry.stat(follow_symlinks=False).st_ino, entry.stat(follow_symlinks=False).st_mtime_ns)
        for entry in os.scandir(folder)
    }


def _made_for(entry: str, names: Collection[str]) -> bool:
    """``entry`` is one of ``names`` or an ``atomic_write`` temporary of one."""
    return entry in names or (entry.endswith(".tmp") and any(entry.startswith(f".{name}.") for name in names))
