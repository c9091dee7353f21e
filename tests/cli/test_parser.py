"""The command line's grammar (wachat_async.cli._parser), seen through main(): bad command
lines are one-line usage errors (exit 2) that state the true bounds, before any request."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import segno

from tests.cli._support import Run
from tests.conftest import KEY, NAME
from wachat_async._polling import MIN_INTERVAL
from wachat_async.testing import FakeWachatServer


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no-command"),
        pytest.param(["fetch"], id="missing-name"),
        pytest.param(["poll", "--concurrency", "0", NAME], id="zero-concurrency"),
        pytest.param(["watch", NAME, "--interval", "-1"], id="negative-interval"),
        pytest.param(["nope"], id="unknown-command"),
        pytest.param(["demo", "--instances", "3"], id="demo-too-small"),
        pytest.param(["fetch", NAME, "--timeout", "soon"], id="bad-timeout"),
        pytest.param(["poll", "--concurrency", "many", NAME], id="non-integer"),
        pytest.param(["fetch", NAME, "-o", ""], id="empty-path"),
        pytest.param(["poll", NAME, "-d", "a\x00b"], id="nul-in-path"),
        pytest.param(["show", NAME, "--color", "pink"], id="bad-choice"),
        pytest.param(["fake-server", "--port", "70000"], id="port-too-high"),
        pytest.param(["fake-server", "--latency", "-1"], id="negative-latency"),
    ],
)
def test_usage_errors_exit_2(run: Callable[..., Run], argv: list[str]) -> None:
    """Bad command lines exit 2 with an error line and a --help hint on stderr, nothing else."""
    result = run(*argv)
    assert (result.code, result.out) == (2, "")
    lines = result.err.splitlines()
    assert len(lines) == 2
    assert ": error: " in lines[0]
    assert lines[1].startswith("wachat-qr: hint: try 'wachat-qr")


@pytest.mark.parametrize(
    ("argv", "bound"),
    [
        pytest.param(["fetch", NAME, "--retries", "-2"], "from 0 to 100, got '-2'", id="retries"),
        pytest.param(["show", NAME, "--border", "-3"], "from 0 to 100, got '-3'", id="border"),
        pytest.param(["fetch", NAME, "--timeout", "0"], "number > 0, got '0'", id="timeout"),
        pytest.param(["fetch", NAME, "--timeout", "nan"], "number > 0, got 'nan'", id="nan"),
        pytest.param(["poll", NAME, "-c", "0"], "integer >= 1, got '0'", id="concurrency"),
        pytest.param(["watch", NAME, "-i", "-1"], "number > 0, got '-1'", id="interval"),
        pytest.param(["watch", NAME, "-n", "0"], "integer >= 1, got '0'", id="count"),
        pytest.param(["demo", "--instances", "3"], "from 12 to 10000, got '3'", id="demo"),
        pytest.param(["demo", "-c", "-1"], "integer >= 1, got '-1'", id="demo-concurrency"),
        pytest.param(["fake-server", "--port", "-1"], "from 0 to 65535", id="port"),
        pytest.param(["fake-server", "--latency", "-1"], ">= 0, got '-1'", id="latency"),
        pytest.param(["fake-server", "--rotation", "-1"], ">= 0, got '-1'", id="rotation"),
        pytest.param(["fake-server", "--duration", "0"], "> 0, got '0'", id="duration"),
        pytest.param(["fake-server", "--log-limit", "-1"], ">= 0, got '-1'", id="log-limit"),
        pytest.param(["fake-server", "--instances", "-1"], "from 0 to 100000", id="instances"),
    ],
)
def test_numeric_options_state_their_true_bound(
    run: Callable[..., Run], argv: list[str], bound: str
) -> None:
    """Every numeric option's error names the bound it really enforces (0 where 0 is valid)."""
    result = run(*argv)
    assert result.code == 2
    assert bound in result.err.splitlines()[0]
    assert ">= 1" not in result.err or ">= 1" in bound


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["fake-server", "--port", "0"], id="port"),
        pytest.param(["fake-server", "--port", "0", "--rotation", "0"], id="rotation"),
        pytest.param(["fake-server", "--port", "0", "--latency", "0"], id="latency"),
    ],
)
def test_documented_zeros_are_accepted_by_the_fake_server(
    run: Callable[..., Run], argv: list[str]
) -> None:
    """0 is documented for these options, so the program takes it and runs."""
    result = run(*argv, "--duration", "0.01")
    assert result.code == 0
    assert result.out.startswith("Fake Wachat server listening on http://127.0.0.1:")


def test_retries_0_is_accepted_and_means_one_attempt(
    run: Callable[..., Run], env: FakeWachatServer
) -> None:
    """--retries 0 (documented: "0 disables") parses, and a 502 is then tried once."""
    env.script(NAME, [502, 502])
    result = run("fetch", NAME, "--retries", "0")
    assert result.code == 5
    assert env.request_count(NAME) == 1


def test_border_0_is_accepted_and_draws_no_quiet_zone(
    run: Callable[..., Run], env: FakeWachatServer
) -> None:
    """--border 0 (documented) parses, and the drawing is exactly as wide as the symbol."""
    modules = len(segno.make_qr(env.qr_payload(NAME), error="m").matrix)
    result = run("show", NAME, "--border", "0")
    assert result.code == 0
    assert {len(line) for line in result.out.rstrip("\n").split("\n")} == {modules}


BAD_NAMES = [
    pytest.param(" ", id="space"),
    pytest.param("", id="empty"),
    pytest.param("\t", id="tab-only"),
    pytest.param("a\tb", id="tab"),
    pytest.param("a\nb", id="newline"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\x1b[31mb", id="ansi-escape"),
    pytest.param("a\u0085b", id="c1-control"),
]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("command", ["fetch", "show", "url", "watch", "poll"])
def test_a_bad_name_is_a_one_line_usage_error(
    run: Callable[..., Run], env: FakeWachatServer, command: str, name: str
) -> None:
    """A name the API could never have: exit 2, an error line and a --help hint, no request."""
    result = run(command, name)
    assert (result.code, result.out) == (2, "")
    lines = result.err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"wachat-qr {command}: error: ")
    assert lines[1] == f"wachat-qr: hint: try 'wachat-qr {command} --help'"
    assert "\x00" not in result.err
    assert "\x1b" not in result.err
    assert env.request_count() == 0


def test_options_go_before_or_after_the_command(
    run: Callable[..., Run], env: FakeWachatServer
) -> None:
    """The connection and output options work on either side of the command's name."""
    before = run("-q", "--retries", "0", "fetch", NAME, "-o", "a.png")
    after = run("fetch", NAME, "-o", "b.png", "-q", "--retries", "0")
    assert (before.code, before.out, after.code, after.out) == (0, "", 0, "")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(["--api-key"], "argument --api-key: expected one argument", id="bare"),
        pytest.param(
            ["--api-key", KEY, "fetch", NAME, "--api-key"],
            "argument --api-key: expected one argument",
            id="second-without-value",
        ),
        pytest.param(
            ["url", NAME, f"--api-key={KEY}", "extra", "apiKey=guess"],
            "unrecognized arguments: extra apiKey=[REDACTED]",
            id="credential-shaped-leftover",
        ),
    ],
)
def test_parse_errors_about_the_api_key_option_stay_readable(
    run: Callable[..., Run], argv: list[str], expected: str
) -> None:
    """The option's own name is not mistaken for an `api-key: <secret>` pair; the rest of the
    line is still redacted (a known key, anything shaped like a credential)."""
    result = run(*argv)
    assert result.code == 2
    assert result.err.splitlines()[0].endswith(f"error: {expected}")


@pytest.mark.parametrize("command", ["fetch", "show", "url", "watch"])
def test_every_single_name_command_explains_name(run: Callable[..., Run], command: str) -> None:
    """``NAME`` has the same help line on each command that takes one instance name."""
    result = run(command, "--help")
    assert result.code == 0
    assert (
        " ".join(result.out.split()).count("NAME instance name, e.g. t1_mq9r2jov_jakarta_store")
        == 1
    ), result.out


def test_watch_help_states_the_interval_floor(run: Callable[..., Run]) -> None:
    """--interval's help says the floor that watch_qr applies (MIN_INTERVAL), not only "> 0"."""
    result = run("watch", "--help")
    text = " ".join(result.out.split())
    assert f"never under {MIN_INTERVAL:g}: a shorter interval counts as {MIN_INTERVAL:g}" in text


def test_poll_help_says_only_whole_lines_are_comments(run: Callable[..., Run]) -> None:
    """--from-file's help says a ``#`` later in a line is part of the name."""
    text = " ".join(run("poll", "--help").out.split())
    assert "a line starting with # is a comment (a # later in a line is part of the name)" in text
