"""Atomic, durable file writes: the one place wachat-async writes a file.

``QRImage.save``, ``WachatClient.save_qr_image`` and the CLI's ``-o`` all come here, so every
kind of path is treated alike:

* **A missing path or an existing regular file.** The bytes go to a temporary file in the same
  folder, which is fsynced, renamed over the path, and then the folder is fsynced: a reader sees
  the old file or the whole new one, never a part, even after a crash. A new file is created
  mode 0600 (a QR is a live login for the instance); a file that is replaced keeps its
  permission bits (and, where the OS allows, its owner and group), as ``curl -o`` would. Being
  a new inode, it is not seen through hard links to the old file (as with any atomic save).
* **A symlink** (chains and relative links included) is followed: the file lands atomically at
  the final target and the link stays a link. A dangling link creates its target, if the
  target's folder exists.
* **A character or block device or a FIFO** is written to directly, never replaced:
  ``-o /dev/null`` works as it does for curl. A FIFO with no reader yet is waited for, as
  ``cmd > fifo`` would; the async path waits in a worker thread (the event loop stays free) and
  cancelling it gives up cleanly.
* **A path naming one of this process's open file descriptors** (``/dev/stdout``,
  ``/dev/stderr``, ``/dev/fd/N``, ``/proc/self/fd/N``, or a symlink to one) that is open for
  writing on a regular file (``script > out.log``) is written *through that descriptor*, at its
  current offset (appending if it was opened ``O_APPEND``), then fsynced: neither replaced (a
  new inode would drop what the shell's redirect holds) nor reopened with ``O_TRUNC`` (which
  would erase what was printed before). Whatever ``sys.stdout``/``sys.stderr`` hold in their
  buffers for the same file is flushed first, so it stays before the PNG. The same flush
  happens before writing to a pipe or a terminal that is stdout or stderr. A descriptor open
  only for reading (``/dev/stdin``) names its file like any other path.
* **A directory, a socket, a missing folder, a symlink loop, a trailing ``/``**: a clear
  :class:`OSError`, before anything is fetched.

Errors are plain :class:`OSError` subclasses (``FileNotFoundError``, ``IsADirectoryError``,
``NotADirectoryError``, ``PermissionError``...), never a ``WachatError``: they are about the
caller's disk, not the API. Their ``filename`` is the path the caller gave, and no message ever
names the temporary file. Paths may be ``str``, ``bytes`` or ``os.PathLike``; ``~`` is *not*
expanded (as with :func:`open`; use :meth:`pathlib.Path.expanduser`). The returned
:class:`~pathlib.Path` is the caller's path as given, not the symlink's target.

The synchronous functions block (the write is small, the fsyncs can wait on the disk);
:func:`write_stream` and :func:`write_bytes_async` do every call that can wait on the disk in
a worker thread, and wait for that thread before cleaning up when they are cancelled, so no
thread ever touches a file descriptor that was closed under it.

Never imports the client, the models or the CLI.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import stat
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable
from contextlib import suppress
from pathlib import Path
from typing import Protocol, TypeVar, Union

if sys.platform != "win32":
    import fcntl

__all__ = ["PathArg", "Sink", "write_bytes", "write_bytes_async", "write_stream"]

#: What a save accepts as a path.
PathArg = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

T = TypeVar("T")

_MAX_LINKS = 40  # Linux's limit on symlinks followed in one lookup
#: Bytes of the target's name kept in the temp name ".<name>.<8 random>.part": at most 79
#: bytes in all, far below NAME_MAX (255 bytes; 143 on eCryptfs) whatever the target's name.
_NAME_IN_TEMP = 64
_WRITE_FLAGS = os.O_WRONLY | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
_UNFSYNCABLE = {errno.EINVAL, errno.EBADF, getattr(errno, "ENOTSUP", errno.EINVAL)}
_UNFSYNCABLE.add(getattr(errno, "EOPNOTSUPP", errno.EINVAL))

_WHY = {
    errno.ELOOP: "a symlink loop?",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}

_NEW, _FILE, _FIFO, _CHAR, _BLOCK = "new", "file", "fifo", "char", "block"
_IN_PLACE = "in-place"  # a regular file reached through a link readlink cannot follow
_FD = "fd"  # a regular file this process holds open for writing, named by /dev/fd/N & co.
_SPECIAL = (_FIFO, _CHAR, _BLOCK, _IN_PLACE, _FD)

#: The folders whose entries name this process's own file descriptors, once resolved
#: (``/dev/fd`` is a link to ``/proc/self/fd`` on Linux, a file system of its own on BSD/macOS).
_FD_FOLDER = re.compile(r"/proc/(?:self|thread-self|(?P<pid>[0-9]+))(?:/task/[0-9]+)?/fd\Z")


class Sink(Protocol):
    """Where :func:`write_stream`'s *fill* writes the bytes, chunk by chunk."""

    async def write(self, chunk: bytes) -> None:
        """Append *chunk*."""

    async def reset(self) -> None:
        """Forget everything written so far (a retry starts a fresh body)."""


class _Target:
    """Where a save goes, decided before anything is written."""

    __slots__ = ("fd", "kind", "path", "real", "shown", "stat")

    def __init__(
        self, shown: str, real: str, kind: str, st: os.stat_result | None, fd: int = -1
    ) -> None:
        self.shown = shown  # the caller's path, for messages and the return value
        self.path = Path(shown)
        self.real = real  # where the bytes land: symlinks followed
        self.kind = kind
        self.stat = st  # of what is there: the file being replaced, the device, the FIFO
        self.fd = fd  # _FD: the caller's open file descriptor (never ours to close)

    def error(self, exc: OSError, detail: str = "") -> OSError:
        """*exc* restated for the caller's path: never the temp file's name."""
        if exc.errno is None:
            return exc
        if exc.filename == self.shown and exc.filename2 is None:
            return exc  # already ours
        if not detail and self.real != self.shown:
            detail = f"writing to {self.real!r}, where the symlink points"
        return _oserror(exc.errno, self.shown, detail)


def _oserror(code: int, shown: str, detail: str = "") -> OSError:
    """An OSError of the subclass for *code* (``FileNotFoundError``...) naming *shown*."""
    text = os.strerror(code)
    return OSError(code, f"{text} ({detail})" if detail else text, shown)


def _resolve(path: PathArg) -> _Target:
    """Classify *path* and find where its bytes must go; raise a clear OSError if nowhere."""
    shown = os.fsdecode(os.fspath(path))
    if not shown:
        raise _oserror(errno.ENOENT, shown, "the path is empty")
    if shown.endswith(os.sep) or (os.altsep and shown.endswith(os.altsep)):
        raise _oserror(errno.EISDIR, shown, "a path ending in a separator names a folder")
    try:
        st = os.stat(shown)  # the kernel follows every link, /dev/stdout's included
    except FileNotFoundError:
        return _new_file(shown)
    except UnicodeEncodeError:  # a str with a lone surrogate no byte sequence stands for
        detail = "the name cannot be encoded for the file system"
        raise _oserror(errno.EILSEQ, shown, detail) from None
    except OSError as exc:
        raise _oserror(exc.errno or errno.EIO, shown, _WHY.get(exc.errno or 0, "")) from None
    mode = st.st_mode
    if stat.S_ISREG(mode):
        chain = _chain(shown)
        for link in chain:
            fd = _own_fd(link, st)
            if fd >= 0:
                return _Target(shown, shown, _FD, st, fd)
        real = chain[-1]
        with suppress(OSError):
            if os.path.samestat(os.lstat(real), st):
                return _Target(shown, real, _FILE, st)
        # A link the kernel resolves but readlink cannot (a /proc "magic" link to a deleted
        # file, say): there is no folder to rename into, so write in place.
        return _Target(shown, shown, _IN_PLACE, st)
    if stat.S_ISDIR(mode):
        raise _oserror(errno.EISDIR, shown, "give a file name inside it")
    if stat.S_ISFIFO(mode):
        return _Target(shown, shown, _FIFO, st)
    if stat.S_ISCHR(mode):
        return _Target(shown, shown, _CHAR, st)
    if stat.S_ISBLK(mode):
        return _Target(shown, shown, _BLOCK, st)
    what = "a socket" if stat.S_ISSOCK(mode) else "neither a file nor a device"
    raise _oserror(errno.ENXIO, shown, f"it is {what}: a PNG cannot be written there")


def _follow(shown: str) -> str:
    """*shown* with its symlinks followed to the end (the last may dangle)."""
    return _chain(shown)[-1]


def _chain(shown: str) -> list[str]:
    """*shown*, then each path its symlinks point to, to the end (the last may dangle)."""
    chain = [shown]
    for _ in range(_MAX_LINKS):
        current = chain[-1]
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return chain
        if not stat.S_ISLNK(st.st_mode):
            return chain
        chain.append(os.path.join(os.path.dirname(current), os.readlink(current)))
    raise _oserror(errno.ELOOP, shown, "a symlink loop?")


def _own_fd(path: str, st: os.stat_result) -> int:
    """The file descriptor *path* names (``/dev/stdout``'s ``/proc/self/fd/1``, ``/dev/fd/N``),
    if it is this process's, open for writing, on the file *st* describes; else -1.

    Such a path must not be replaced (a new inode: what the shell's ``> file`` holds open, and
    what was printed before, would be lost) nor reopened (``O_TRUNC`` would erase what was
    printed before): the bytes go through the descriptor itself.
    """
    folder, name = os.path.split(path)
    if sys.platform == "win32" or not (name.isascii() and name.isdigit()):
        return -1
    real = os.path.realpath(folder)
    match = _FD_FOLDER.match(real)
    if real != "/dev/fd" and (match is None or match["pid"] not in (None, str(os.getpid()))):
        return -1
    fd = int(name)
    try:
        held = os.fstat(fd)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except (OSError, OverflowError):  # not open (any more), or a number no descriptor has
        return -1
    if not os.path.samestat(held, st) or flags & os.O_ACCMODE == os.O_RDONLY:
        return -1  # read-only (``/dev/stdin``): a path to that file like any other
    return fd


def _new_file(shown: str) -> _Target:
    """A path that does not exist yet (or a dangling symlink): its folder must."""
    try:
        real = _follow(shown)
    except OSError as exc:
        raise _oserror(exc.errno or errno.ELOOP, shown, "a symlink loop?") from None
    folder = os.path.dirname(real) or os.curdir
    via = f" (the symlink points to {real!r})" if real != shown else ""
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        hint = "; '~' is not expanded" if shown.startswith("~") else ""
        raise _oserror(
            errno.ENOENT, shown, f"the folder {folder!r} does not exist{hint}{via}"
        ) from None
    except OSError as exc:
        detail = f"cannot reach the folder {folder!r}{via}"
        raise _oserror(exc.errno or errno.EIO, shown, detail) from None
    if not stat.S_ISDIR(st.st_mode):
        raise _oserror(errno.ENOTDIR, shown, f"{folder!r} is not a folder{via}")
    return _Target(shown, real, _NEW, None)


# -- regular files: temp file, fsync, rename, fsync the folder ------------------------------


class _TempFile:
    """The temporary file next to the target; :meth:`commit` renames it into place."""

    __slots__ = ("committed", "dirty", "fd", "folder", "name", "target")

    def __init__(self, target: _Target) -> None:
        self.target = target
        self.folder = os.path.dirname(target.real) or os.curdir
        self.committed = False
        self.dirty = False
        prefix = _temp_prefix(os.path.basename(target.real))
        try:
            self.fd, self.name = tempfile.mkstemp(dir=self.folder, prefix=prefix, suffix=".part")
        except OSError as exc:
            raise target.error(exc, f"cannot create a file in the folder {self.folder!r}") from None
        try:
            self._keep_permissions()
        except BaseException:
            self.discard()
            raise

    def _keep_permissions(self) -> None:
        old = self.target.stat
        if old is None:
            return  # a new file keeps mkstemp's 0600
        if hasattr(os, "fchown"):
            mine = os.fstat(self.fd)
            if (mine.st_uid, mine.st_gid) != (old.st_uid, old.st_gid):
                with suppress(OSError):  # only root (or a group member) may; keep ours then
                    os.fchown(self.fd, old.st_uid, old.st_gid)
        mode = stat.S_IMODE(old.st_mode) & 0o777  # never copy setuid/setgid/sticky
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(self.fd, mode)
            else:  # pragma: no cover - Windows before 3.13
                os.chmod(self.name, mode)
        except OSError as exc:
            raise self.target.error(exc) from None

    def write(self, data: bytes) -> None:
        """Append *data* (blocking)."""
        self.dirty = True
        try:
            _write_all(self.fd, data)
        except OSError as exc:
            raise self.target.error(exc) from None

    def reset(self) -> None:
        """Truncate to empty, for a retry (blocking)."""
        try:
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
        except OSError as exc:
            raise self.target.error(exc) from None
        self.dirty = False

    def commit(self) -> None:
        """fsync, rename over the target, fsync the folder (blocking). Removes the temp file
        itself if anything before the rename fails."""
        try:
            try:
                os.fsync(self.fd)
            finally:
                fd, self.fd = self.fd, -1
                os.close(fd)
            os.replace(self.name, self.target.real)
        except OSError as exc:
            self.discard()
            raise self.target.error(exc) from None
        except BaseException:
            self.discard()
            raise
        self.committed = True
        try:
            _fsync_folder(self.folder)
        except OSError as exc:
            raise self.target.error(exc, "saved, but its folder could not be synced") from None

    def discard(self) -> None:
        """Close and remove the temp file, unless it was renamed into place. Never raises."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            with suppress(OSError):
                os.close(fd)
        if not self.committed:
            with suppress(OSError):
                os.unlink(self.name)


def _temp_prefix(name: str) -> str:
    """``.<name>.`` with *name* cut to at most ``_NAME_IN_TEMP`` bytes as the file system
    stores them (``os.fsencode``), at a character boundary: a multi-byte character is kept
    whole or dropped, never split into bytes that are not a character; an undecodable byte
    (a lone surrogate from ``os.fsdecode``) is one byte and is kept as it came."""
    size = 0
    for end, char in enumerate(name):
        size += len(os.fsencode(char))
        if size > _NAME_IN_TEMP:
            return f".{name[:end]}."
    return f".{name}."


def _fsync_folder(folder: str) -> None:
    """Make a rename in *folder* durable (POSIX: fsync the folder itself)."""
    if sys.platform == "win32":  # pragma: no cover - no directory fds on Windows
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _UNFSYNCABLE:  # some file systems cannot sync a folder
            raise
    finally:
        os.close(fd)


def _flags(target: _Target) -> int:
    return _WRITE_FLAGS | os.O_TRUNC if target.kind == _IN_PLACE else _WRITE_FLAGS


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- the synchronous path (QRImage.save) ---------------------------------------------------


def write_bytes(path: PathArg, data: bytes) -> Path:
    """Write *data* to *path* atomically and durably (see the module docstring); return
    ``Path(path)``. Blocking: a FIFO with no reader is waited for, as ``open()`` would."""
    target = _resolve(path)
    if target.kind == _FD:
        _flush_python_streams(target)
        try:
            _write_through(target.fd, data)
        except OSError as exc:
            raise target.error(exc) from None
        return target.path
    if target.kind in _SPECIAL:
        try:
            fd = os.open(target.real, _flags(target))
        except OSError as exc:
            raise target.error(exc) from None
        _flush_python_streams(target)
        try:
            _write_all(fd, data)
            if target.kind in (_BLOCK, _IN_PLACE):
                os.fsync(fd)
        except OSError as exc:
            raise target.error(exc) from None
        finally:
            os.close(fd)
        return target.path
    temp = _TempFile(target)
    try:
        temp.write(data)
        temp.commit()
    finally:
        temp.discard()
    return target.path


# -- the asynchronous path (WachatClient.save_qr_image, the CLI) ---------------------------


async def write_stream(path: PathArg, fill: Callable[[Sink], Awaitable[None]]) -> Path:
    """Resolve *path*, let *fill* write the bytes into a :class:`Sink`, then commit them.

    The path is checked before *fill* runs, so a bad path fails before any request. For a
    regular file (or a new one) the chunks stream into the temp file, which is renamed into
    place only when *fill* returns; on any error or cancellation it is removed and *path* is
    left as it was. For a device or FIFO the body is kept in memory (the caller bounds its
    size) and written once *fill* has returned, so a retry inside *fill* can never send two
    bodies down a pipe, and a failed fetch writes nothing (the FIFO's reader sees end of file).
    """
    target = await _off_loop(_resolve, path)
    if target.kind == _FD:  # the caller's descriptor: written once the body is whole
        memory = _MemorySink()
        await fill(memory)
        _flush_python_streams(target)
        try:
            await _off_loop(_write_through, target.fd, b"".join(memory.chunks))
        except OSError as exc:
            raise target.error(exc) from None
        return target.path
    if target.kind in _SPECIAL:
        # Opened first (a FIFO's reader then sees end of file if the fetch fails), except a
        # file written in place: opening truncates it, so that waits for a whole body.
        fd = -1 if target.kind == _IN_PLACE else await _open_special(target)
        try:
            memory = _MemorySink()
            await fill(memory)
            if fd < 0:
                fd = await _open_special(target)
            _flush_python_streams(target)
            await _write_special(fd, target, b"".join(memory.chunks))
        finally:
            if fd >= 0:
                os.close(fd)
        return target.path
    temp = await _off_loop(_TempFile, target, undo=_TempFile.discard)
    try:
        await fill(_TempSink(temp))
        await _off_loop(temp.commit)
    finally:
        temp.discard()
    return target.path


async def write_bytes_async(path: PathArg, data: bytes) -> Path:
    """:func:`write_bytes` without blocking the event loop (cancellable while a FIFO waits)."""

    async def fill(sink: Sink) -> None:
        await sink.write(data)

    return await write_stream(path, fill)


class _MemorySink:
    __slots__ = ("chunks",)

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    async def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    async def reset(self) -> None:
        self.chunks.clear()


class _TempSink:
    __slots__ = ("temp",)

    def __init__(self, temp: _TempFile) -> None:
        self.temp = temp

    async def write(self, chunk: bytes) -> None:
        await _off_loop(self.temp.write, chunk)

    async def reset(self) -> None:
        if self.temp.dirty:  # the first attempt has nothing to undo: no thread hop
            await _off_loop(self.temp.reset)


async def _off_loop(
    func: Callable[..., T], *args: object, undo: Callable[[T], object] | None = None
) -> T:
    """Run blocking *func* in the default executor.

    If the caller is cancelled, wait for the thread to finish first (it cannot be interrupted,
    and nothing may be closed under it), hand what it made to *undo*, then raise
    ``CancelledError``.
    """
    future = asyncio.get_running_loop().run_in_executor(None, func, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await _settle(future, undo)
        raise


async def _settle(future: asyncio.Future[T], undo: Callable[[T], object] | None) -> None:
    """Wait until *future* is done, ignoring further cancellations; *undo* its result."""
    while not future.done():
        with suppress(asyncio.CancelledError, Exception):
            await asyncio.shield(future)
    if not future.cancelled() and future.exception() is None and undo is not None:
        with suppress(OSError):
            undo(future.result())


async def _open_special(target: _Target) -> int:
    """Open a device or FIFO for writing without blocking the loop."""
    try:
        if target.kind != _FIFO:
            return await _off_loop(os.open, target.real, _flags(target), undo=os.close)
        try:  # a reader is there: no wait
            return os.open(target.real, _WRITE_FLAGS | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
        return await _wait_for_reader(target.real)
    except OSError as exc:
        raise target.error(exc) from None


async def _wait_for_reader(fifo: str) -> int:
    """Open *fifo* for writing in a thread of its own, which blocks until a reader opens it
    (as ``cmd > fifo`` does); not the default executor, whose threads others need (aiohttp
    resolves host names there). If cancelled, become a reader ourselves for a moment so the
    thread's ``open`` returns, close what it opened, then raise ``CancelledError``."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[int] = loop.create_future()

    def deliver(fd: int, exc: OSError | None) -> None:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(fd)

    def run() -> None:
        fd, exc = -1, None
        try:
            fd = os.open(fifo, _WRITE_FLAGS)
        except OSError as error:
            exc = error
        try:
            loop.call_soon_threadsafe(deliver, fd, exc)
        except RuntimeError:  # pragma: no cover - the loop closed without cancelling us
            if fd >= 0:
                os.close(fd)

    threading.Thread(target=run, name="wachat-async-fifo-open", daemon=True).start()
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        unblock = -1
        with suppress(OSError):
            unblock = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            await _settle(future, os.close)
        finally:
            if unblock >= 0:
                os.close(unblock)
        raise


async def _write_special(fd: int, target: _Target, data: bytes) -> None:
    """Write *data* to an open device or FIFO without blocking the loop."""
    try:
        if target.kind in (_FIFO, _CHAR) and sys.platform != "win32":
            os.set_blocking(fd, False)
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:  # a FIFO whose reader is behind, a busy terminal
                    if not await _writable(fd):
                        os.set_blocking(fd, True)  # cannot be polled: finish in a thread
                        await _off_loop(_write_all, fd, bytes(view))
                        break
        else:  # a block device or a file written in place: plain blocking I/O, off the loop
            await _off_loop(_write_and_sync, fd, data)
    except OSError as exc:
        raise target.error(exc) from None


def _write_and_sync(fd: int, data: bytes) -> None:
    _write_all(fd, data)
    os.fsync(fd)


def _write_through(fd: int, data: bytes) -> None:
    """Write *data* through the caller's open descriptor, at its offset (appending if it was
    opened ``O_APPEND``), then fsync it where the file system can."""
    _write_all(fd, data)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _UNFSYNCABLE:
            raise


def _flush_python_streams(target: _Target) -> None:
    """Flush ``sys.stdout``/``sys.stderr`` if they write where *target* is (``-o /dev/stdout``
    to a file, a pipe or a terminal), so what was printed before the save stays before the PNG
    (``print`` holds it in a buffer when stdout is not a terminal)."""
    if target.stat is None:
        return
    streams = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    for stream in dict.fromkeys(s for s in streams if s is not None):
        with suppress(OSError, ValueError, AttributeError):  # no fileno (pytest's capture)
            if os.path.samestat(os.fstat(stream.fileno()), target.stat):
                stream.flush()


async def _writable(fd: int) -> bool:
    """Wait until *fd* can take more bytes; False if the loop cannot watch it."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    try:
        loop.add_writer(fd, wake)
    except (OSError, NotImplementedError):  # epoll refuses some devices; Windows' loop
        return False
    try:
        await ready
    finally:
        loop.remove_writer(fd)
    return True
