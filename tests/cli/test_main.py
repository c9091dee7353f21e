"""wachat_async.cli.main: the program's frame. Help, -m, the exit-status guard (interrupts,
bugs, --debug, late errors), broken pipes, and the property that nothing ever escapes."""

from __future__ import annotations

import importlib
import importlib.metadata
import io
import json
import logging
import os
import runpy
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cli._support import OTHER, Run, cli_process
from tests.conftest import KEY, NAME
from wachat_async import WachatClient, WachatError, cli
from wachat_async.cli import EXIT_CODES, main
from wachat_async.testing import FakeWachatServer, Fault

# -- help, version, python -m ---------------------------------------------------------------


def test_help_lists_commands_and_exit_codes(run: Callable[..., Run]) -> None:
    """--help exits 0 and documents the commands, the key's env var and the exit codes."""
    result = run("--help")
    assert result.code == 0
    for word in ("fetch", "show", "url", "poll", "watch", "state", "fake-server", "demo"):
        assert word in result.out
    assert "WACHAT_API_KEY" in result.out
    assert "3 authentication (401/403)" in result.out
    assert "visible in `ps`" in result.out


def test_version(run: Callable[..., Run]) -> None:
    """--version prints the program name and version."""
    result = run("--version")
    assert result.code == 0
    assert result.out.startswith("wachat-qr ")


def test_no_command_names_the_commands_and_the_demo(run: Callable[..., Run]) -> None:
    """Without a command: exit 2, the list of commands, and a hint to try the demo."""
    result = run()
    assert result.code == 2
    assert result.err.splitlines() == [
        "wachat-qr: error: a command is needed: "
        "fetch, show, url, poll, watch, state, doctor, fake-server, demo",
        "wachat-qr: hint: try 'wachat-qr demo', or 'wachat-qr --help'",
    ]


def test_python_dash_m_runs_main(tmp_path: Path) -> None:
    """python -m wachat_async is the same program, with main's exit status."""
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [
            sys.executable,
            "-m",
            "wachat_async",
            "url",
            NAME,
            "--base-url",
            "https://example.test/api/v1",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout == f"https://example.test/api/v1/instance/qr/image?instanceName={NAME}\n"
    failed = subprocess.run(
        [sys.executable, "-m", "wachat_async", "fetch"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert failed.returncode == 2


def test_python_dash_m_in_process(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """__main__.py raises SystemExit with main's status."""
    monkeypatch.setattr(sys, "argv", ["wachat_async", "--version"])
    main_py = Path(cli.__file__).parent.with_name("__main__.py")
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(main_py), run_name="__main__")
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("wachat-qr ")


def test_importing_main_module_runs_nothing() -> None:
    """Importing wachat_async.__main__ (docs tools do) does not run the command line."""
    module = importlib.import_module("wachat_async.__main__")
    assert module.main is cli.main


def test_the_console_script_is_main() -> None:
    """The installed `wachat-qr` command runs wachat_async.cli:main."""
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="wachat-qr")
    assert script.value == "wachat_async.cli:main"
    assert script.load() is main


def test_the_library_never_imports_the_cli(tmp_path: Path) -> None:
    """`import wachat_async` (and its testing package) loads no module of the CLI."""
    code = (
        "import sys, wachat_async, wachat_async.testing\n"
        "print(sorted(m for m in sys.modules if m.startswith('wachat_async.cli')))\n"
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter, fixed code
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=True,
    )
    assert done.stdout == "[]\n"


# -- the guard: interrupts, late errors, bugs -------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(
    ("signum", "code", "line"),
    [
        pytest.param(signal.SIGINT, 130, "wachat-qr: error: interrupted\n", id="SIGINT"),
        pytest.param(signal.SIGTERM, 143, "wachat-qr: error: terminated (SIGTERM)\n", id="TERM"),
    ],
)
def test_ctrl_c_is_exit_130_in_one_line(
    fake: FakeWachatServer, signum: signal.Signals, code: int, line: str
) -> None:
    """Ctrl-C (SIGINT) during a watch ends with status 130 and one line, no traceback;
    SIGTERM (systemd, Kubernetes, `timeout`) likewise with 143."""
    proc = cli_process(
        ["watch", NAME, "--no-show", "--interval", "3600"],
        fake,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env_extra={"PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the first QR is out: now it waits an hour
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # pragma: no cover - only when the test already failed
            proc.kill()
            proc.wait()
    assert "QR changed: sha256=" in first
    assert (proc.returncode, out, err) == (code, "", line)


_HANGING_FLEET = [f"t1_{i:08d}_store" for i in range(20)]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(
    ("signum", "code", "line"),
    [
        pytest.param(signal.SIGTERM, 143, "wachat-qr: error: terminated (SIGTERM)\n", id="SIGTERM"),
        pytest.param(signal.SIGINT, 130, "wachat-qr: error: interrupted\n", id="SIGINT"),
    ],
)
def test_a_signal_stops_a_poll_with_its_partial_summary_and_no_temporary_file(
    wachat_server_factory: Callable[..., FakeWachatServer],
    tmp_path: Path,
    signum: signal.Signals,
    code: int,
    line: str,
) -> None:
    """In a real process, SIGTERM (systemd, Kubernetes, `timeout`) or Ctrl-C mid-poll: the
    hanging fetches are cancelled, the JSON summary says what was done, nothing but whole
    PNGs is left in --out-dir, and the exit status says which signal."""
    server = wachat_server_factory(api_key=KEY, auto_create=True)
    for name in _HANGING_FLEET[5:]:
        server.script(name, [Fault(hang=True)])
    (tmp_path / "names.txt").write_text("\n".join(_HANGING_FLEET), encoding="utf-8")
    out_dir = tmp_path / "out"
    proc = cli_process(
        ["poll", "-f", "names.txt", "--json", "-d", str(out_dir), "-c", "4"],
        server,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env_extra={"PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        first = [json.loads(proc.stdout.readline()) for _ in range(5)]  # the rest hang
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # pragma: no cover - only when the test already failed
            proc.kill()
            proc.wait()
    assert (proc.returncode, err) == (code, line)
    assert [row["ok"] for row in first] == [True] * 5
    summary = json.loads(out)["summary"]  # the only line left: the hanging ones print none
    assert (summary["ok"], summary["failed"], summary["not_fetched"]) == (5, 0, 15)
    assert (summary["saved"], summary["stopped"]) == (5, "signal")
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        f"{n}.png" for n in _HANGING_FLEET[:5]
    )


def test_a_signal_mid_poll_prints_the_partial_summary_table(
    run: Callable[..., Run],
    env: FakeWachatServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGTERM once one instance is done and the other hangs: the table counts what was done
    and what was not; exit 143, one line on stderr."""
    env.script(OTHER, [Fault(hang=True)])
    add = cli._fleet.Fleet.add

    def add_then_signal(fleet: cli._fleet.Fleet, *args: object) -> None:
        add(fleet, *args)  # type: ignore[arg-type]
        if fleet.done == 1:  # only while main's handler is in place
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(cli._fleet.Fleet, "add", add_then_signal)
    result = run("poll", NAME, OTHER)
    assert (result.code, result.err) == (143, "wachat-qr: error: terminated (SIGTERM)\n")
    assert result.out.startswith("2 instances in ")
    assert "not fetched (stopped early)" in result.out
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


class LateNameError(WachatError, ValueError):
    """Stands in for InvalidInstanceNameError (a WachatError and a ValueError)."""


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(LateNameError("instance_name must not be empty"), id="wachat-value-error"),
        pytest.param(ValueError("instance_name must not be empty"), id="plain-value-error"),
    ],
)
def test_a_bad_name_found_by_the_client_is_a_usage_error(
    run: Callable[..., Run],
    env: FakeWachatServer,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
) -> None:
    """Whichever class the name check raises (ValueError or a WachatError subclass): exit 2."""

    async def refuse(self: object, name: str) -> None:
        raise error

    monkeypatch.setattr(WachatClient, "get_qr_image", refuse)
    result = run("fetch", NAME)
    assert result.code == 2
    assert result.err.count("\n") == 1
    assert "must not be empty" in result.err


def test_an_unexpected_error_is_one_line_exit_70_with_a_debug_hint(
    run: Callable[..., Run], env: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug: one error line, a hint naming --debug, exit 70; --debug adds the traceback."""

    async def broken(self: object, name: str) -> None:
        raise RuntimeError(f"boom with {KEY}")

    monkeypatch.setattr(WachatClient, "get_qr_image", broken)
    result = run("fetch", NAME)
    assert (result.code, result.out) == (70, "")
    assert result.err.splitlines() == [
        "wachat-qr: error: internal error: RuntimeError: boom with [REDACTED]",
        "wachat-qr: hint: this is a bug: run again with --debug to see the traceback, "
        "and report it",
    ]


def test_debug_prints_the_traceback_with_the_key_redacted(
    env: FakeWachatServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--debug shows where an unexpected error came from, still without the key."""

    async def broken(self: object, name: str) -> None:
        raise RuntimeError(f"boom with {KEY}")

    monkeypatch.setattr(WachatClient, "get_qr_image", broken)
    code = main(["fetch", NAME, "--debug"])
    err = capsys.readouterr().err
    assert code == 70
    assert "Traceback (most recent call last)" in err
    assert "in broken" in err
    assert KEY not in err


# -- --debug: the library's log on stderr ------------------------------------------------------


@pytest.mark.parametrize("key_from", ["env", "flag"])
@pytest.mark.parametrize(
    ("argv", "script", "code"),
    [
        pytest.param(["fetch", NAME, "-o", "qr.png"], [], 0, id="fetch-ok"),
        pytest.param(["poll", NAME, "t1_nothere0_store"], [], 1, id="poll-with-a-404"),
        pytest.param(["fetch", NAME], [502, 504], 0, id="retried-502-504"),
        pytest.param(["fetch", NAME], [Fault(drop=True)] * 4, 6, id="dropped-connection"),
        pytest.param(
            ["fetch", NAME],
            [Fault(status=500, body=f'{{"message": "bad key {KEY}"}}'.encode())],
            5,
            id="key-echoed-in-the-body",
        ),
        pytest.param(
            ["fetch", NAME],
            [Fault(status=200, content_type=f"text/plain; k={KEY}", body=KEY.encode())],
            7,
            id="key-echoed-in-the-content-type",
        ),
        pytest.param(["watch", NAME, "--until-connected"], [], 0, id="state-route"),
    ],
)
def test_debug_logs_every_attempt_without_the_key(
    run: Callable[..., Run],
    env: FakeWachatServer,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    script: list[int | Fault],
    code: int,
    key_from: str,
) -> None:
    """--debug: one `debug:` line per HTTP attempt (method, URL, status or failure) on stderr,
    whatever the outcome; the key, planted in the answers too, never shows."""
    if script:
        env.script(NAME, script)
    if argv[-1] == "--until-connected":
        env.set_state(NAME, "open")
    key_args = ["--api-key", KEY] if key_from == "flag" else []
    if key_from == "flag":
        monkeypatch.delenv("WACHAT_API_KEY")
    result = run("--debug", *argv, *key_args)
    debug = [line for line in result.err.splitlines() if line.startswith("wachat-qr: debug: GET ")]
    assert result.code == code, result.err
    assert 1 <= len(debug) <= env.request_count()
    if not any(isinstance(step, Fault) and step.drop for step in script):
        assert len(debug) == env.request_count()  # (aiohttp resends once on a dropped reuse)
    assert all("instanceName=" in line for line in debug)
    assert all((" -> " in line) or (" failed: " in line) for line in debug)


@pytest.mark.parametrize(
    ("flags", "debug_lines", "info_lines"),
    [
        pytest.param([], False, False, id="default"),
        pytest.param(["-v"], False, True, id="verbose"),
        pytest.param(["--debug"], True, True, id="debug"),
    ],
)
def test_log_levels_follow_the_flags(
    run: Callable[..., Run],
    env: FakeWachatServer,
    flags: list[str],
    debug_lines: bool,
    info_lines: bool,
) -> None:
    """Nothing by default; -v adds the retry lines (INFO); --debug adds every attempt."""
    env.script(NAME, [502])
    result = run("fetch", NAME, "-o", "qr.png", *flags)
    assert result.code == 0
    assert ("wachat-qr: debug: " in result.err) is debug_lines
    assert ("wachat-qr: info: Retrying" in result.err) is info_lines
    assert logging.getLogger("wachat_async").handlers == []  # main() takes its handler back


# -- pipes ------------------------------------------------------------------------------------


def test_a_broken_stdout_in_process_is_quiet(
    run: Callable[..., Run], env: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When writing stdout fails with EPIPE, main() returns 141 and prints nothing."""

    class Gone(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Gone())
    result = run("poll", NAME, OTHER, "--json")
    assert (result.code, result.err) == (141, "")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
@pytest.mark.parametrize(
    "out_dir", [pytest.param([], id="json"), pytest.param(["-d", "out"], id="json-and-files")]
)
def test_poll_json_into_head_stops_quietly(
    wachat_server_factory: Callable[..., FakeWachatServer], cli_env: Path, out_dir: list[str]
) -> None:
    """`poll --json | head -1`: read one line, close the pipe: exit 141, stderr empty."""
    server = wachat_server_factory(api_key=KEY, auto_create=True, qr_rotation=None)
    names = [f"t1_{i:08d}_store_with_a_rather_long_friendly_name" for i in range(1500)]
    (cli_env / "names.txt").write_text("\n".join(names), encoding="utf-8")
    proc = cli_process(
        ["poll", "-f", "names.txt", "--json", "-c", "16", *out_dir],
        server,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cli_env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        first = json.loads(proc.stdout.readline())
        proc.stdout.close()  # what `head -1` does once it has its line
        with proc.stderr:
            err = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:  # pragma: no cover - only when the test already failed
            proc.kill()
            proc.wait()
    assert first["ok"] is True
    assert (proc.returncode, err) == (141, "")
    assert server.request_count() < len(names)  # it stopped instead of polling on
    if out_dir:
        assert not [p.name for p in (cli_env / "out").iterdir() if p.suffix != ".png"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["fetch", NAME, "-o", "-"], id="fetch-to-stdout"),
        pytest.param(["show", NAME], id="show"),
        pytest.param(["poll", NAME, OTHER], id="poll-table"),
        pytest.param(["url", NAME], id="url"),
        pytest.param(["fake-server", "--port", "0", "--duration", "30"], id="fake-server"),
    ],
)
def test_every_command_into_a_gone_reader_is_quiet(fake: FakeWachatServer, argv: list[str]) -> None:
    """stdout is a pipe whose reader already quit: no message, no traceback, exit 141."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = cli_process(argv, fake, stdout=write_end, stderr=subprocess.PIPE)
        _, err = proc.communicate(timeout=60)
    finally:
        os.close(write_end)
    assert (proc.returncode, err) == (141, "")


# -- property: main() never lets an exception out ---------------------------------------------

_COMMANDS = ["fetch", "show", "url", "poll", "watch", "fake-server", "demo", "nope", ""]
_FLAGS = [
    "-q",
    "-v",
    "--debug",
    "--allow-insecure-http",
    "--json",
    "--invert",
    "--until-connected",
    "--expose-api-key",
    "--no-show",
    "--auto-create",
    "--",
]
_RARE_FLAGS = ["--version", "--help", "-h"]
_NUMERIC_OPTIONS = ["--timeout", "--retries", "-c", "-i", "-n", "--border", "--instances"]
_TEXT_OPTIONS = ["--api-key", "-o", "-d", "-f", "--color", "--instance"]
_TEXT = st.text(
    # No "/" or "\\": a generated -d or -o must stay inside the test's temporary folder.
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="/\\")
    | st.sampled_from("\x00\t\n\x1b\x85"),
    max_size=12,
)
_NUMBERS = st.sampled_from(
    ["0", "-1", "-2", "1", "2", "0.001", "nan", "inf", "1e309", "x", "", "99999", "٣"]
)


@st.composite
def _argv(draw: st.DrawFn, base_urls: list[str]) -> list[str]:
    command = draw(st.sampled_from(_COMMANDS))
    argv = [command] if command else []
    if draw(st.booleans()):  # most commands take a NAME: a plausible one or any text
        argv.append(draw(st.sampled_from([NAME, "t1_nothere0_store"]) | _TEXT))
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.integers(0, 19))
        if kind < 5:
            argv.append(draw(st.sampled_from(_FLAGS)))
        elif kind < 10:
            argv += [draw(st.sampled_from(_NUMERIC_OPTIONS)), draw(_NUMBERS)]
        elif kind < 13:
            argv += [draw(st.sampled_from(_TEXT_OPTIONS)), draw(_TEXT)]
        elif kind < 17:
            argv += ["--base-url", draw(st.sampled_from(base_urls))]
        elif kind < 19:
            argv.append(draw(_TEXT))
        else:
            argv.append(draw(st.sampled_from(_RARE_FLAGS)))
    if command == "fake-server":  # never serve for long, never on a fixed port
        argv = [a for a in argv if a not in _RARE_FLAGS] + ["--port", "0", "--duration", "0.001"]
    if command == "demo":
        argv.insert(1, "--no-wait")
        argv += ["--instances", "99999"]  # refused by the parser: a demo run takes seconds
    return argv


def test_main_never_raises_and_stays_within_the_exit_table(
    fake: FakeWachatServer,
    closed_port: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    cli_env: Path,
) -> None:
    """Any argv: no exception escapes, a documented status, a few stderr lines, no key."""
    monkeypatch.setenv("WACHAT_API_KEY", KEY)
    monkeypatch.setenv("WACHAT_BASE_URL", f"http://127.0.0.1:{closed_port}/api/v1")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    base_urls = [
        f"http://127.0.0.1:{closed_port}/api/v1",
        fake.base_url,
        fake.url,
        "ftp://127.0.0.1/api/v1",
        "http://[::1",
        "",
        "http://user:pw@127.0.0.1/api/v1",
    ]

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(argv=_argv(base_urls))
    def check(argv: list[str]) -> None:
        try:
            code = main(argv)
        except SystemExit as exc:  # pragma: no cover - main() returns, but this is allowed
            code = exc.code  # type: ignore[assignment]
        out, err = capsys.readouterr()
        assert code in EXIT_CODES, (argv, code, err)
        assert "Traceback" not in err, (argv, err)
        assert len(err.splitlines()) <= 3, (argv, err)
        exposed = argv[:1] == ["url"] and "--expose-api-key" in argv
        assert KEY not in err, argv
        assert exposed or KEY not in out, argv

    check()
