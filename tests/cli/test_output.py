"""Where the CLI writes (wachat_async.cli._output): redaction, piped tables, colours, and a
terminal that cannot print block characters."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable

import pytest

from tests.cli._support import Run, decode, terminal_to_image
from tests.conftest import KEY, NAME
from wachat_async.testing import FakeWachatServer


def test_piped_tables_never_wrap_names_or_end_in_spaces(
    run: Callable[..., Run], env: FakeWachatServer
) -> None:
    """Piped, the summary is as wide as its content: long names whole, no trailing spaces."""
    long_names = [f"t1_longname_{'x' * 150}_{i}" for i in range(3)]
    result = run("poll", NAME, *long_names)
    assert result.code == 1
    lines = result.out.splitlines()
    for name in long_names:
        assert sum(name in line for line in lines) == 1
    assert [line for line in lines if line != line.rstrip()] == []
    assert max(len(line) for line in lines) > 160


def test_a_very_short_key_does_not_garble_the_output(
    run: Callable[..., Run], fake: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The redaction safety net skips keys too short to be secrets ("x" is in "extra")."""
    monkeypatch.setenv("WACHAT_API_KEY", "x")
    monkeypatch.setitem(sys.modules, "rich", None)
    result = run("poll", NAME, "--base-url", fake.base_url)
    assert result.code == 2
    assert "'cli' extra" in result.err


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--api-key", KEY], id="flag"),
        pytest.param([f"--api-key={KEY}"], id="flag-equals"),
        pytest.param([], id="environment"),
    ],
)
def test_a_key_in_a_command_line_that_does_not_parse_is_redacted(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    """Even argparse's own message about a bad value never shows the key."""
    from wachat_async.cli import main

    monkeypatch.setenv("WACHAT_API_KEY", KEY)
    assert main([*argv, "fetch", NAME, "--timeout", KEY]) == 2
    err = capsys.readouterr().err
    assert "--timeout" in err
    assert KEY not in err
    assert "[REDACTED]" in err


@pytest.mark.parametrize(
    ("argv", "tty", "no_color", "colored"),
    [
        pytest.param(["--color", "always"], False, False, True, id="always"),
        pytest.param(["--color", "never"], True, False, False, id="never"),
        pytest.param([], True, False, True, id="auto-terminal"),
        pytest.param([], True, True, False, id="auto-terminal-NO_COLOR"),
        pytest.param([], False, False, False, id="auto-pipe"),
    ],
)
def test_show_in_colour_reads_right_on_any_terminal(
    run: Callable[..., Run],
    env: FakeWachatServer,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    tty: bool,
    no_color: bool,
    colored: bool,
) -> None:
    """With colours the dark modules are drawn black on white; the QR still decodes."""
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    if not no_color:
        monkeypatch.delenv("NO_COLOR")
    result = run("show", NAME, *argv)
    assert result.code == 0
    assert ("\x1b[30;107m" in result.out) is colored
    plain = result.out.replace("\x1b[30;107m", "").replace("\x1b[0m", "")
    assert decode(terminal_to_image(plain, invert=colored)) == env.qr_payload(NAME)


def test_show_on_a_terminal_without_unicode(
    run: Callable[..., Run], env: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A terminal that cannot encode block characters gets a usage hint, not a traceback."""
    ascii_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", ascii_out)
    result = run("show", NAME)
    assert result.code == 2
    assert "PYTHONIOENCODING=utf-8" in result.err


def test_error_lines_escape_control_characters(
    run: Callable[..., Run], env: FakeWachatServer
) -> None:
    """A message carrying a newline and an escape (here a file name) stays one line, the escape
    shown, never sent raw to the terminal."""
    result = run("fetch", NAME, "-o", "no-such-dir/a\x1b[31m\nb.png")
    assert result.code == 8
    assert result.err.count("\n") == 1
    assert "\x1b" not in result.err
    assert "no-such-dir/a\\x1b[31m b.png: " in result.err
