"""Atomic, durable file writes, the one place a file is written: a regular file (symlinks
followed) gets a fsynced temporary file renamed over it (new: 0600; a replaced one keeps its
mode); a device or FIFO is written in place. Errors name the caller's path."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import tempfile
from collections.abc import Awaitable, Callable
from contextlib import suppress
from pathlib import Path
from typing import Protocol, TypeVar, Union

__all__ = ["PathArg", "Sink", "write_bytes", "write_bytes_async", "write_stream"]

#: What a save accepts as a path.
PathArg = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

T = TypeVar("T")

#: Bytes of the name kept in the temp name (79 in all: under NAME_MAX, 143 on eCryptfs).
_NAME_IN_TEMP = 64
_WRITE = os.O_WRONLY | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
#: What fsync of a folder raises where the file system cannot sync one.
_UNFSYNCABLE = {errno.EINVAL, errno.EBADF, errno.ENOTSUP, errno.EOPNOTSUPP}


class Sink(Protocol):
    """Where :func:`write_stream`'s *fill* writes the bytes, chunk by chunk."""

    async def write(self, chunk: bytes) -> None:
        """Append *chunk*."""

    async def reset(self) -> None:
        """Forget everything written so far (a retry starts a fresh body)."""


def _oserror(code: int, shown: str, detail: str = "") -> OSError:
    """The OSError subclass for *code* (``FileNotFoundError``...) naming *shown*."""
    text = os.strerror(code)
    return OSError(code, f"{text} ({detail})" if detail else text, shown)


class _Target:
    """Where a save goes, decided before anything is fetched."""

    def __init__(self, shown: str, st: os.stat_result | None) -> None:
        self.shown = shown  # the caller's path: for messages and the return value
        self.st = st  # what is there now; None for a new file
        self.mode = st.st_mode if st else 0
        self.real = os.path.realpath(shown)  # where a rename must land: symlinks followed
        same = False  # a /proc link to a deleted file is not: it has no folder to rename into
        with suppress(OSError):
            same = st is not None and os.path.samestat(os.lstat(self.real), st)
        self.in_place = st is not None and not (stat.S_ISREG(self.mode) and same)
        if self.in_place:  # opened by the path given: the kernel follows /proc's links
            self.real = shown

    def error(self, exc: OSError, detail: str = "") -> OSError:
        if exc.errno is None:
            return exc  # no errno to restate: its own words are all there is
        if not detail and self.real not in (self.shown, os.path.abspath(self.shown)):
            detail = f"writing to {self.real!r}, where the symlink points"
        return _oserror(exc.errno, self.shown, detail)


def _resolve(path: PathArg) -> _Target:
    """Where *path*'s bytes must go; a clear OSError if nowhere."""
    shown = os.fsdecode(os.fspath(path))
    if not shown:
        raise _oserror(errno.ENOENT, shown, "the path is empty")
    if shown.endswith(os.sep) or (os.altsep and shown.endswith(os.altsep)):
        raise _oserror(errno.EISDIR, shown, "a path ending in a separator names a folder")
    try:
        target = _Target(shown, os.stat(shown))
    except FileNotFoundError:
        target = _Target(shown, None)
        folder = os.path.dirname(target.real)
        if not os.path.isdir(folder):
            hint = "; '~' is not expanded" if shown.startswith("~") else ""
            via = f" (the symlink points to {target.real!r})" if os.path.islink(shown) else ""
            detail = f"the folder {folder!r} does not exist{hint}{via}"
            raise _oserror(errno.ENOENT, shown, detail) from None
    except UnicodeEncodeError:  # a lone surrogate that no byte sequence stands for
        raise _oserror(errno.EILSEQ, shown, "the name cannot be encoded") from None
    except OSError as exc:
        why = {errno.ELOOP: "a symlink loop?", errno.ENOTDIR: "a part of it is not a folder"}
        raise _oserror(exc.errno or errno.EIO, shown, why.get(exc.errno or 0, "")) from None
    if stat.S_ISDIR(target.mode):
        raise _oserror(errno.EISDIR, shown, "give a file name inside it")
    if stat.S_ISSOCK(target.mode):
        raise _oserror(errno.ENXIO, shown, "it is a socket: a PNG cannot be written there")
    return target


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _replace(target: _Target, data: bytes) -> None:
    """Temp file, fsync, rename over the target, fsync the folder; no temp file left behind."""
    folder = os.path.dirname(target.real)
    try:
        fd, temp = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(target.real), suffix=".part")
    except OSError as exc:
        raise target.error(exc, f"cannot create a file in the folder {folder!r}") from None
    try:
        try:
            if target.st is not None:
                with suppress(OSError, AttributeError):  # only root gives files away; Windows
                    os.chown(temp, target.st.st_uid, target.st.st_gid)
                os.chmod(temp, stat.S_IMODE(target.st.st_mode) & 0o777)  # no setuid, sticky
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, target.real)
    except BaseException as exc:
        with suppress(OSError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise target.error(exc) from None
        raise
    try:  # makes the rename durable
        folder_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(folder_fd)
        finally:
            os.close(folder_fd)
    except OSError as exc:
        if exc.errno not in _UNFSYNCABLE:
            raise target.error(exc, "saved, but its folder could not be synced") from None


def _temp_prefix(real: str) -> str:
    """``.<name>.``, the name cut to ``_NAME_IN_TEMP`` bytes without splitting a character."""
    name, size = os.path.basename(real), 0
    for end, char in enumerate(name):
        size += len(os.fsencode(char))
        if size > _NAME_IN_TEMP:
            return f".{name[:end]}."
    return f".{name}."


def _write(target: _Target, data: bytes, fd: int = -1) -> None:
    """Replace *target*, or write it in place (through *fd* if open: this closes it)."""
    if not target.in_place:
        return _replace(target, data)
    try:
        if fd < 0:  # a file written in place is truncated: nothing old is left after the PNG
            fd = os.open(target.real, _WRITE | (os.O_TRUNC if stat.S_ISREG(target.mode) else 0))
        try:
            _write_all(fd, data)
            if stat.S_ISREG(target.mode) or stat.S_ISBLK(target.mode):
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise target.error(exc) from None


def write_bytes(path: PathArg, data: bytes) -> Path:
    """Write *data* to *path* (see the module docstring); return ``Path(path)``. Blocking."""
    target = _resolve(path)
    _write(target, data)
    return Path(target.shown)


async def write_stream(path: PathArg, fill: Callable[[Sink], Awaitable[None]]) -> Path:
    """Check *path*, let *fill* put the bytes into a :class:`Sink`, then write them.

    A bad path fails before *fill* runs. The body is held in memory (the caller bounds its
    size) and written once *fill* returns, so a retry never sends two bodies down a pipe and a
    failure or cancellation leaves *path* as it was. A device or FIFO is opened before *fill*
    runs and closed untouched if it fails: a FIFO's reader then sees end of file.
    """
    target = await _in_thread(_resolve, path)
    fd = await _open(target) if target.in_place and not stat.S_ISREG(target.mode) else -1
    chunks = _Chunks()
    try:
        await fill(chunks)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    await _in_thread(_write, target, b"".join(chunks), fd)  # the thread closes fd
    return Path(target.shown)


async def write_bytes_async(path: PathArg, data: bytes) -> Path:
    """:func:`write_bytes` without blocking the event loop."""
    return await write_stream(path, lambda sink: sink.write(data))


class _Chunks(list[bytes]):
    """A :class:`Sink` in memory."""

    async def write(self, chunk: bytes) -> None:
        self.append(chunk)

    async def reset(self) -> None:
        self.clear()


async def _in_thread(func: Callable[..., T], *args: object) -> T:
    """*func* in the default executor. A thread cannot be stopped: if cancelled, let it finish
    (and remove its temp file) before raising ``CancelledError``."""
    future = asyncio.get_running_loop().run_in_executor(None, func, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with suppress(Exception):
            await asyncio.shield(future)
        raise


async def _open(target: _Target) -> int:
    """Open a device or FIFO for writing. A FIFO without a reader is waited for in the
    default executor; if cancelled, opening its read end for a moment ends that wait."""
    try:
        fd = os.open(target.real, _WRITE | os.O_NONBLOCK)
        os.set_blocking(fd, True)
        return fd
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # ENXIO: a FIFO with no reader yet
            raise target.error(exc) from None
    opening = asyncio.get_running_loop().run_in_executor(None, os.open, target.real, _WRITE)
    try:
        return await asyncio.shield(opening)
    except OSError as exc:
        raise target.error(exc) from None
    except asyncio.CancelledError:
        reader = os.open(target.real, os.O_RDONLY | os.O_NONBLOCK)
        try:
            with suppress(OSError):
                os.close(await asyncio.shield(opening))
        finally:
            os.close(reader)
        raise
