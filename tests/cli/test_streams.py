"""stdout and stderr that cannot be written: closed (``>&-``), full (``/dev/full``), failing.

As Unix tools do: a gone reader (EPIPE) stops quietly with 141 (tests/cli/test_main.py); any
other failure to write a result on stdout is one line on stderr and exit 8 (a local I/O
error), ``--help`` and ``--version`` included; a stderr that cannot be written never fails a
command (it carries diagnostics only). Both programs: ``wachat-qr`` and the fake server's.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO, cast

import pytest
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

from tests.cli._support import OTHER, Run, instance_rows
from tests.conftest import KEY, NAME
from wachat_async.cli import main
from wachat_async.cli._output import Out
from wachat_async.testing import FakeWachatServer
from wachat_async.testing.__main__ import _build_parser as build_fake_server_parser
from wachat_async.testing.__main__ import main as fake_server_main
from wachat_async.testing.__main__ import serve
from wachat_async.testing._program import (
    ClosedStream,
    OutputError,
    print_message,
    silence,
    writing,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX descriptors, /dev/full")

WACHAT_QR = [sys.executable, "-m", "wachat_async"]
FAKE_SERVER = [sys.executable, "-m", "wachat_async.testing"]

#: Every kind of run that writes a result on stdout: (program, arguments).
WRITERS = [
    pytest.param(WACHAT_QR, ["--help"], id="help"),
    pytest.param(WACHAT_QR, ["--version"], id="version"),
    pytest.param(WACHAT_QR, ["fetch", "--help"], id="fetch-help"),
    pytest.param(WACHAT_QR, ["url", NAME], id="url"),
    pytest.param(WACHAT_QR, ["fetch", NAME, "-o", "-"], id="fetch-to-stdout"),
    pytest.param(WACHAT_QR, ["fetch", NAME, "-o", "qr.png"], id="fetch-saved-line"),
    pytest.param(WACHAT_QR, ["show", NAME], id="show"),
    pytest.param(WACHAT_QR, ["poll", NAME, OTHER], id="poll-table"),
    pytest.param(WACHAT_QR, ["poll", NAME, OTHER, "--json"], id="poll-json"),
    pytest.param(WACHAT_QR, ["watch", NAME, "--no-show", "-n", "1"], id="watch"),
    pytest.param(WACHAT_QR, ["fake-server", "--port", "0", "--duration", "60"], id="fake-server"),
    pytest.param(FAKE_SERVER, ["--port", "0", "--duration", "60"], id="testing-module"),
    pytest.param(FAKE_SERVER, ["--help"], id="testing-module-help"),
]

#: What stdout is, and the reason the one error line gives.
BROKEN_STDOUT = [
    pytest.param("closed", "Bad file descriptor", id="closed"),
    pytest.param("full", "No space left on device", id="dev-full"),
]


def _run(
    program: list[str],
    argv: list[str],
    server: FakeWachatServer,
    cwd: Path,
    *,
    stdout: str,
    stderr: str = "pipe",
) -> tuple[int, bytes, bytes]:
    """Run *program* with stdout and stderr each a pipe, closed, or /dev/full."""
    env = {**os.environ, "WACHAT_API_KEY": KEY, "WACHAT_BASE_URL": server.base_url}
    redirect = {"closed": ">&-", "full": ">/dev/full", "pipe": ""}
    err_redirect = {"closed": "2>&-", "full": "2>/dev/full", "pipe": ""}
    # The shell closes or redirects the descriptors before Python starts, as a user's would.
    script = f'exec "$@" {redirect[stdout]} {err_redirect[stderr]}'
    done = subprocess.run(  # noqa: S603 - our own interpreter and module, a fixed script
        ["/bin/sh", "-c", script, "sh", *program, *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize(("stdout", "reason"), BROKEN_STDOUT)
@pytest.mark.parametrize(("program", "argv"), WRITERS)
def test_a_stdout_that_cannot_be_written_is_one_line_and_exit_8(
    fake: FakeWachatServer,
    cli_env: Path,
    program: list[str],
    argv: list[str],
    stdout: str,
    reason: str,
) -> None:
    """Closed or full stdout: exit 8 (not 0, not 70) and exactly one line saying why."""
    code, _, err = _run(program, argv, fake, cli_env, stdout=stdout)
    prog = "wachat-qr" if program == WACHAT_QR else "python -m wachat_async.testing"
    assert (code, err.decode()) == (8, f"{prog}: error: cannot write to stdout: {reason}\n")


@pytest.mark.parametrize("stderr", ["closed", "full"])
@pytest.mark.parametrize(
    ("program", "argv"),
    [
        pytest.param(WACHAT_QR, ["url", NAME], id="url"),
        pytest.param(WACHAT_QR, ["show", NAME], id="show-note-on-stderr"),
        pytest.param(WACHAT_QR, ["fetch", NAME, "-o", "-"], id="fetch-to-stdout"),
        pytest.param(WACHAT_QR, ["-v", "--debug", "poll", NAME, "t1_nothere0_store"], id="logs"),
        pytest.param(FAKE_SERVER, ["--port", "0", "--duration", "0.01"], id="testing-module"),
    ],
)
def test_a_stderr_that_cannot_be_written_never_fails_a_command(
    fake: FakeWachatServer, cli_env: Path, program: list[str], argv: list[str], stderr: str
) -> None:
    """Diagnostics that cannot be written are dropped: the result and exit status stand."""
    code, out, _ = _run(program, argv, fake, cli_env, stdout="pipe", stderr=stderr)
    assert code == (1 if "poll" in argv else 0)
    assert out


@pytest.mark.parametrize(("stdout", "reason"), BROKEN_STDOUT)
def test_an_error_with_both_streams_unwritable_still_has_its_status(
    fake: FakeWachatServer, cli_env: Path, stdout: str, reason: str
) -> None:
    """Nowhere to write at all: no crash, the exit status of the failure (stdout's, 8)."""
    code, _, _ = _run(WACHAT_QR, ["url", NAME], fake, cli_env, stdout=stdout, stderr="closed")
    assert code == 8


# -- in process: every errno, every kind of write -------------------------------------------


class Failing(io.StringIO):
    """A stdout whose writes (text and bytes) fail with one errno."""

    def __init__(self, error: int) -> None:
        super().__init__()
        self.error = error
        self.buffer = self  # fetch -o - writes bytes here

    def write(self, text: object) -> int:
        if not text:
            return 0
        raise OSError(self.error, os.strerror(self.error))


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(errno.EBADF, id="EBADF"),
        pytest.param(errno.ENOSPC, id="ENOSPC"),
        pytest.param(errno.EIO, id="EIO"),
        pytest.param(errno.EDQUOT, id="EDQUOT"),
    ],
)
@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--version"], id="version"),
        pytest.param(["poll", "--help"], id="poll-help"),
        pytest.param(["url", NAME], id="url"),
        pytest.param(["fetch", NAME, "-o", "-"], id="fetch-to-stdout"),
        pytest.param(["poll", NAME, OTHER], id="poll-table"),
        pytest.param(["poll", NAME, OTHER, "--json"], id="poll-json"),
    ],
)
def test_every_write_error_of_stdout_is_exit_8(
    run: Callable[..., Run],
    env: FakeWachatServer,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    error: int,
) -> None:
    """Whatever the errno (but EPIPE), a failed write of stdout: one line, exit 8."""
    monkeypatch.setattr(sys, "stdout", Failing(error))
    result = run(*argv)
    assert (result.code, result.err) == (
        8,
        f"wachat-qr: error: cannot write to stdout: {os.strerror(error)}\n",
    )


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_none_stream_gets_a_stand_in_and_is_put_back(
    env: FakeWachatServer, monkeypatch: pytest.MonkeyPatch, stream: str
) -> None:
    """Python's None for a stream closed at start: writes fail with EBADF; None is restored."""
    monkeypatch.setattr(sys, stream, None)
    if stream == "stderr":
        monkeypatch.setattr(sys, "stdout", io.StringIO())
        assert main(["url", NAME]) == 0
        assert sys.stdout.getvalue().endswith(f"instanceName={NAME}\n")
        assert main(["fetch", "t1_nothere0_store"]) == 4  # its error line has nowhere to go
    else:
        assert main(["url", NAME]) == 8
    assert getattr(sys, stream) is None


def test_the_closed_stream_stand_in() -> None:
    """Writing nothing succeeds (rich does it), anything else is EBADF; no descriptor."""
    closed = ClosedStream("<stdout>")
    assert (closed.write(""), closed.buffer.write(b"")) == (0, 0)
    for write in (lambda: closed.write("x"), lambda: closed.buffer.write(b"x")):
        with pytest.raises(OSError, match="Bad file descriptor") as raised:
            write()
        assert raised.value.errno == errno.EBADF
    assert not closed.isatty()
    assert closed.writable()
    closed.flush()
    closed.buffer.flush()
    for read in (closed.read, closed.buffer.read):
        with pytest.raises(OSError, match="Bad file descriptor"):
            read()
    with pytest.raises(OSError, match="closed when the program started"):
        closed.fileno()
    silence(closed)  # nothing to point at /dev/null: no error either


@pytest.mark.parametrize(
    ("raised", "passes"),
    [
        pytest.param(BrokenPipeError(errno.EPIPE, "Broken pipe"), True, id="epipe-passes"),
        pytest.param(UnicodeEncodeError("ascii", "é", 0, 1, "no"), True, id="unicode-passes"),
        pytest.param(OSError(errno.ENOSPC, "No space left"), False, id="enospc"),
        pytest.param(ValueError("I/O operation on closed file."), False, id="closed-file"),
    ],
)
def test_writing_turns_only_write_failures_into_output_errors(
    raised: BaseException, passes: bool
) -> None:
    """EPIPE and encoding errors keep their own handling; the rest is an OutputError."""
    expected: type[BaseException] = type(raised) if passes else OutputError
    with pytest.raises(expected) as caught, writing("stdout"):
        raise raised
    if not passes:
        assert str(caught.value).startswith("cannot write to stdout: ")


# -- a stdout whose encoding cannot carry every character ------------------------------------

UNICODE_NAME = "t1_tökö_日本_store"


@pytest.mark.parametrize("encoding", ["ascii", "latin-1", "utf-8"])
@pytest.mark.parametrize("json_lines", [False, True], ids=["table", "json"])
def test_poll_output_survives_any_stdout_encoding(
    fake: FakeWachatServer, cli_env: Path, encoding: str, json_lines: bool
) -> None:
    """PYTHONIOENCODING=ascii or latin-1: the table is drawn (ASCII borders, escaped names,
    columns aligned) and JSON lines stay valid JSON naming the true instance; exit 1 as for
    any failed instance, never a codec error."""
    env = {
        **os.environ,
        "WACHAT_API_KEY": KEY,
        "WACHAT_BASE_URL": fake.base_url,
        "PYTHONIOENCODING": encoding,
    }
    argv = ["poll", NAME, UNICODE_NAME, *(["--json"] if json_lines else [])]
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [*WACHAT_QR, *argv], env=env, cwd=cli_env, capture_output=True, timeout=60, check=False
    )
    out = done.stdout.decode(encoding)
    assert (done.returncode, done.stderr) == (1, b"")
    if json_lines:
        names = sorted(row["instance"] for row in instance_rows(out))
        assert names == sorted([NAME, UNICODE_NAME])
    else:
        rows = [line for line in out.splitlines() if "InstanceNotFoundError" in line]
        table = [line for line in out.splitlines() if line[:1] in "|│┃+┏┗┡└╭╰┌"]
        assert len(rows) == 2  # the count row and the failure row
        assert len({cell_len(line) for line in table[-4:]}) == 1  # aligned (display width)
        shown = (
            UNICODE_NAME
            if encoding == "utf-8"
            else UNICODE_NAME.encode(encoding, "backslashreplace").decode(encoding)
        )
        assert any(shown in row for row in rows)


# -- in process: the pieces the subprocess tests exercise ------------------------------------


@pytest.mark.parametrize(
    ("error", "code", "err"),
    [
        pytest.param(errno.ENOSPC, 8, "cannot write to stdout: No space left on device", id="full"),
        pytest.param(errno.EPIPE, 141, "", id="gone-reader"),
    ],
)
def test_the_fake_server_program_help_into_a_failing_stdout(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: int,
    code: int,
    err: str,
) -> None:
    """`python -m wachat_async.testing --help` into a full stdout is exit 8 with one line;
    into a gone reader, 141 and nothing."""
    monkeypatch.setattr(sys, "stdout", FailingWith(error))
    assert fake_server_main(["--help"]) == code
    assert capsys.readouterr().err == (
        f"python -m wachat_async.testing: error: {err}\n" if err else ""
    )


class FailingWith(Failing):
    """Failing, raising BrokenPipeError for EPIPE as a real stream does."""

    def write(self, text: object) -> int:
        if text and self.error == errno.EPIPE:
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
        return super().write(text)


@pytest.mark.parametrize(
    ("dual", "line"),
    [
        pytest.param(
            True, "  # IPv4 clients too (one dual-stack socket): http://127.0.0.1:", id="dual"
        ),
        pytest.param(
            False, "  # IPv6 only on this system: for IPv4 clients use --host 0.0.0.0", id="v6only"
        ),
    ],
)
async def test_serve_on_ipv6_any_says_which_families_it_serves(
    monkeypatch: pytest.MonkeyPatch, dual: bool, line: str
) -> None:
    """--host ::: with a dual-stack socket an IPv4 base URL follows the [::1] one; where the
    OS cannot (simulated), a line says IPv4 clients need --host 0.0.0.0."""
    if not socket.has_ipv6:  # pragma: no cover - every CI machine has IPv6 loopback
        pytest.skip("no IPv6")
    monkeypatch.setattr(socket, "has_dualstack_ipv6", lambda: dual)
    args = build_fake_server_parser().parse_args(
        ["--host", "::", "--port", "0", "--duration", "0.01"]
    )
    out, err = io.StringIO(), io.StringIO()
    assert await serve(args, stdout=out, stderr=err) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("Fake Wachat server listening on http://[::1]:")
    assert any(printed.startswith(line) for printed in lines), lines


def test_print_message_to_another_file_is_a_diagnostic() -> None:
    """argparse's usage to a given file is written there, and a failure there is ignored."""
    target = io.StringIO()
    print_message("usage: x\n", target)
    print_message("", target)
    print_message("usage: y\n", Failing(errno.ENOSPC))
    assert target.getvalue() == "usage: x\n"


def test_silence_points_a_real_descriptor_at_dev_null(tmp_path: Path) -> None:
    """After silence(), what is still buffered for the stream goes to /dev/null, not its file."""
    path = tmp_path / "out.txt"
    with path.open("w", encoding="utf-8") as stream:
        stream.write("kept\n")
        stream.flush()
        stream.write("buffered, then dropped\n")
        silence(cast(TextIO, stream))
    assert path.read_text(encoding="utf-8") == "kept\n"


def test_a_result_stdout_cannot_encode_is_written_escaped(
    run: Callable[..., Run], env: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ASCII stdout and a non-ASCII path: the saved line is escaped, not a codec error."""
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="ascii"))
    result = run("fetch", NAME, "-o", "tökö.png")
    sys.stdout.flush()
    assert (result.code, result.err) == (0, "")
    assert raw.getvalue().startswith(b"saved t\\xf6k\\xf6.png (")


def test_tables_on_a_terminal_put_the_title_on_a_line_of_its_own(
    env: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal (rich's own layout) the title is still a whole line above the table."""
    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=30, no_color=True)
    monkeypatch.setattr(Out, "console", lambda self, *, stderr: terminal)
    table = Table(title="100000 instances in 1234.57 s")
    table.add_column("outcome")
    table.add_row("ok")
    Out(False, []).tables(table, Table())
    assert screen.getvalue().splitlines()[0] == "100000 instances in 1234.57 s"


def test_a_table_cell_is_escaped_for_an_ascii_stdout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Out.cell escapes what stdout cannot encode (and redacts), before the layout."""
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO(), encoding="ascii"))
    out = Out(False, [KEY])
    assert out.cell(f"tökö {KEY}") == "t\\xf6k\\xf6 [REDACTED]"
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO(), encoding="utf-8"))
    assert out.cell("tökö") == "tökö"


def test_an_interrupt_in_process_is_exit_130(
    run: Callable[..., Run], env: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C inside a command: one line, exit 130 (the stand-in streams are put back)."""

    async def interrupted(self: object, name: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("wachat_async.WachatClient.get_qr_image", interrupted)
    result = run("fetch", NAME)
    assert (result.code, result.err) == (130, "wachat-qr: error: interrupted\n")
