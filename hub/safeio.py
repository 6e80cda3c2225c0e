"""Reading files that users wrote, from a service that can read more than
they can.

A job's folder is written by the user's own code and read by the job
service, which also reads the site's secrets. A job that replaces its
``log.txt`` (or ``work/``, or any folder on the way) with a symbolic link to
a file in ``secrets/`` must not make the service read that file for it. So
paths below a trusted root are opened one component at a time, relative to
the folder opened before, with ``O_NOFOLLOW``: a link anywhere below the
root fails as if the file did not exist. Only regular files are read (a
FIFO would block the service; ``O_NONBLOCK`` guards the open itself).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

# Folders on the way are opened only to be passed (O_PATH: the service may
# pass the spool's folders without reading them); a folder to list is opened
# for reading at the end.
_PASS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_DIR = _PASS | os.O_NOFOLLOW
_LIST = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Unsafe(OSError):
    """A path that leaves its root, passes through a link, or is not a regular file."""


def _parts(relative: str | PurePosixPath) -> list[str]:
    parts = [p for p in PurePosixPath(relative).parts if p not in ("", ".")]
    if not parts or any(p in ("..", "/") or "/" in p for p in parts):
        raise Unsafe(f"not a plain relative path: {relative!s}")
    return parts


def open_dir(root: Path, relative: str | PurePosixPath = ".", *, listing: bool = False) -> int:
    """A file descriptor of the folder ``root/relative`` (no links below
    root), to open files in or, with ``listing``, to list."""
    fd = os.open(root, _PASS)
    parts = [p for p in PurePosixPath(relative).parts if p not in ("", ".")]
    if any(p in ("..", "/") for p in parts):
        os.close(fd)
        raise Unsafe(f"not a plain relative path: {relative!s}")
    try:
        for part in parts:
            nxt = os.open(part, _DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
        if listing:
            nxt = os.open(".", _LIST, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except OSError:
        os.close(fd)
        raise
    return fd


def open_file(root: Path, relative: str | PurePosixPath) -> int:
    """A file descriptor of the regular file ``root/relative``; OSError
    (FileNotFoundError, :class:`Unsafe`, ...) otherwise."""
    parts = _parts(relative)
    parent = open_dir(root, PurePosixPath(*parts[:-1]) if len(parts) > 1 else ".")
    try:
        fd = os.open(parts[-1], _FILE, dir_fd=parent)
    finally:
        os.close(parent)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise Unsafe(f"not a regular file: {relative!s}")
    os.set_blocking(fd, True)
    return fd


def read_file(root: Path, relative: str | PurePosixPath, offset: int = 0,
              limit: int | None = None) -> bytes | None:
    """The bytes of ``root/relative`` from ``offset`` (at most ``limit``), or
    None when it is missing or unsafe."""
    try:
        fd = open_file(root, relative)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        f.seek(offset)
        return f.read() if limit is None else f.read(limit)


def walk_files(root: Path, relative: str | PurePosixPath = ".") -> list[tuple[str, int]]:
    """(path relative to ``root/relative``, size) of every regular file below
    it, sorted; links (to files or folders) are left out, never followed."""
    try:
        top = open_dir(root, relative, listing=True)
    except OSError:
        return []
    out: list[tuple[str, int]] = []

    def walk(fd: int, prefix: str) -> None:
        try:
            names = sorted(os.listdir(fd))
        except OSError:
            return
        for name in names:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.append((prefix + name, st.st_size))
            elif stat.S_ISDIR(st.st_mode):
                try:
                    sub = os.open(name, _LIST, dir_fd=fd)
                except OSError:
                    continue
                try:
                    walk(sub, prefix + name + "/")
                finally:
                    os.close(sub)

    try:
        walk(top, "")
    finally:
        os.close(top)
    return out


def chmod_file(path: str | os.PathLike, mode: int) -> bool:
    """``chmod`` of a regular file that a user may have replaced by a link:
    the file itself or nothing (False)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        os.fchmod(fd, mode)
        return True
    finally:
        os.close(fd)


def read_secret(path: Path, setting: str, what: str) -> str:
    """The first line of ``path`` (named by ``setting``; it holds ``what``):
    a regular file, not a link, that no other account may read. A
    ConfigError says what is wrong and what to do."""
    from .errors import ConfigError

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError(f"{setting} {path} cannot be read ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{setting} {path} is not a file")
        if st.st_mode & 0o007:
            raise ConfigError(
                f"{path} ({setting}) is open to every account "
                f"(mode {st.st_mode & 0o777:o}): run 'chmod o-rwx {path}'")
        lines = f.read(4096).decode("utf-8", errors="strict").splitlines()
    if not lines or not lines[0].strip():
        raise ConfigError(f"{path} ({setting}) is empty: write {what} on its first line")
    return lines[0].strip()
