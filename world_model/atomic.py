"""Atomic file writes: a temporary file in the same folder, fsync, then rename over the target.

Temporary files are named ``.<target>.<pid>-<random>.kiwi.tmp``, so one left behind by a killed
run is recognisable as ours, and as abandoned once its process is gone:
``remove_stale_temp_files`` deletes exactly those at the next start in that folder.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_SUFFIX = ".kiwi.tmp"
_TEMP_NAME = re.compile(r"^\..+\.(\d+)-[0-9a-f]{8}" + re.escape(TEMP_SUFFIX) + "$")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; when the block ends without an error the file
    written there replaces ``path`` in one rename, otherwise it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    return True


def stale_temp_files(folder: Path) -> list[Path]:
    """Our temporary files in ``folder`` (not its subfolders) whose writer has exited."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = []
    for p in folder.iterdir():
        m = _TEMP_NAME.match(p.name)
        if m and p.is_file() and not p.is_symlink() and not _process_alive(int(m.group(1))):
            stale.append(p)
    return sorted(stale)


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Deletes what ``stale_temp_files`` finds (only names matching our own pattern, never other
    files) and returns them."""
    removed = []
    for p in stale_temp_files(folder):
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed
