"""The one write path (wachat_async/_files.py) through QRImage.save, save_qr_image and the CLI.

Every case runs through each way a PNG reaches the disk ("save" fixture): ``QRImage.save``
(blocking), ``WachatClient.save_qr_image`` (from a loopback server) and ``write_bytes_async``
(what the CLI's ``-o`` uses). Real FIFOs, pipes, /dev/null, /dev/full, sockets, symlinks and
folders; no mocks except to inject a disk failure or an interrupt.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from wachat_async import InvalidImageError, QRImage, RetryPolicy, WachatClient, _files
from wachat_async.cli import EXIT_FILE, main

from .conftest import KEY, NAME, assert_no_connection_checked_out


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def make_png(width: int = 5, height: int = 4) -> bytes:
    """A valid greyscale PNG of *width* x *height*."""
    rows = b"".join(
        b"\x00" + bytes((x * 37 + y) % 256 for x in range(width)) for y in range(height)
    )
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


PNG = make_png()
Save = Callable[..., Awaitable[Path]]


# -- a loopback server with a per-test script --------------------------------------------


class PngServer:
    """Answers each GET with the next scripted action: "png", a status code, "truncate"
    (half the PNG, then the connection closes) or "stall" (half the PNG, then waits)."""

    def __init__(self) -> None:
        self.script: list[Any] = []
        self.requests = 0
        self.stalled = asyncio.Event()
        self.release = asyncio.Event()
        self.base_url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        action = self.script.pop(0) if self.script else "png"
        if isinstance(action, int):
            return web.Response(status=action, text="upstream failed")
        if action == "png":
            return web.Response(body=PNG, content_type="image/png")
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = len(PNG)
        await response.prepare(request)
        await response.write(PNG[:40])
        if action == "stall":
            self.stalled.set()
            await self.release.wait()
        else:  # truncate: the transport closes before the promised length
            assert request.transport is not None
            request.transport.close()
        return response


@pytest.fixture
async def png_server() -> AsyncIterator[PngServer]:
    """A started PngServer on 127.0.0.1."""
    server = PngServer()
    app = web.Application()
    app.router.add_get("/api/v1/instance/qr/image", server.handle)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}/api/v1"
    try:
        yield server
    finally:
        server.release.set()
        await runner.cleanup()


@pytest.fixture
async def client(png_server: PngServer) -> AsyncIterator[WachatClient]:
    """A zero-wait client bound to png_server."""
    async with WachatClient(
        api_key=KEY, base_url=png_server.base_url, retry=RetryPolicy(zero_wait=True)
    ) as wachat:
        yield wachat
        assert_no_connection_checked_out(wachat)


def retrying_client(server: PngServer) -> WachatClient:
    """A zero-wait client that also retries transport errors (a body cut short)."""
    policy = RetryPolicy(zero_wait=True, retry_transport_errors=True)
    return WachatClient(api_key=KEY, base_url=server.base_url, retry=policy)


MODES = ["QRImage.save", "save_qr_image", "write_bytes_async"]


@pytest.fixture(params=MODES)
def save(request: pytest.FixtureRequest, client: WachatClient) -> Save:
    """Save PNG to a path the way the param says; returns what the call returned."""
    mode: str = request.param

    async def call(path: Any) -> Path:
        if mode == "QRImage.save":
            return QRImage.from_png(PNG, instance_name=NAME).save(path)
        if mode == "save_qr_image":
            return await client.save_qr_image(NAME, path)
        return await _files.write_bytes_async(path, PNG)

    return call


def listing(folder: Path) -> list[str]:
    """The names in *folder*, sorted."""
    return sorted(p.name for p in folder.iterdir())


def assert_clean_error(exc: OSError, shown: object) -> None:
    """The error names the caller's path, and never the temp file."""
    assert exc.filename == os.fsdecode(os.fspath(shown))  # type: ignore[arg-type]
    assert exc.filename2 is None
    assert ".part" not in str(exc)
    assert exc.__cause__ is None


class Reader(threading.Thread):
    """Reads a FIFO to end of file in a thread (opening it blocks until a writer opens it)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.data: bytes | None = None

    def run(self) -> None:
        with open(self.path, "rb") as fh:
            self.data = fh.read()

    def result(self) -> bytes | None:
        self.join(timeout=30)
        assert not self.is_alive(), "the FIFO reader never saw end of file"
        return self.data


# -- regular files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["str", "Path", "bytes", "relative-str"], ids=lambda kind: str(kind)
)
async def test_new_file_is_written_owner_only_and_the_given_path_returned(
    save: Save, tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new file gets the whole PNG, mode 0600, no temp file; the return is Path(given)."""
    target = tmp_path / "qr.png"
    given: Any = {
        "str": str(target),
        "Path": target,
        "bytes": os.fsencode(target),
        "relative-str": "qr.png",
    }[kind]
    monkeypatch.chdir(tmp_path)
    result = await save(given)
    assert result == Path(os.fsdecode(given))
    assert target.read_bytes() == PNG
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert listing(tmp_path) == ["qr.png"]


@pytest.mark.parametrize("mode", [0o644, 0o600, 0o640, 0o444], ids=oct)
async def test_replacing_a_file_is_atomic_and_keeps_its_mode_and_owner(
    save: Save, tmp_path: Path, mode: int
) -> None:
    """An existing file is replaced by rename (a new inode), keeping its permission bits
    and owner, as curl -o would."""
    target = tmp_path / "qr.png"
    target.write_bytes(b"old contents, longer than nothing")
    target.chmod(mode)
    if os.geteuid() == 0:
        os.chown(target, 4321, 4321)
    before = target.stat()
    assert await save(target) == target
    after = target.stat()
    assert target.read_bytes() == PNG
    assert after.st_ino != before.st_ino
    assert stat.S_IMODE(after.st_mode) == mode
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert listing(tmp_path) == ["qr.png"]


async def test_setuid_bits_of_a_replaced_file_are_not_copied(save: Save, tmp_path: Path) -> None:
    """Only the rwx bits of a replaced file are kept: never setuid, setgid or sticky."""
    target = tmp_path / "qr.png"
    target.write_bytes(b"old")
    target.chmod(0o6755)
    await save(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


#: What a long name is made of: characters of 1 to 4 UTF-8 bytes, grapheme clusters, and bytes
#: that are not UTF-8 at all (a bytes path; os.fsdecode makes them lone surrogates).
LONG_NAME_UNITS = {
    "ascii": "q",
    "latin-2-bytes": "\u00e9",
    "cjk-3-bytes": "\u4e8c",
    "emoji-4-bytes": "\U0001f600",
    "mixed": "a\u00e9\u4e8c\U0001f600",
    "zwj-family": "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "undecodable-bytes": "\udcff\udcfeq",
    "emoji-and-undecodable": "\U0001f600\udce9",
}


def long_name(unit: str, size: int) -> bytes:
    """A file name of exactly *size* bytes: *unit* repeated, padded with "q", then ".png"."""
    encoded = os.fsencode(unit)
    body = encoded * ((size - 4) // len(encoded))
    return body + b"q" * (size - 4 - len(body)) + b".png"


@pytest.mark.parametrize("size", [200, 248, 254, 255], ids=lambda n: f"{n}-bytes")
@pytest.mark.parametrize("unit", list(LONG_NAME_UNITS.values()), ids=list(LONG_NAME_UNITS))
async def test_a_long_file_name_still_gets_a_temp_file(
    save: Save, tmp_path: Path, unit: str, size: int
) -> None:
    """Any legal name up to NAME_MAX (255 bytes) works, however many bytes its characters
    take: the temp name keeps a part of it measured in bytes, so it never overflows."""
    name = long_name(unit, size)
    assert len(name) == size
    for target in (os.path.join(os.fsencode(tmp_path), name), tmp_path / os.fsdecode(name)):
        await save(target)
        assert Path(os.fsdecode(target)).read_bytes() == PNG
        assert os.listdir(os.fsencode(tmp_path)) == [name]


@given(
    st.text(
        st.characters(exclude_characters="/\x00", exclude_categories=["Cs"])
        | st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF),
        max_size=300,
    )
)
@settings(deadline=None, derandomize=True, database=None)
def test_the_temp_name_keeps_whole_characters_within_a_byte_budget(name: str) -> None:
    """The name part of the temp name is the longest run of whole characters from the start
    of the name that fits in 64 bytes: never more, never a character cut into bytes."""
    prefix = _files._temp_prefix(name)
    assert prefix[0] == prefix[-1] == "."
    kept = prefix[1:-1]
    assert name.startswith(kept)
    size = len(os.fsencode(kept))
    assert size <= 64
    assert os.fsdecode(os.fsencode(kept)) == kept  # whole characters: decodes back the same
    if kept != name:  # cut: the next character would not have fitted
        assert size + len(os.fsencode(name[len(kept)])) > 64
    with tempfile.TemporaryDirectory() as folder:  # and the OS takes it
        fd, temp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".part")
        os.close(fd)
        assert len(os.fsencode(os.path.basename(temp))) <= 64 + 15


async def test_a_name_that_cannot_be_encoded_is_an_os_error_before_any_request(
    save: Save, tmp_path: Path, png_server: PngServer
) -> None:
    """A str path with a lone surrogate no byte stands for is an OSError naming it, not a
    UnicodeEncodeError, and is raised before anything is fetched."""
    target = os.path.join(tmp_path, "qr\ud800.png")
    with pytest.raises(OSError, match="cannot be encoded") as caught:
        await save(target)
    assert caught.value.errno == errno.EILSEQ
    assert_clean_error(caught.value, target)
    assert png_server.requests == 0
    assert listing(tmp_path) == []


# -- symlinks ------------------------------------------------------------------------------


def _links(tmp_path: Path, layout: str) -> tuple[Path, Path]:
    """Build a symlink layout; return (the path given to save, where the PNG must land)."""
    other = tmp_path / "elsewhere"
    other.mkdir()
    real = other / "real.png"
    link = tmp_path / "qr.png"
    if layout == "absolute":
        real.write_bytes(b"old")
        link.symlink_to(real)
    elif layout == "relative":
        real.write_bytes(b"old")
        link.symlink_to(Path("elsewhere") / "real.png")
    elif layout == "chain":
        real.write_bytes(b"old")
        (tmp_path / "middle").symlink_to(real)
        link.symlink_to("middle")
    elif layout == "relative-in-other-folder":
        real.write_bytes(b"old")
        (other / "hop").symlink_to("real.png")  # relative to *its* folder, not ours
        link.symlink_to(other / "hop")
    elif layout == "dangling":
        link.symlink_to(real)
    elif layout == "folder-link":
        (tmp_path / "dirlink").symlink_to(other, target_is_directory=True)
        link = tmp_path / "dirlink" / "real.png"
    return link, real


@pytest.mark.parametrize(
    "layout",
    ["absolute", "relative", "chain", "relative-in-other-folder", "dangling", "folder-link"],
)
async def test_symlinks_are_followed_and_stay_links(
    save: Save, tmp_path: Path, layout: str
) -> None:
    """The PNG lands atomically at the final target; every link stays a link; the return
    value is the path given; no temp file anywhere."""
    given, real = _links(tmp_path, layout)
    links_before = {p.name: os.readlink(p) for p in tmp_path.iterdir() if p.is_symlink()}
    assert await save(given) == given
    assert real.read_bytes() == PNG
    assert not real.is_symlink()
    assert {p.name: os.readlink(p) for p in tmp_path.iterdir() if p.is_symlink()} == links_before
    assert not list(tmp_path.rglob("*.part"))
    if layout == "dangling":
        assert stat.S_IMODE(real.stat().st_mode) == 0o600


async def test_a_symlink_to_a_device_writes_to_the_device(save: Save, tmp_path: Path) -> None:
    """A link to /dev/null is followed to the device, which stays a device; the link stays."""
    link = tmp_path / "qr.png"
    link.symlink_to(os.devnull)
    assert await save(link) == link
    assert os.readlink(link) == os.devnull
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


# -- special files -------------------------------------------------------------------------


async def test_dev_null_is_written_to_not_replaced(save: Save) -> None:
    """-o /dev/null works like curl: the device is opened and written, never renamed over."""
    before = os.stat(os.devnull)
    assert await save(os.devnull) == Path(os.devnull)
    after = os.stat(os.devnull)
    assert stat.S_ISCHR(after.st_mode)
    assert (after.st_ino, after.st_rdev, after.st_mode) == (
        before.st_ino,
        before.st_rdev,
        before.st_mode,
    )


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this OS")
async def test_a_full_device_is_a_clear_error(save: Save) -> None:
    """/dev/full: ENOSPC naming /dev/full, and the device is untouched."""
    with pytest.raises(OSError, match="No space left") as info:
        await save("/dev/full")
    assert info.value.errno == errno.ENOSPC
    assert_clean_error(info.value, "/dev/full")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


@pytest.mark.parametrize("via", ["path", "symlink"])
async def test_a_fifo_with_a_reader_gets_the_png(save: Save, tmp_path: Path, via: str) -> None:
    """A FIFO is written to directly (the reader gets exactly the PNG) and stays a FIFO."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    given = fifo
    if via == "symlink":
        given = tmp_path / "qr.png"
        given.symlink_to("pipe")
    reader = Reader(fifo)
    reader.start()
    assert await save(given) == given
    assert reader.result() == PNG
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert listing(tmp_path) == sorted({"pipe", given.name})


def _watch_blocking_open(monkeypatch: pytest.MonkeyPatch, fifo: Path) -> dict[str, Any]:
    """Record when a blocking open of *fifo* for writing starts (on the loop) and returns."""
    loop = asyncio.get_running_loop()
    seen: dict[str, Any] = {"started": asyncio.Event(), "returned": threading.Event()}
    real_open = os.open

    def spy(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        blocking = (
            os.fspath(path) == str(fifo) and flags & os.O_WRONLY and not (flags & os.O_NONBLOCK)
        )
        if blocking:
            seen["thread"] = threading.current_thread()
            loop.call_soon_threadsafe(seen["started"].set)
        try:
            return real_open(path, flags, *args, **kwargs)
        finally:
            if blocking:
                seen["returned"].set()

    monkeypatch.setattr(os, "open", spy)
    return seen


@pytest.mark.parametrize("mode", ["save_qr_image", "write_bytes_async"])
async def test_a_fifo_without_a_reader_is_waited_for_off_the_loop(
    mode: str, client: WachatClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no reader yet the open waits in a worker thread (the loop keeps running); a
    reader that arrives later gets the PNG."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    seen = _watch_blocking_open(monkeypatch, fifo)
    if mode == "save_qr_image":
        task = asyncio.ensure_future(client.save_qr_image(NAME, fifo))
    else:
        task = asyncio.ensure_future(_files.write_bytes_async(fifo, PNG))
    await seen["started"].wait()  # the loop is free while the open waits
    assert seen["thread"] is not threading.main_thread()
    assert not task.done()
    reader = Reader(fifo)
    reader.start()
    assert await task == fifo
    assert reader.result() == PNG


@pytest.mark.parametrize("mode", ["save_qr_image", "write_bytes_async"])
async def test_cancelling_a_wait_for_a_fifo_reader_leaves_nothing_behind(
    mode: str, client: WachatClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while no reader comes: the worker thread is released (not left blocked),
    the FIFO is still a FIFO and the next save to it works."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    seen = _watch_blocking_open(monkeypatch, fifo)
    if mode == "save_qr_image":
        task = asyncio.ensure_future(client.save_qr_image(NAME, fifo))
    else:
        task = asyncio.ensure_future(_files.write_bytes_async(fifo, PNG))
    await seen["started"].wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen["returned"].is_set()  # the blocked open was undone before the cancel finished
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert listing(tmp_path) == ["pipe"]
    reader = Reader(fifo)
    reader.start()
    await _files.write_bytes_async(fifo, PNG)
    assert reader.result() == PNG


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")
@pytest.mark.parametrize("how", ["sync", "async"])
async def test_a_proc_link_to_a_deleted_file_is_written_in_place(tmp_path: Path, how: str) -> None:
    """/proc/self/fd/N of a deleted file (no folder to rename into): written in place and
    truncated, so nothing of the old contents is left after the PNG."""
    path = tmp_path / "gone.png"
    path.write_bytes(b"old contents" * 100)
    fd = os.open(path, os.O_RDONLY)
    try:
        path.unlink()
        link = f"/proc/self/fd/{fd}"
        if how == "sync":
            assert _files.write_bytes(link, PNG) == Path(link)
        else:
            assert await _files.write_bytes_async(link, PNG) == Path(link)
        assert os.pread(fd, 10_000, 0) == PNG
    finally:
        os.close(fd)
    assert listing(tmp_path) == []


# -- paths that name one of this process's file descriptors ---------------------------------

#: How a path can name file descriptor N of this process (skipped where the OS has no such
#: path), the last two through a symlink made in the test's folder.
FD_PATHS = {
    "dev-fd": "/dev/fd/{fd}",
    "proc-self-fd": "/proc/self/fd/{fd}",
    "proc-pid-fd": "/proc/{pid}/fd/{fd}",
    "proc-thread-self-fd": "/proc/thread-self/fd/{fd}",
    "symlink-to-dev-fd": "link",
    "through-a-linked-folder": "folder-link/{fd}",
}


def _fd_path(tmp_path: Path, how: str, fd: int) -> str:
    """The path *how* names *fd* with (creating the symlinks it needs)."""
    if how == "symlink-to-dev-fd":
        (tmp_path / "link").symlink_to(f"/dev/fd/{fd}")
        return str(tmp_path / "link")
    if how == "through-a-linked-folder":
        (tmp_path / "folder-link").symlink_to("/dev/fd")
        return str(tmp_path / "folder-link" / str(fd))
    return FD_PATHS[how].format(fd=fd, pid=os.getpid())


@pytest.mark.skipif(not os.path.isdir("/dev/fd"), reason="no /dev/fd on this OS")
@pytest.mark.parametrize("how", list(FD_PATHS))
async def test_a_path_naming_a_pipe_descriptor_is_written_in_place(
    save: Save, tmp_path: Path, how: str
) -> None:
    """/dev/fd/N, /proc/self/fd/N (and links to them) of a pipe (what /dev/stdout is for
    ``script | consumer``): the PNG goes down the pipe, after what was written before."""
    read_end, write_end = os.pipe()
    try:
        path = _fd_path(tmp_path, how, write_end)
        if not os.path.exists(path):
            pytest.skip(f"{path} does not exist on this OS")
        os.write(write_end, b"BEFORE\n")
        assert await save(path) == Path(path)
        os.write(write_end, b"AFTER\n")
        assert os.read(read_end, 1 << 16) == b"BEFORE\n" + PNG + b"AFTER\n"
    finally:
        os.close(read_end)
        os.close(write_end)
    assert [n for n in listing(tmp_path) if n.endswith(".part")] == []


@pytest.mark.skipif(not os.path.isdir("/dev/fd"), reason="no /dev/fd on this OS")
@pytest.mark.parametrize(
    "opening",
    [os.O_RDONLY, os.O_WRONLY, os.O_WRONLY | os.O_APPEND],
    ids=["read-only", "write-only", "append"],
)
async def test_a_descriptor_path_to_a_regular_file_is_a_symlink_like_any_other(
    save: Save, tmp_path: Path, opening: int
) -> None:
    """/dev/fd/N of a regular file is followed to that file, which is replaced atomically:
    the descriptor keeps the old inode. (The CLI writes its stdout through descriptor 1.)"""
    out = tmp_path / "out.txt"
    out.write_bytes(b"before")
    fd, old = os.open(out, opening), os.open(out, os.O_RDONLY)
    try:
        await save(f"/dev/fd/{fd}")
        assert os.fstat(fd).st_nlink == 0  # the old inode, still open, is untouched
        assert os.pread(old, 100, 0) == b"before"
    finally:
        os.close(fd)
        os.close(old)
    assert out.read_bytes() == PNG
    assert listing(tmp_path) == ["out.txt"]


@pytest.mark.parametrize("name", ["1", "3", "007"])
async def test_a_file_named_like_a_descriptor_elsewhere_is_an_ordinary_file(
    save: Save, tmp_path: Path, name: str
) -> None:
    """A file whose name is a number, outside /dev/fd and /proc/.../fd, is replaced
    atomically like any file, even while a descriptor of that number is open."""
    target = tmp_path / name
    target.write_bytes(b"old")
    inode = target.stat().st_ino
    await save(target)
    assert target.read_bytes() == PNG
    assert target.stat().st_ino != inode
    assert listing(tmp_path) == [name]


@pytest.mark.skipif(not os.path.isdir("/dev/fd"), reason="no /dev/fd on this OS")
async def test_a_failed_write_to_a_descriptor_path_names_the_path(
    save: Save, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write down /dev/fd/N that fails is an OSError naming the caller's path."""
    read_end, write_end = os.pipe()
    try:
        path = f"/dev/fd/{write_end}"
        _fail(monkeypatch, "write", errno.ENOSPC)
        with pytest.raises(OSError, match=os.strerror(errno.ENOSPC)) as info:
            await save(path)
        monkeypatch.undo()
        assert info.value.errno == errno.ENOSPC
        assert_clean_error(info.value, path)
    finally:
        os.close(read_end)
        os.close(write_end)


_STDOUT_CHILD = """
import asyncio, sys
from wachat_async import QRImage, _files
png = bytes.fromhex(sys.argv[1])
for path in sys.argv[2:]:
    print("BEFORE", path, flush=True)
    QRImage.from_png(png, instance_name="t1_store").save(path)
    print("MIDDLE", flush=True)
    asyncio.run(_files.write_bytes_async(path, png))
print("AFTER")
"""
STDOUT_PATHS = [p for p in ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1") if os.path.exists(p)]


@pytest.mark.skipif(not STDOUT_PATHS, reason="no /dev/stdout on this OS")
def test_saving_to_dev_stdout_on_a_pipe_writes_down_the_pipe() -> None:
    """A script whose stdout is a pipe saves to /dev/stdout, /dev/fd/1 and /proc/self/fd/1,
    sync and async: the consumer reads what it printed (flushed) and the PNGs, in order."""
    argv = [sys.executable, "-c", _STDOUT_CHILD, PNG.hex(), *STDOUT_PATHS]
    each = (b"BEFORE %s\n" % os.fsencode(p) + PNG + b"MIDDLE\n" + PNG for p in STDOUT_PATHS)
    done = subprocess.run(  # noqa: S603 - our interpreter, a fixed script
        argv, stdout=subprocess.PIPE, check=True, timeout=60
    )
    assert done.stdout == b"".join(each) + b"AFTER\n"


@pytest.mark.parametrize("mode", ["write_bytes", "write_bytes_async"])
async def test_a_body_larger_than_the_pipe_buffer_reaches_the_reader_whole(
    mode: str, tmp_path: Path
) -> None:
    """Several pipe buffers' worth: the async writer waits for the reader to drain (without
    blocking the loop), the blocking one simply blocks; either way every byte arrives."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    big = os.urandom(1 << 20)
    reader = Reader(fifo)
    reader.start()
    if mode == "write_bytes":
        await asyncio.to_thread(_files.write_bytes, fifo, big)
    else:
        await _files.write_bytes_async(fifo, big)
    assert reader.result() == big


@pytest.mark.parametrize("mode", ["write_bytes", "write_bytes_async"])
async def test_a_block_device_is_written_in_place_and_synced(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A block device is opened and written from its start (never truncated or replaced), then
    fsynced. (A regular file stands in for the device: writing a real one would be harmful.)"""
    device = tmp_path / "sdz"
    device.write_bytes(b"\xee" * 100)
    real_stat, synced = os.stat, []
    real_fsync = os.fsync

    def fake_stat(path: Any, *args: Any, **kwargs: Any) -> Any:
        st = real_stat(path, *args, **kwargs)
        if os.fspath(path) == str(device):
            fields = list(st)
            fields[stat.ST_MODE] = stat.S_IFBLK | 0o660
            return os.stat_result(fields)
        return st

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "stat", fake_stat)
    monkeypatch.setattr(os, "fsync", fsync)
    inode = real_stat(device).st_ino
    if mode == "write_bytes":
        _files.write_bytes(device, PNG)
    else:
        await _files.write_bytes_async(device, PNG)
    monkeypatch.undo()
    assert device.read_bytes() == PNG + b"\xee" * (100 - len(PNG))
    assert os.stat(device).st_ino == inode
    assert synced == [inode]
    assert listing(tmp_path) == ["sdz"]


def test_the_blocking_save_to_a_fifo_waits_for_a_reader(tmp_path: Path) -> None:
    """QRImage.save (blocking, like open()) to a FIFO whose reader comes later delivers."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    qr = QRImage.from_png(PNG, instance_name=NAME)
    reader = Reader(fifo)
    reader.start()
    assert qr.save(fifo) == fifo
    assert reader.result() == PNG


@pytest.mark.parametrize("mode", ["write_bytes", "write_bytes_async"])
async def test_a_fifo_reader_that_leaves_early_is_a_clear_error(mode: str, tmp_path: Path) -> None:
    """A reader that closes without reading: EPIPE naming the FIFO, never a crash or a hang."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    big = bytes(1 << 20)  # far more than a pipe buffer: the writer must outlive the reader

    def leave() -> None:
        with open(fifo, "rb"):
            pass

    async def write() -> Path:
        if mode == "write_bytes":
            return _files.write_bytes(fifo, big)
        return await _files.write_bytes_async(fifo, big)

    thread = threading.Thread(target=leave, daemon=True)
    thread.start()
    with pytest.raises(BrokenPipeError) as info:
        await write()
    thread.join(timeout=30)
    assert info.value.errno == errno.EPIPE
    assert_clean_error(info.value, fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


async def test_a_fifo_reader_gets_one_png_after_a_retry(
    png_server: PngServer, client: WachatClient, tmp_path: Path
) -> None:
    """A 502 then a 200: the reader of a FIFO gets exactly one whole PNG, not two bodies."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    png_server.script = [502, "truncate", "png"]
    reader = Reader(fifo)
    reader.start()
    async with retrying_client(png_server) as retrying:
        await retrying.save_qr_image(NAME, fifo)
    assert reader.result() == PNG
    assert png_server.requests == 3


async def test_a_failed_fetch_writes_nothing_to_a_fifo(
    png_server: PngServer, client: WachatClient, tmp_path: Path
) -> None:
    """A body cut short: the error is raised, the reader sees end of file with no bytes, and
    the FIFO is still a FIFO."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    png_server.script = ["truncate"]
    reader = Reader(fifo)
    reader.start()
    with pytest.raises(InvalidImageError):
        await client.save_qr_image(NAME, fifo)
    assert reader.result() == b""
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.parametrize("target", ["new-file", "existing-file", "fifo"])
async def test_cancelling_mid_stream_leaves_no_temp_file(
    png_server: PngServer, client: WachatClient, tmp_path: Path, target: str
) -> None:
    """Cancelled mid-body: no temp file, an existing file untouched, a FIFO still a FIFO
    (its reader sees end of file), the connection freed."""
    path = tmp_path / "qr.png"
    reader = None
    if target == "existing-file":
        path.write_bytes(b"previous")
    elif target == "fifo":
        os.mkfifo(path)
        reader = Reader(path)
        reader.start()
    png_server.script = ["stall"]
    task = asyncio.ensure_future(client.save_qr_image(NAME, path))
    await png_server.stalled.wait()
    for _ in range(20):  # let the client take in the first bytes
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_no_connection_checked_out(client)
    if target == "new-file":
        assert listing(tmp_path) == []
    else:
        assert listing(tmp_path) == ["qr.png"]
    if target == "existing-file":
        assert path.read_bytes() == b"previous"
    if reader is not None:
        assert reader.result() == b""
        assert stat.S_ISFIFO(os.lstat(path).st_mode)


# -- paths that cannot take a file ---------------------------------------------------------


def _bad_path(tmp_path: Path, case: str) -> tuple[Any, int, str]:
    """Build a path that cannot be saved to; return (path, errno, a phrase of the message)."""
    if case == "directory":
        (tmp_path / "out").mkdir()
        return tmp_path / "out", errno.EISDIR, "file name inside it"
    if case == "missing-folder":
        return tmp_path / "missing" / "qr.png", errno.ENOENT, "does not exist"
    if case == "missing-folders":
        return tmp_path / "a" / "b" / "qr.png", errno.ENOENT, "does not exist"
    if case == "parent-is-a-file":
        (tmp_path / "file.txt").write_bytes(b"x")
        return tmp_path / "file.txt" / "qr.png", errno.ENOTDIR, "not a folder"
    if case == "trailing-slash":
        return f"{tmp_path}/qr.png/", errno.EISDIR, "folder"
    if case == "empty":
        return "", errno.ENOENT, "empty"
    if case == "dot":
        return tmp_path / ".", errno.EISDIR, "file name inside it"
    if case == "dangling-into-missing-folder":
        (tmp_path / "qr.png").symlink_to(tmp_path / "gone" / "real.png")
        return tmp_path / "qr.png", errno.ENOENT, "symlink points to"
    if case == "symlink-loop":
        (tmp_path / "a.png").symlink_to("b.png")
        (tmp_path / "b.png").symlink_to("a.png")
        return tmp_path / "a.png", errno.ELOOP, "loop"
    if case == "self-loop":
        (tmp_path / "a.png").symlink_to("a.png")
        return tmp_path / "a.png", errno.ELOOP, "loop"
    if case == "symlink-to-directory":
        (tmp_path / "out").mkdir()
        (tmp_path / "qr.png").symlink_to("out")
        return tmp_path / "qr.png", errno.EISDIR, "file name inside it"
    if case == "tilde":
        return "~no-such-user-wachat/qr.png", errno.ENOENT, "'~' is not expanded"
    raise AssertionError(case)


BAD_PATHS = [
    "directory",
    "missing-folder",
    "missing-folders",
    "parent-is-a-file",
    "trailing-slash",
    "empty",
    "dot",
    "dangling-into-missing-folder",
    "symlink-loop",
    "self-loop",
    "symlink-to-directory",
    "tilde",
]


@pytest.mark.parametrize("case", BAD_PATHS)
async def test_a_path_that_cannot_take_a_file_is_a_clear_error_before_any_request(
    save: Save, png_server: PngServer, tmp_path: Path, case: str
) -> None:
    """An OSError of the right subclass naming the caller's path (never the temp file);
    nothing is created, nothing replaced, and no request is sent."""
    path, code, phrase = _bad_path(tmp_path, case)
    before = listing(tmp_path)
    with pytest.raises(OSError, match=re.escape(phrase)) as info:
        await save(path)
    assert info.value.errno == code
    assert type(info.value) is type(OSError(code, "x"))
    assert_clean_error(info.value, path)
    assert phrase in str(info.value)
    assert listing(tmp_path) == before
    assert png_server.requests == 0


async def test_a_socket_is_a_clear_error(save: Save, png_server: PngServer) -> None:
    """A Unix socket path cannot be opened for writing: a clear error, the socket stays."""
    folder = Path(tempfile.mkdtemp(prefix="wachat-"))  # short: socket paths are limited
    path = folder / "s"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        with pytest.raises(OSError, match="it is a socket") as info:
            await save(path)
        assert_clean_error(info.value, path)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert png_server.requests == 0
    finally:
        sock.close()
        path.unlink()
        folder.rmdir()


@pytest.mark.parametrize("value", [None, 3, 2.5], ids=["None", "int", "float"])
async def test_a_path_of_the_wrong_type_is_a_type_error(save: Save, value: object) -> None:
    """Not a str, bytes or PathLike: TypeError (an int is not taken as a file descriptor)."""
    with pytest.raises(TypeError):
        await save(value)


# -- failures while writing ---------------------------------------------------------------


def _fail(monkeypatch: pytest.MonkeyPatch, name: str, code: int) -> None:
    """Make os.<name> fail with *code*, the way the OS reports it (naming the temp file)."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        names = [os.fsdecode(a) for a in args if isinstance(a, (str, bytes, os.PathLike))]
        raise OSError(code, os.strerror(code), *names[:2])

    monkeypatch.setattr(os, name, broken)


@pytest.mark.parametrize(
    ("call", "code"),
    [
        pytest.param("open", errno.EACCES, id="create-permission-denied"),
        pytest.param("open", errno.EROFS, id="create-read-only-fs"),
        pytest.param("write", errno.ENOSPC, id="write-disk-full"),
        pytest.param("fsync", errno.EIO, id="fsync-io-error"),
        pytest.param("replace", errno.EXDEV, id="rename-cross-device"),
        pytest.param("replace", errno.EPERM, id="rename-not-permitted"),
    ],
)
@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
async def test_a_disk_failure_names_the_path_and_leaves_no_temp_file(
    save: Save,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    call: str,
    code: int,
    existing: bool,
) -> None:
    """The OS error is restated for the caller's path (same errno, never the temp name); the
    temp file is gone and an existing file is untouched."""
    target = tmp_path / "qr.png"
    if existing:
        target.write_bytes(b"previous")
    _fail(monkeypatch, call, code)
    with pytest.raises(OSError, match=os.strerror(code)) as info:
        await save(target)
    monkeypatch.undo()
    assert info.value.errno == code
    assert_clean_error(info.value, target)
    assert listing(tmp_path) == (["qr.png"] if existing else [])
    if existing:
        assert target.read_bytes() == b"previous"


@pytest.mark.parametrize("call", ["write", "fsync", "replace"])
@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit], ids=lambda e: e.__name__)
def test_an_interrupt_inside_the_write_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str, raised: type[BaseException]
) -> None:
    """Ctrl-C (or an exit) while the file is written: it propagates as itself, the temp file
    is removed and an existing file is untouched."""
    target = tmp_path / "qr.png"
    target.write_bytes(b"previous")

    def interrupt(*args: Any, **kwargs: Any) -> Any:
        raise raised

    monkeypatch.setattr(os, call, interrupt)
    with pytest.raises(raised):
        _files.write_bytes(target, PNG)
    monkeypatch.undo()
    assert listing(tmp_path) == ["qr.png"]
    assert target.read_bytes() == b"previous"


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
async def test_a_save_cancelled_while_the_disk_works_returns_once_it_is_settled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    """Cancelled while its worker thread is writing (a thread cannot be stopped): the
    CancelledError comes only once the thread is done, so no temp file is left after it, and
    the path holds the old file or the whole new one."""
    target = tmp_path / "qr.png"
    if existing:
        target.write_bytes(b"previous")
    loop = asyncio.get_running_loop()
    inside, release = asyncio.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        loop.call_soon_threadsafe(inside.set)
        release.wait(30)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    task = asyncio.ensure_future(_files.write_bytes_async(target, PNG))
    await inside.wait()
    task.cancel()
    await asyncio.sleep(0)
    assert not task.done()  # still waiting for the thread
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert listing(tmp_path) == ["qr.png"]
    assert target.read_bytes() == PNG


async def test_a_device_that_cannot_be_opened_is_a_clear_error(
    save: Save, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a device fails (say EACCES): the error names it and nothing else is tried."""
    real_open = os.open

    def deny(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fspath(path) == os.devnull and flags & os.O_WRONLY:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(PermissionError, match="Permission denied") as info:
        await save(os.devnull)
    assert_clean_error(info.value, os.devnull)
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


async def test_an_error_behind_a_symlink_names_the_link_and_says_where_it_points(
    save: Save, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller's path is the link; the message adds the target the write went to."""
    (tmp_path / "elsewhere").mkdir()
    real = tmp_path / "elsewhere" / "real.png"
    link = tmp_path / "qr.png"
    link.symlink_to(real)
    _fail(monkeypatch, "replace", errno.EXDEV)
    with pytest.raises(OSError, match="where the symlink points") as info:
        await save(link)
    monkeypatch.undo()
    assert_clean_error(info.value, link)
    assert str(real) in str(info.value)
    assert listing(tmp_path / "elsewhere") == []


@pytest.mark.parametrize(
    ("code", "ok"),
    [
        pytest.param(errno.EINVAL, True, id="EINVAL-folder-cannot-sync"),
        pytest.param(errno.EIO, False, id="EIO"),
    ],
)
async def test_a_folder_that_cannot_be_synced(
    save: Save, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, ok: bool
) -> None:
    """A file system that cannot fsync a folder (EINVAL) is fine; a real I/O error is
    reported, saying the file was saved; either way the PNG is in place and no temp is left."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(code, os.strerror(code))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    target = tmp_path / "qr.png"
    if ok:
        await save(target)
    else:
        with pytest.raises(OSError, match="saved, but its folder could not be synced") as info:
            await save(target)
        assert_clean_error(info.value, target)
    assert target.read_bytes() == PNG
    assert listing(tmp_path) == ["qr.png"]


def test_permission_denied_for_real_names_the_path() -> None:
    """A folder the user cannot write to: PermissionError naming the path, no temp file.
    As root (whose CAP_DAC_OVERRIDE ignores mode bits) the save runs in a child process
    without that capability."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root without setpriv (util-linux) cannot be denied by mode bits")
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]
    folder = Path(tempfile.mkdtemp(prefix="wachat-ro-"))
    try:
        folder.chmod(0o555)
        target = folder / "qr.png"
        code = (
            "import json, sys\n"
            "from wachat_async import QRImage\n"
            "qr = QRImage.from_png(bytes.fromhex(sys.argv[2]), instance_name='x')\n"
            "try:\n"
            "    qr.save(sys.argv[1])\n"
            "except OSError as exc:\n"
            "    print(json.dumps([exc.errno, exc.filename, str(exc)]))\n"
        )
        done = subprocess.run(  # noqa: S603 - our interpreter, a fixed script
            [*prefix, sys.executable, "-c", code, str(target), PNG.hex()],
            capture_output=True,
            text=True,
            check=True,
        )
        number, filename, message = json.loads(done.stdout)
        assert number == errno.EACCES
        assert filename == str(target)
        assert ".part" not in message
        assert "cannot create a file in the folder" in message
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)
        for leftover in folder.iterdir():
            leftover.unlink()
        folder.rmdir()


# -- durability and the event loop ---------------------------------------------------------


@pytest.fixture
def disk_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, bool]]:
    """Record (call, kind of fd or path, on the main thread?) for fsync and replace."""
    calls: list[tuple[str, str, bool]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        calls.append(("fsync", kind, threading.current_thread() is threading.main_thread()))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        calls.append(("replace", "", threading.current_thread() is threading.main_thread()))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


async def test_the_temp_file_is_fsynced_before_the_rename_and_the_folder_after(
    save: Save, tmp_path: Path, disk_calls: list[tuple[str, str, bool]]
) -> None:
    """Atomic and durable: fsync(file), rename, fsync(folder), in that order."""
    await save(tmp_path / "qr.png")
    assert [(call, kind) for call, kind, _ in disk_calls] == [
        ("fsync", "file"),
        ("replace", ""),
        ("fsync", "folder"),
    ]


@pytest.mark.parametrize("mode", ["save_qr_image", "write_bytes_async"])
async def test_the_async_saves_wait_for_the_disk_off_the_event_loop(
    mode: str, client: WachatClient, tmp_path: Path, disk_calls: list[tuple[str, str, bool]]
) -> None:
    """Every fsync and the rename run in a worker thread, never on the loop's thread."""
    if mode == "save_qr_image":
        await client.save_qr_image(NAME, tmp_path / "qr.png")
    else:
        await _files.write_bytes_async(tmp_path / "qr.png", PNG)
    assert len(disk_calls) == 3
    assert not any(on_main for _, _, on_main in disk_calls)


async def test_a_retried_save_keeps_only_the_last_body(
    png_server: PngServer, client: WachatClient, tmp_path: Path
) -> None:
    """A body cut short then a whole one (transport retries on): the file is exactly one PNG."""
    png_server.script = ["truncate", "png"]
    async with retrying_client(png_server) as retrying:
        target = await retrying.save_qr_image(NAME, tmp_path / "qr.png")
    assert target.read_bytes() == PNG
    assert listing(tmp_path) == ["qr.png"]


# -- the CLI's -o ----------------------------------------------------------------------------


@pytest.fixture
def cli_server(monkeypatch: pytest.MonkeyPatch, png_server: PngServer) -> PngServer:
    """WACHAT_API_KEY and WACHAT_BASE_URL pointing the CLI at png_server."""
    monkeypatch.setenv("WACHAT_API_KEY", KEY)
    monkeypatch.setenv("WACHAT_BASE_URL", png_server.base_url)
    return png_server


async def run_cli(*argv: str) -> int:
    """main(argv) in a thread (it calls asyncio.run; this test's loop serves png_server)."""
    return await asyncio.to_thread(main, list(argv))


async def test_cli_fetch_to_dev_null_keeps_the_device(
    cli_server: PngServer, capfd: pytest.CaptureFixture[str]
) -> None:
    """wachat-qr fetch NAME -o /dev/null succeeds and /dev/null stays a character device."""
    code = await run_cli("fetch", NAME, "-o", os.devnull)
    assert code == 0
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert f"saved {os.devnull}" in capfd.readouterr().out


@pytest.mark.parametrize("case", ["directory", "missing-folder", "parent-is-a-file"])
async def test_cli_fetch_to_a_bad_path_names_it(
    cli_server: PngServer, capfd: pytest.CaptureFixture[str], tmp_path: Path, case: str
) -> None:
    """-o into a folder or a missing one: exit EXIT_FILE, stderr names the path, no .part."""
    path, _, phrase = _bad_path(tmp_path, case)
    code = await run_cli("fetch", NAME, "-o", str(path))
    err = capfd.readouterr().err
    assert code == EXIT_FILE
    assert f"{path}: " in err
    assert phrase in err
    assert ".part" not in err
    assert KEY not in err
