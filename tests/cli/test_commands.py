"""The commands that talk to the API (wachat_async.cli._commands): fetch, show, url, watch,
fake-server, poll's names; the client they build from the command line (key, base URL,
retries, timeout, the http:// refusal), and the hints after an error."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import segno
from PIL import Image

from tests.cli._support import OTHER, Run, cli_process, decode, instance_rows, terminal_to_image
from tests.conftest import KEY, NAME
from wachat_async import InstanceNotFoundError
from wachat_async.cli import _commands, exit_code_for, main
from wachat_async.cli._exit import wrong_base_url
from wachat_async.cli._output import Out, describe
from wachat_async.testing import FakeWachatServer, Fault

# -- fetch ------------------------------------------------------------------------------------


def test_fetch_saves_the_png(run: Callable[..., Run], env: FakeWachatServer, cli_env: Path) -> None:
    """fetch NAME writes NAME.png and says so on stdout."""
    result = run("fetch", NAME)
    assert result.code == 0
    path = cli_env / f"{NAME}.png"
    assert decode(Image.open(path)) == env.qr_payload(NAME)
    assert f"saved {NAME}.png" in result.out


def test_fetch_to_a_named_file_quietly(
    run: Callable[..., Run], env: FakeWachatServer, cli_env: Path
) -> None:
    """-o FILE chooses the file; --quiet prints nothing on success."""
    result = run("fetch", NAME, "-o", "qr.png", "--quiet")
    assert (result.code, result.out, result.err) == (0, "", "")
    assert (cli_env / "qr.png").read_bytes().startswith(b"\x89PNG")


def test_fetch_to_stdout(capsysbinary: pytest.CaptureFixture[bytes], env: FakeWachatServer) -> None:
    """-o - writes the PNG bytes to stdout."""
    assert main(["fetch", NAME, "-o", "-"]) == 0
    data = capsysbinary.readouterr().out
    assert decode(Image.open(io.BytesIO(data))) == env.qr_payload(NAME)


def test_fetch_to_stdout_refuses_a_terminal(
    run: Callable[..., Run], env: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """-o - on a terminal would print binary garbage: refused before any request."""
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    result = run("fetch", NAME, "-o", "-")
    assert result.code == 2
    assert env.request_count() == 0


@pytest.mark.skipif(sys.platform == "win32", reason="/dev/stdout, /proc")
@pytest.mark.parametrize(
    ("target", "stdout_kind"),
    [
        pytest.param(target, kind, id=f"{target}-{kind}")
        for target in ["-", "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"]
        for kind in ["pipe", "regular-file"]
    ]
    + [pytest.param("the-redirect-target", "regular-file", id="the-file-itself")],
)
def test_fetch_to_stdout_by_any_name_keeps_stdout_a_pure_png(
    fake: FakeWachatServer, cli_env: Path, target: str, stdout_kind: str
) -> None:
    """`fetch -o /dev/stdout | consumer`, or `> file`: stdout holds the PNG and nothing else;
    the informational line goes to stderr (hidden by -q), however stdout is named."""
    redirect = cli_env / "stdout.bin"
    argv = ["fetch", NAME, "-o", str(redirect) if target == "the-redirect-target" else target]
    with redirect.open("wb") as sink:
        proc = cli_process(
            argv,
            fake,
            stdout=subprocess.PIPE if stdout_kind == "pipe" else sink,
            stderr=subprocess.PIPE,
            text=False,
            cwd=cli_env,
        )
        out, err = proc.communicate(timeout=60)
    data = out if stdout_kind == "pipe" else redirect.read_bytes()
    assert proc.returncode == 0, err
    assert decode(Image.open(io.BytesIO(data))) == fake.qr_payload(NAME)
    assert data.endswith(b"IEND\xaeB`\x82")  # nothing after the PNG's last chunk
    assert err.decode().count("\n") == 1
    assert "wrote the QR" in err.decode()


@pytest.mark.parametrize("target", ["-", "/dev/stdout", "/dev/fd/1"])
def test_watch_refuses_stdout_as_its_output_file(
    run: Callable[..., Run], env: FakeWachatServer, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    """watch prints on stdout: PNGs there would be mixed into it, so -o stdout is refused."""
    monkeypatch.setattr("wachat_async.cli._commands.is_stdout", lambda path: path == target)
    result = run("watch", NAME, "--no-show", "-n", "1", "-o", target)
    assert (result.code, env.request_count()) == (2, 0)
    assert "watch -o cannot be stdout" in result.err


def test_fetch_to_a_file_that_is_not_stdout_still_says_saved_on_stdout(
    run: Callable[..., Run], env: FakeWachatServer
) -> None:
    """Only stdout's own file moves the line: a plain -o FILE says "saved" on stdout."""
    result = run("fetch", NAME, "-o", "qr.png")
    assert (result.code, result.err) == (0, "")
    assert result.out.startswith("saved qr.png (")


def test_api_key_flag_works_and_is_never_echoed(
    run: Callable[..., Run], fake: FakeWachatServer
) -> None:
    """--api-key (before or after the command) authenticates; the key is not printed."""
    first = run("--api-key", KEY, "--base-url", fake.base_url, "fetch", NAME)
    second = run("fetch", NAME, "-o", "b.png", "--api-key", KEY, "--base-url", fake.base_url)
    assert (first.code, second.code) == (0, 0)


def test_write_error_is_exit_8(run: Callable[..., Run], env: FakeWachatServer) -> None:
    """A file that cannot be written is a one-line local I/O error."""
    result = run("fetch", NAME, "-o", "missing-dir/qr.png")
    assert result.code == 8
    assert result.err.startswith("wachat-qr: error: ")
    assert result.err.count("\n") == 1


# -- error classes and exit codes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "code", "error"),
    [
        pytest.param([400], 4, "BadRequestError", id="400"),
        pytest.param([403], 3, "SubscriptionRestrictedError", id="403"),
        pytest.param([404], 4, "InstanceNotFoundError", id="404"),
        pytest.param([409], 4, "QRNotSupportedError", id="409"),
        pytest.param([502] * 4, 5, "QRFetchFailedError", id="502-retries-exhausted"),
        pytest.param([504] * 4, 5, "GatewayTimeoutError", id="504-retries-exhausted"),
        pytest.param([418], 5, "UnexpectedStatusError", id="418"),
        # aiohttp itself resends an idempotent request once when the server hangs up.
        pytest.param([Fault(drop=True)] * 2, 6, "WachatConnectionError", id="dropped-connection"),
        pytest.param(
            [Fault(content_type="text/html", body=b"<html>login</html>")],
            7,
            "InvalidImageError",
            id="html-instead-of-png",
        ),
        pytest.param([Fault(truncate=True)], 7, "InvalidImageError", id="truncated-png"),
    ],
)
def test_each_error_class_has_its_exit_code(
    run: Callable[..., Run],
    env: FakeWachatServer,
    script: list[int | Fault],
    code: int,
    error: str,
) -> None:
    """One line on stderr naming the error, and the documented exit status."""
    env.script(NAME, script)
    result = run("fetch", NAME)
    assert result.code == code
    assert result.err.startswith(f"wachat-qr: error: {error}: ")
    assert result.err.count("\n") == 1
    assert result.out == ""


def test_wrong_key_is_exit_3(
    run: Callable[..., Run], fake: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """401 is an authentication error (3); the wrong key is not printed either."""
    monkeypatch.setenv("WACHAT_API_KEY", "wrong-" + KEY)
    result = run("fetch", NAME, "--base-url", fake.base_url)
    assert result.code == 3
    assert "AuthenticationError" in result.err
    assert "wrong-" not in result.err


def test_unknown_instance_is_exit_4(run: Callable[..., Run], env: FakeWachatServer) -> None:
    """404 names the instance in one line."""
    result = run("fetch", "t1_nothere0_store")
    assert result.code == 4
    assert "InstanceNotFoundError: 404 Not Found" in result.err
    assert "t1_nothere0_store" in result.err


def test_retries_give_up_note_is_on_the_same_line(
    run: Callable[..., Run], env: FakeWachatServer
) -> None:
    """The 'gave up after N attempts' note is part of the one error line."""
    env.script(NAME, [502] * 4)
    result = run("fetch", NAME)
    assert "gave up after 4 attempts" in result.err
    assert result.err.count("\n") == 1


def test_retries_option_and_verbose_log(run: Callable[..., Run], env: FakeWachatServer) -> None:
    """--retries 1 allows one retry; -v shows it on stderr."""
    env.script(NAME, [502, 502])
    result = run("fetch", NAME, "--retries", "1", "-v")
    assert result.code == 5
    assert env.request_count(NAME) == 2
    assert "wachat-qr: info: Retrying QR call" in result.err


def test_timeout_is_exit_6(run: Callable[..., Run], env: FakeWachatServer) -> None:
    """A server that never answers hits --timeout: exit 6."""
    env.script(NAME, [Fault(hang=True)])
    result = run("fetch", NAME, "--timeout", "0.02")
    assert result.code == 6
    assert "WachatTimeoutError" in result.err


# -- the key, the base URL, plain http:// ----------------------------------------------------


def test_missing_key_is_a_configuration_error(
    run: Callable[..., Run], fake: FakeWachatServer
) -> None:
    """Without WACHAT_API_KEY or --api-key: exit 2 and a one-line hint."""
    result = run("fetch", NAME, "--base-url", fake.base_url)
    assert result.code == 2
    assert result.err.count("\n") == 1
    assert "WACHAT_API_KEY" in result.err


def test_missing_key_says_how_to_set_it_from_a_shell(
    run: Callable[..., Run], fake: FakeWachatServer
) -> None:
    """No key: the hint is for a shell user (export or --api-key), not a mangled Python call."""
    result = run("poll", NAME, "--base-url", fake.base_url, "--json")
    assert result.code == 2
    assert "export WACHAT_API_KEY=<your key>" in result.err
    assert "--api-key" in result.err
    assert "[REDACTED]" not in result.err
    assert "WachatClient" not in result.err
    assert fake.request_count() == 0


_WRONG_ROOTS = [
    pytest.param("", id="root"),
    pytest.param("/", id="root-slash"),
    pytest.param("/v1", id="v1"),
    pytest.param("/api", id="api"),
    pytest.param("/api/v2", id="api-v2"),
    pytest.param("/api/v1/instance", id="api-v1-and-more"),
    pytest.param("/x/api/v1", id="ends-in-api-v1-but-no-such-route"),
]
_ONE_REQUEST_COMMANDS = [
    pytest.param(["fetch", NAME, "-o", "qr.png"], id="fetch"),
    pytest.param(["show", NAME], id="show"),
    pytest.param(["watch", NAME, "--no-show", "-n", "1"], id="watch"),
    pytest.param(["watch", NAME, "--until-connected"], id="watch-state-route"),
    pytest.param(["poll", "-c", "1", *(f"t1_{i:08d}_store" for i in range(10))], id="poll"),
]


@pytest.mark.parametrize("argv", _ONE_REQUEST_COMMANDS)
@pytest.mark.parametrize("suffix", _WRONG_ROOTS)
def test_a_wrong_base_url_says_so_with_exit_2(
    run: Callable[..., Run], env: FakeWachatServer, suffix: str, argv: list[str]
) -> None:
    """A base URL that reaches no route (the fake server's "No such route", or no /api/v1 at
    the end) is a configuration error: the error line says the base URL looks wrong (never
    "instance not found"), a hint says what it should be, exit 2; a fleet stops at once."""
    base_url = env.url + suffix
    result = run(*argv, "--base-url", base_url)
    lines = result.err.splitlines()
    assert result.code == 2, result.err
    assert len(lines) == 2, lines
    assert lines[0].startswith("wachat-qr: error: the base URL looks wrong: 404 for the API route")
    assert "instance not found" not in lines[0]
    assert lines[1].startswith("wachat-qr: hint: is --base-url (or WACHAT_BASE_URL) right? ")
    assert f"it should end in /api/v1; it is {base_url}" in lines[1]
    if suffix.endswith("/api/v1"):
        assert "(try " not in lines[1]
    else:  # the wrong path is replaced, never appended to
        assert lines[1].endswith(f" (try {env.url}/api/v1?)"), lines[1]
    assert env.request_count() <= 2  # poll stopped at the first answer (one more in flight)


@pytest.mark.parametrize(
    ("path", "suggested"),
    [
        pytest.param("", "/api/v1", id="no-path"),
        pytest.param("/", "/api/v1", id="slash"),
        pytest.param("/api", "/api/v1", id="api"),
        pytest.param("/api/", "/api/v1", id="api-slash"),
        pytest.param("/api/v2", "/api/v1", id="api-v2"),
        pytest.param("/api/v2/", "/api/v1", id="api-v2-slash"),
        pytest.param("/v1", "/api/v1", id="v1"),
        pytest.param("/v2", "/api/v1", id="v2"),
        pytest.param("/api/v1/instance", "/api/v1", id="api-v1-and-a-route"),
        pytest.param("/api/v1/instance/qr/image", "/api/v1", id="api-v1-and-the-whole-route"),
        pytest.param("/api/v2?x=1", "/api/v1", id="query-dropped"),
        pytest.param("/api/v2#top", "/api/v1", id="fragment-dropped"),
        pytest.param("/gw/api/v2", "/gw/api/v1", id="gateway-prefix-kept"),
        pytest.param("/gw/v3", "/gw/api/v1", id="gateway-prefix-and-version"),
        pytest.param("/gw%20x/api", "/gw%20x/api/v1", id="encoded-prefix-kept"),
        pytest.param("/wachat", "/wachat/api/v1", id="prefix-only"),
        pytest.param("/api/v1", None, id="right"),
        pytest.param("/api/v1/", None, id="right-slash"),
        pytest.param("/x/api/v1", None, id="right-ending-behind-a-prefix"),
    ],
)
def test_the_base_url_hint_replaces_the_wrong_path(path: str, suggested: str | None) -> None:
    """The hint's URL replaces a wrong version or path with /api/v1 (never http://h/api/v2/api/v1),
    keeps scheme, host, port and a gateway prefix, and is absent when the path is right."""
    root = "https://gw.example:8443"
    expected = None if suggested is None else root + suggested
    assert _commands.suggested_base_url(root + path) == expected


def test_a_wrong_base_url_in_json_lines_has_exit_code_2(
    run: Callable[..., Run], env: FakeWachatServer
) -> None:
    """poll --json: the one instance's line carries exit_code 2, as the process does, and
    the summary record says what stopped the poll."""
    result = run("poll", NAME, OTHER, "--json", "-c", "1", "--base-url", env.url)
    line, last = result.out.splitlines()
    assert (result.code, json.loads(line)["exit_code"]) == (2, 2)
    summary = json.loads(last)["summary"]
    assert (summary["stopped"], summary["not_fetched"]) == ("InstanceNotFoundError", 1)
    assert result.err.count("it should end in /api/v1") == 1
    assert "stopped after 1 of 2 instances" in result.err


@pytest.mark.parametrize(
    ("note", "body", "wrong"),
    [
        pytest.param("is the base URL right? x does not end in /api/v1", "", True, id="note"),
        pytest.param(None, "No such route: GET /x", True, id="no-such-route-body"),
        pytest.param(None, "Instance not found for this API key.", False, id="a-real-404"),
        pytest.param("gave up after 4 attempts", "", False, id="another-note"),
    ],
)
def test_wrong_base_url_follows_the_client_note_or_the_server_body(
    note: str | None, body: str, wrong: bool
) -> None:
    """The client's base-URL note or a "No such route" body make a 404 the base URL's."""
    error = InstanceNotFoundError(status=404, instance_name=NAME, body=body)
    if note is not None:
        error.add_note(note)
    assert wrong_base_url(error) is wrong
    assert exit_code_for(error) == (2 if wrong else 4)
    assert describe(error).startswith("the base URL looks wrong" if wrong else "InstanceNotFound")


def test_a_real_missing_instance_has_no_base_url_hint(
    run: Callable[..., Run], env: FakeWachatServer
) -> None:
    """A 404 from the right base URL is just "not found": one line, no hint."""
    result = run("fetch", "t1_nothere0_store")
    assert result.code == 4
    assert result.err.count("\n") == 1
    assert "hint" not in result.err


@pytest.mark.skipif(sys.platform == "win32", reason="0.0.0.0 reaches loopback on POSIX only")
def test_plain_http_to_another_host_needs_allow_insecure_http(
    run: Callable[..., Run], fake: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """http:// to a host that is not loopback by the rule (0.0.0.0) is refused in CLI words;
    with --allow-insecure-http the request is made (0.0.0.0 reaches the fake server)."""
    monkeypatch.setenv("WACHAT_API_KEY", KEY)
    base_url = f"http://0.0.0.0:{fake.port}/api/v1"
    refused = run("fetch", NAME, "--base-url", base_url, "-o", "qr.png")
    assert refused.code == 2
    assert "refusing plain http:// to 0.0.0.0" in refused.err
    assert "--allow-insecure-http" in refused.err
    assert "allow_insecure_http=True" not in refused.err
    assert fake.request_count() == 0
    allowed = run("fetch", NAME, "--base-url", base_url, "-o", "qr.png", "--allow-insecure-http")
    assert allowed.code == 0
    assert fake.request_count(NAME) == 1
    assert Path("qr.png").read_bytes().startswith(b"\x89PNG")


def test_allow_insecure_http_reaches_a_fake_server_on_another_interface(
    run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fake server bound to every interface, reached by a non-loopback address, works."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: a UDP connect sends nothing
        except OSError:
            pytest.skip("no non-loopback interface")
        own = str(probe.getsockname()[0])
    if own.startswith("127."):
        pytest.skip("no non-loopback interface")
    server = FakeWachatServer(api_key=KEY, host="0.0.0.0")  # noqa: S104 - the case under test
    server.add_instance(NAME)
    monkeypatch.setenv("WACHAT_API_KEY", KEY)
    with server.run_in_thread():
        base_url = f"http://{own}:{server.port}/api/v1"
        refused = run("fetch", NAME, "--base-url", base_url, "-o", "qr.png")
        allowed = run(
            "fetch", NAME, "--base-url", base_url, "-o", "qr.png", "--allow-insecure-http"
        )
    assert (refused.code, allowed.code) == (2, 0)
    assert Path("qr.png").read_bytes().startswith(b"\x89PNG")


# -- show -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "invert", [pytest.param(False, id="light-on-dark"), pytest.param(True, id="inverted")]
)
def test_show_prints_a_qr_that_decodes_to_the_same_payload(
    run: Callable[..., Run], env: FakeWachatServer, invert: bool
) -> None:
    """The half-block drawing reads back as the very QR the server served."""
    result = run("show", NAME, *(["--invert"] if invert else []))
    assert result.code == 0
    assert set(result.out) <= {"█", "▀", "▄", " ", "\n"}
    assert decode(terminal_to_image(result.out, invert=invert)) == env.qr_payload(NAME)


def test_show_uses_one_column_per_module_and_two_rows_per_line(
    run: Callable[..., Run], env: FakeWachatServer
) -> None:
    """Width = modules + 2 * border; lines = half the rows, rounded up."""
    modules = len(segno.make_qr(env.qr_payload(NAME), error="m").matrix)
    result = run("show", NAME, "--border", "3")
    lines = result.out.rstrip("\n").split("\n")
    assert {len(line) for line in lines} == {modules + 6}
    assert len(lines) == (modules + 6 + 1) // 2


def test_show_of_a_png_without_a_qr_is_exit_7(
    run: Callable[..., Run], env: FakeWachatServer
) -> None:
    """A valid PNG with no QR in it is an invalid response."""
    blank = io.BytesIO()
    Image.new("L", (40, 40), 255).save(blank, format="PNG")
    env.script(NAME, [Fault(body=blank.getvalue())])
    result = run("show", NAME)
    assert result.code == 7
    assert "no dark pixels" in result.err


def test_show_quiet_prints_only_the_drawing(run: Callable[..., Run], env: FakeWachatServer) -> None:
    """--quiet drops the caption on stderr; the QR itself is the output."""
    result = run("show", NAME, "-q")
    assert result.code == 0
    assert result.err == ""
    assert "█" in result.out


# -- url --------------------------------------------------------------------------------------


def test_url_without_the_flag_has_no_key(run: Callable[..., Run], env: FakeWachatServer) -> None:
    """url prints the key-less URL."""
    result = run("url", NAME)
    assert result.code == 0
    assert result.out == f"{env.base_url}/instance/qr/image?instanceName={NAME}\n"
    assert result.err == ""


def test_url_with_expose_api_key(run: Callable[..., Run], env: FakeWachatServer) -> None:
    """--expose-api-key puts the key in the URL on stdout; the warning goes to stderr."""
    result = run("url", NAME, "--expose-api-key", allow_key=True)
    assert result.code == 0
    assert result.out == f"{env.base_url}/instance/qr/image?instanceName={NAME}&apiKey={KEY}\n"
    assert result.err.startswith("wachat-qr: warning: ")
    assert "this QR image URL (apiKey=...): it will reach browser history" in result.err
    assert "[REDACTED]" not in result.err  # the library's own words, not mangled


def test_a_library_warning_holding_a_key_in_use_is_still_redacted() -> None:
    """library=True skips only the credential-shape net: a key in use is always hidden."""
    captured = io.StringIO()
    out = Out(False, [KEY])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stderr", captured)
        out.warning(f"apiKey=... and {KEY}", library=True)
        out.warning("apiKey=... alone", library=True)
    assert captured.getvalue().splitlines() == [
        "wachat-qr: warning: apiKey=[REDACTED] and [REDACTED]",
        "wachat-qr: warning: apiKey=... alone",
    ]


@pytest.mark.parametrize(
    ("base_url", "extra", "code"),
    [
        pytest.param("http://192.0.2.10:8080/api/v1", (), 2, id="http-remote-refused"),
        pytest.param("http://wachat.example/api/v1", (), 2, id="http-name-refused"),
        pytest.param(
            "http://192.0.2.10:8080/api/v1", ("--allow-insecure-http",), 0, id="http-allowed"
        ),
        pytest.param("http://127.0.0.1:8080/api/v1", (), 0, id="http-loopback"),
        pytest.param("https://app.wachat.net/api/v1", (), 0, id="https"),
    ],
)
def test_url_with_the_key_over_plain_http_needs_allow_insecure_http(
    run: Callable[..., Run],
    monkeypatch: pytest.MonkeyPatch,
    base_url: str,
    extra: tuple[str, ...],
    code: int,
) -> None:
    """--expose-api-key refuses a plain-http URL to another host, as every other command does."""
    monkeypatch.setenv("WACHAT_API_KEY", KEY)
    result = run("url", NAME, "--expose-api-key", "--base-url", base_url, *extra, allow_key=True)
    assert result.code == code
    if code:
        assert KEY not in result.out
        assert "clear text" in result.err
        assert len(result.err.strip().splitlines()) <= 2


@pytest.mark.parametrize("command", [("url", NAME), ("fetch", NAME, "-o", os.devnull)])
@pytest.mark.parametrize("empty", ["", " "], ids=["empty", "blank"])
def test_an_empty_base_url_is_a_usage_error(
    run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...], empty: str
) -> None:
    """--base-url "$UNSET" never falls back to the production API: exit 2, one line."""
    monkeypatch.setenv("WACHAT_API_KEY", KEY)
    result = run(*command, "--base-url", empty)
    assert result.code == 2
    assert "--base-url is empty" in result.err


def test_url_with_expose_api_key_needs_a_key(run: Callable[..., Run]) -> None:
    """--expose-api-key without any key is a configuration error."""
    result = run("url", NAME, "--expose-api-key")
    assert result.code == 2
    assert "needs an API key" in result.err


def test_url_rejects_a_bad_name(run: Callable[..., Run]) -> None:
    """A name the URL builder refuses is a usage error."""
    result = run("url", "bad\nname")
    assert result.code == 2


# -- poll's names ---------------------------------------------------------------------------


def test_poll_from_file_and_stdin(
    run: Callable[..., Run], env: FakeWachatServer, cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--from-file skips blank lines and # comments; - reads stdin."""
    (cli_env / "names.txt").write_text(f"# fleet\n{NAME}\n\n  {OTHER}  \n", encoding="utf-8")
    from_file = run("poll", "--from-file", "names.txt", "--json")
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{NAME}\n"))
    from_stdin = run("poll", "-f", "-", "--json")
    assert from_file.code == from_stdin.code == 0
    assert len(instance_rows(from_file.out)) == 2
    assert from_stdin.out.count(f'"instance": "{NAME}"') == 1


_BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(_BOM + b"%(a)s\n%(b)s\n", id="utf8-bom"),
        pytest.param(_BOM + b"%(a)s\r\n%(b)s\r\n", id="bom-and-crlf"),
        pytest.param(b"%(a)s\r\n%(b)s\r\n", id="crlf"),
        pytest.param(b"%(a)s\n%(b)s", id="no-final-newline"),
        pytest.param(_BOM + b"%(a)s\r\n%(b)s", id="bom-crlf-no-final-newline"),
        pytest.param(b"\n\n%(a)s\n\n\r\n  \t\n%(b)s\n\n", id="blank-lines"),
        pytest.param(b"# fleet\n%(a)s\n  # indented comment\n%(b)s\n#\n", id="comments"),
        pytest.param(_BOM + b"# a comment first\r\n%(a)s\r\n%(b)s", id="bom-before-comment"),
        pytest.param(b"  %(a)s  \n\t%(b)s\t\n", id="surrounding-whitespace"),
    ],
)
@pytest.mark.parametrize("source", ["file", "stdin"])
def test_poll_names_file_formats(
    run: Callable[..., Run],
    env: FakeWachatServer,
    cli_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    content: bytes,
    source: str,
) -> None:
    """A names file as editors save it (BOM, CRLF, blank lines, comments, no final newline),
    from a file or from stdin's bytes: exactly the two names, each fetched."""
    data = content % {b"a": NAME.encode(), b"b": OTHER.encode()}
    if source == "file":
        (cli_env / "names.txt").write_bytes(data)
        result = run("poll", "--from-file", "names.txt", "--json")
    else:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="latin-1"))
        result = run("poll", "-f", "-", "--json")
    assert result.code == 0, result.err
    fetched = sorted(row["instance"] for row in instance_rows(result.out))
    assert fetched == sorted([NAME, OTHER])
    assert sorted(r.instance_name for r in env.requests) == sorted([NAME, OTHER])


@pytest.mark.parametrize(
    ("line", "name"),
    [
        pytest.param(
            "beta # trailing comment", "beta # trailing comment", id="inline-hash-is-name"
        ),
        pytest.param("a#b", "a#b", id="hash-inside"),
        pytest.param("beta#", "beta#", id="hash-at-the-end"),
        pytest.param("  # indented", None, id="indented-comment"),
        pytest.param("#beta", None, id="comment-without-space"),
        pytest.param("\t#\t", None, id="tab-hash-tab"),
    ],
)
def test_poll_names_file_comments_are_whole_lines(
    run: Callable[..., Run],
    env: FakeWachatServer,
    cli_env: Path,
    line: str,
    name: str | None,
) -> None:
    """Only a line whose first non-blank character is ``#`` is a comment, as --help and
    docs/cli.md say: a ``#`` later in a line is part of the name (names may contain ``#``)."""
    (cli_env / "names.txt").write_text(f"{NAME}\n{line}\n", encoding="utf-8")
    result = run("poll", "--from-file", "names.txt", "--json")
    fetched = sorted(row["instance"] for row in instance_rows(result.out))
    assert fetched == sorted([NAME] if name is None else [NAME, name])
    assert sorted(r.instance_name for r in env.requests) == fetched


@pytest.mark.parametrize(
    ("source", "size"),
    [
        pytest.param("/dev/zero", None, id="dev-zero"),
        pytest.param("big.txt", 1025, id="one-byte-over"),
        pytest.param("-", 1025, id="stdin-over"),
    ],
)
def test_poll_names_file_is_read_within_a_bound(
    run: Callable[..., Run],
    env: FakeWachatServer,
    cli_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
    size: int | None,
) -> None:
    """A device that never ends (-f /dev/zero) or a file over the bound is a usage error,
    read only up to the bound (never until memory runs out)."""
    monkeypatch.setattr(_commands, "MAX_NAMES_FILE", 1024)
    data = (NAME + "\n").encode() * (1 + (size or 0) // (len(NAME) + 1))
    if source == "big.txt":
        (cli_env / source).write_bytes(data[: size or 0])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    result = run("poll", "-f", source)
    assert (result.code, env.request_count()) == (2, 0)
    assert f"{source}: larger than 0 MiB: not a names file" in result.err


def test_poll_names_from_a_closed_stdin_is_an_io_error(
    run: Callable[..., Run], env: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`poll -f - <&-`: Python's None stdin reads as EBADF: one line, exit 8."""
    monkeypatch.setattr(sys, "stdin", None)
    result = run("poll", "-f", "-")
    assert (result.code, result.err) == (8, "wachat-qr: error: stdin: Bad file descriptor\n")
    assert sys.stdin is None


def test_poll_names_from_a_text_stdin_lose_the_bom(
    run: Callable[..., Run], env: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stdin with no bytes underneath (already decoded text) loses a leading BOM too."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"\ufeff{NAME}\r\n"))
    result = run("poll", "-f", "-", "--json")
    assert result.code == 0, result.err
    assert [row["instance"] for row in instance_rows(result.out)] == [NAME]


@pytest.mark.parametrize(
    ("content", "where"),
    [
        pytest.param(f"{NAME}\n{OTHER}\u2028x\n", None, id="line-separator-stays-in-name"),
        pytest.param(f"{NAME}\nbad\x0cname\n", "names.txt:2", id="form-feed-refused"),
        pytest.param(f"{NAME}\nbad\x85name\n", "names.txt:2", id="nel-refused"),
    ],
)
def test_poll_names_file_splits_on_newlines_only(
    run: Callable[..., Run], env: FakeWachatServer, cli_env: Path, content: str, where: str | None
) -> None:
    """Only \\n ends a name: other line breaks of str.splitlines stay in the line, which the
    name check then accepts whole or refuses with its line number (never two names)."""
    (cli_env / "names.txt").write_text(content, encoding="utf-8")
    result = run("poll", "--from-file", "names.txt", "--json")
    if where is None:
        asked = [row["instance"] for row in instance_rows(result.out)]
        assert sorted(asked) == sorted([NAME, f"{OTHER}\u2028x"])
    else:
        assert (result.code, env.request_count()) == (2, 0)
        assert where in result.err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param("ok_name\nbad\x07name\n", "names.txt:2", id="control-character"),
        pytest.param("# only a comment\n", "no instance names", id="empty"),
    ],
)
def test_poll_bad_names_file_is_a_usage_error(
    run: Callable[..., Run], env: FakeWachatServer, cli_env: Path, content: str, message: str
) -> None:
    """A bad line is reported with its line number before any request is made."""
    (cli_env / "names.txt").write_text(content, encoding="utf-8")
    result = run("poll", "--from-file", "names.txt")
    assert result.code == 2
    assert message in result.err
    assert env.request_count() == 0


def test_poll_names_file_that_is_not_utf8(
    run: Callable[..., Run], env: FakeWachatServer, cli_env: Path
) -> None:
    """A binary names file is a usage error, not a crash."""
    (cli_env / "names.txt").write_bytes(b"\xff\xfe\x00bad")
    result = run("poll", "--from-file", "names.txt")
    assert result.code == 2
    assert "not UTF-8" in result.err


def test_poll_missing_names_file_is_exit_8(run: Callable[..., Run], env: FakeWachatServer) -> None:
    """A names file that does not exist is a local I/O error naming it."""
    result = run("poll", "--from-file", "nowhere.txt")
    assert result.code == 8
    assert result.err.startswith("wachat-qr: error: nowhere.txt: ")
    assert env.request_count() == 0


# -- watch ------------------------------------------------------------------------------------


def test_watch_prints_each_new_qr(run: Callable[..., Run], rotating: FakeWachatServer) -> None:
    """watch --count 3 draws three different QR codes, then exits 0."""
    result = run("watch", NAME, "--count", "3", "--interval", "0.001")
    assert result.code == 0
    lines = result.out.splitlines()
    assert len(lines) % 3 == 0
    per_drawing = len(lines) // 3
    payloads = {
        decode(terminal_to_image("\n".join(lines[i : i + per_drawing])))
        for i in range(0, len(lines), per_drawing)
    }
    assert len(payloads) == 3
    assert all(p.startswith(f"wachat-fake:{NAME}:") for p in payloads)
    assert result.err.count("waiting for a scan") == 3


def test_watch_no_show_prints_one_line_per_change(
    run: Callable[..., Run], rotating: FakeWachatServer, cli_env: Path
) -> None:
    """--no-show prints a line per change; -o keeps the latest PNG."""
    result = run("watch", NAME, "-n", "2", "-i", "0.001", "--no-show", "-o", "latest.png")
    lines = result.out.splitlines()
    assert result.code == 0
    assert len(lines) == 2
    assert all("QR changed: sha256=" in line for line in lines)
    assert lines[0] != lines[1]
    assert (cli_env / "latest.png").is_file()


def test_watch_redraws_in_place_on_a_terminal(
    run: Callable[..., Run], rotating: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal each new QR clears the screen first."""
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    result = run("watch", NAME, "-n", "2", "-i", "0.001")
    assert result.code == 0
    assert result.out.count("\x1b[2J\x1b[H") == 2


def test_watch_until_connected(run: Callable[..., Run], env: FakeWachatServer) -> None:
    """--until-connected ends with status 0 once the instance is linked."""
    env.set_state(NAME, "open")
    result = run("watch", NAME, "--until-connected")
    assert result.code == 0
    assert result.out == f"{NAME} is connected\n"


def test_watch_max_qrs_gives_up_with_exit_9(
    run: Callable[..., Run], rotating: FakeWachatServer
) -> None:
    """--max-qrs 2: two QRs, then the poll that sees a third ends it: one line, exit 9."""
    result = run("watch", NAME, "--no-show", "--max-qrs", "2", "-i", "0.001")
    assert result.code == 9, result.err
    assert len(result.out.splitlines()) == 2
    assert result.err.count("\n") == 1
    assert "not linked after 2 QR code(s)" in result.err
    assert "start a new watch" in result.err
    assert rotating.request_count(NAME, path="/instance/qr/image") == 3


def test_watch_linking_timeout_gives_up_with_exit_9(
    run: Callable[..., Run], env: FakeWachatServer
) -> None:
    """--linking-timeout cancels the poll that hangs: one line, exit 9."""
    env.script(NAME, [200, Fault(hang=True)])
    result = run("watch", NAME, "--no-show", "--linking-timeout", "0.05", "-i", "0.001")
    assert result.code == 9, result.err
    assert len(result.out.splitlines()) == 1
    assert result.err.count("\n") == 1
    assert "not linked after 1 QR code(s)" in result.err


@pytest.mark.parametrize(
    "option",
    [
        pytest.param(["--max-qrs", "0"], id="zero-max-qrs"),
        pytest.param(["--max-qrs", "2.5"], id="float-max-qrs"),
        pytest.param(["--linking-timeout", "0"], id="zero-linking-timeout"),
        pytest.param(["--linking-timeout", "-5"], id="negative-linking-timeout"),
    ],
)
def test_watch_limits_are_checked(
    run: Callable[..., Run], env: FakeWachatServer, option: list[str]
) -> None:
    """A limit out of range is a usage error (exit 2) before any request."""
    result = run("watch", NAME, *option)
    assert result.code == 2
    assert option[0] in result.err
    assert env.request_count() == 0


def test_watch_terminal_error(run: Callable[..., Run], env: FakeWachatServer) -> None:
    """A 404 ends the watch with status 4."""
    result = run("watch", "t1_nothere0_store", "--no-show")
    assert result.code == 4


def test_watch_fails_fast_when_the_server_is_unreachable(
    run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    """The first round of watch must succeed: a wrong port is exit 6, not an endless retry."""
    monkeypatch.setenv("WACHAT_API_KEY", KEY)
    base_url = f"http://127.0.0.1:{closed_port}/api/v1"
    result = run("watch", NAME, "--base-url", base_url, "--interval", "0.001")
    until = run("watch", NAME, "--base-url", base_url, "--until-connected")
    assert (result.code, until.code) == (6, 6)
    assert result.err.count("\n") == 1


# -- fake-server ------------------------------------------------------------------------------


def test_fake_server_prints_how_to_use_it(run: Callable[..., Run]) -> None:
    """fake-server prints its URL, the export lines (key demo) and the names, then stops."""
    result = run("fake-server", "--port", "0", "--duration", "0.01", "--instances", "4")
    assert result.code == 0
    first = result.out.splitlines()[0]
    assert first.startswith("Fake Wachat server listening on http://127.0.0.1:")
    base_url = first.rsplit(" ", 1)[-1]
    assert f"  export WACHAT_BASE_URL={base_url}\n" in result.out
    assert "  export WACHAT_API_KEY=demo\n" in result.out
    assert "Instances (10): t1_mq9r2jov_jakarta_store, " in result.out
    assert "Stopped." in result.err


def test_fake_server_never_prints_a_given_key(run: Callable[..., Run]) -> None:
    """A key you chose with --api-key is not echoed, only said to be yours."""
    result = run(
        "fake-server", "--port", "0", "--duration", "0.01", "--api-key", KEY, "--auto-create"
    )
    assert result.code == 0
    assert "the key you gave with --api-key (not printed)" in result.out
    assert "created on first use" in result.out


def test_fake_server_port_in_use_is_exit_8(run: Callable[..., Run], fake: FakeWachatServer) -> None:
    """A port that is taken is a local I/O error, in one line."""
    result = run("fake-server", "--port", str(fake.port), "--duration", "0.01")
    assert result.code == 8
    assert result.err.startswith("wachat-qr fake-server: error: cannot listen on 127.0.0.1:")
    assert result.err.count("\n") == 1


def test_fake_server_stops_on_sigint(tmp_path: Path) -> None:
    """In a real process, Ctrl-C (SIGINT) stops the server cleanly with status 0."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "wachat_async", "fake-server", "--port", "0", "--api-key", KEY]
    with subprocess.Popen(  # noqa: S603 - our own interpreter and module
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    ) as process:
        try:
            assert process.stdout is not None
            first = process.stdout.readline()
            base_url = first.rsplit(" ", 1)[-1].strip()
            request = urllib.request.Request(  # noqa: S310 - loopback URL printed by the server
                f"{base_url}/instance/qr/image?instanceName=t1_mq9r2jov_jakarta_store",
                headers={"Authorization": f"Bearer {KEY}"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                assert response.read().startswith(b"\x89PNG")
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0
    assert "Stopped." in err
    assert KEY not in first + out + err


# -- state ------------------------------------------------------------------------------------


def test_state_prints_one_line_per_name_in_order(
    run: Callable[..., Run], env: FakeWachatServer
) -> None:
    """One `NAME STATE` line per distinct name, in the order given; exit 0."""
    env.set_state(OTHER, "open")
    result = run("state", OTHER, NAME, OTHER)
    assert (result.code, result.out, result.err) == (0, f"{OTHER} open\n{NAME} connecting\n", "")


def test_state_json(run: Callable[..., Run], env: FakeWachatServer) -> None:
    """--json: one record per name, a failure shaped as poll's; the exit status is the
    failure's."""
    env.set_state(NAME, "open")
    result = run("state", NAME, "t1_nothere0_store", "--json")
    ok, failed = map(json.loads, result.out.splitlines())
    assert result.code == 4
    assert ok == {
        "instance": NAME,
        "ok": True,
        "state": "open",
        "connected": True,
        "integration": "WHATSAPP-BAILEYS",
    }
    assert failed | {"message": ""} == {
        "instance": "t1_nothere0_store",
        "ok": False,
        "error": "InstanceNotFoundError",
        "status": 404,
        "exit_code": 4,
        "message": "",
        "attempts": 1,
    }


@pytest.mark.parametrize(
    "names",
    [
        pytest.param(["t1_nothere0_store", NAME], id="failure-first"),
        pytest.param([NAME, "t1_nothere0_store"], id="failure-last"),
    ],
)
def test_state_reports_each_failure_and_exits_with_its_status(
    run: Callable[..., Run], env: FakeWachatServer, names: list[str]
) -> None:
    """A name that fails is one error line on stderr and sets the exit status (4: not
    found), wherever it comes; the others are still printed."""
    result = run("state", *names)
    assert result.code == 4
    assert result.out == f"{NAME} connecting\n"
    assert result.err.count("\n") == 1
    assert "wachat-qr: error: " in result.err
    assert "t1_nothere0_store" in result.err


def test_state_with_a_wrong_key_is_one_line_and_exit_3(
    run: Callable[..., Run], fake: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 401 fails every name the same way: one line, exit 3, nothing on stdout."""
    monkeypatch.setenv("WACHAT_API_KEY", "wrong-key")
    monkeypatch.setenv("WACHAT_BASE_URL", fake.base_url)
    result = run("state", NAME, OTHER)
    assert (result.code, result.out, result.err.count("\n")) == (3, "", 1)
    assert "401" in result.err
