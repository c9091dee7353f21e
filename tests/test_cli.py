"""The wachat-qr command line, run in-process with main([...]) against the fake server."""

from __future__ import annotations

import importlib
import io
import json
import os
import runpy
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import segno
import zxingcpp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.conftest import KEY, NAME
from wachat_async import (
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    GatewayTimeoutError,
    InstanceNotFoundError,
    InvalidImageError,
    InvalidResponseError,
    QRFetchFailedError,
    QRNotSupportedError,
    ResponseTooLargeError,
    RetryPolicy,
    SubscriptionRestrictedError,
    UnexpectedStatusError,
    WachatConnectionError,
    WachatError,
    WachatTimeoutError,
    cli,
)
from wachat_async.cli import main, png_filename, qr_modules, render_half_blocks
from wachat_async.testing import FakeWachatServer, Fault

OTHER = "t1_zz9r2jov_bandung_store"


@pytest.fixture
def fake(wachat_server_factory: Callable[..., FakeWachatServer]) -> FakeWachatServer:
    """A fake server on its own thread (main() runs its own event loop), key KEY, two
    instances and one non-Baileys instance."""
    server = wachat_server_factory(api_key=KEY)
    server.add_instances([NAME, OTHER])
    server.add_instance("t1_cloudapi_office", integration="WHATSAPP-BUSINESS")
    return server


@pytest.fixture(autouse=True)
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Run in a temporary folder with no key in the environment and zero-wait retries."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WACHAT_API_KEY", raising=False)
    monkeypatch.delenv("WACHAT_BASE_URL", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.setattr(cli, "RETRY_POLICY", RetryPolicy(zero_wait=True))
    return tmp_path


@pytest.fixture
def env(fake: FakeWachatServer, monkeypatch: pytest.MonkeyPatch) -> FakeWachatServer:
    """WACHAT_API_KEY and WACHAT_BASE_URL point at the fake server."""
    monkeypatch.setenv("WACHAT_API_KEY", KEY)
    monkeypatch.setenv("WACHAT_BASE_URL", fake.base_url)
    return fake


class Run:
    """The outcome of one main() call."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code = code
        self.out = out
        self.err = err


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    """Call main(argv) and return its exit code and output; fail if the key leaked."""

    def call(*argv: str, allow_key: bool = False) -> Run:
        code = main(list(argv))
        captured = capsys.readouterr()
        if not allow_key:
            assert KEY not in captured.out, "API key on stdout"
        assert KEY not in captured.err, "API key on stderr"
        assert "Traceback" not in captured.err
        return Run(code, captured.out, captured.err)

    return call


def terminal_to_image(text: str, *, invert: bool = False, scale: int = 6) -> Image.Image:
    """Rebuild a picture from half-block text: each character is two stacked modules."""
    lines = text.rstrip("\n").split("\n")
    width = max(len(line) for line in lines)
    rows: list[list[bool]] = []
    for line in lines:
        padded = line.ljust(width)
        rows.append([c in "█▀" for c in padded])
        rows.append([c in "█▄" for c in padded])
    # The drawn characters are the light modules (dark ones with --invert); the terminal
    # background is the other colour. Add a margin of background around it all.
    margin = 2
    picture = Image.new("L", ((width + 2 * margin) * scale, (len(rows) + 2 * margin) * scale))
    background, ink = (255, 0) if invert else (0, 255)
    picture.paste(background, (0, 0, picture.width, picture.height))
    for r, row in enumerate(rows):
        for c, inked in enumerate(row):
            if inked:
                x, y = (c + margin) * scale, (r + margin) * scale
                picture.paste(ink, (x, y, x + scale, y + scale))
    return picture


def decode(picture: Image.Image) -> str:
    """The text of the one QR code in *picture*."""
    found = zxingcpp.read_barcodes(picture)
    assert len(found) == 1, f"expected one QR code, found {len(found)}"
    return found[0].text


# -- help, usage, extras --------------------------------------------------------------------


def test_help_lists_commands_and_exit_codes(run: Callable[..., Run]) -> None:
    """--help exits 0 and documents the commands, the key's env var and the exit codes."""
    result = run("--help")
    assert result.code == 0
    for word in ("fetch", "show", "url", "poll", "watch", "fake-server", "demo", "WACHAT_API_KEY"):
        assert word in result.out
    assert "3 authentication (401/403)" in result.out
    assert "visible in `ps`" in result.out


def test_version(run: Callable[..., Run]) -> None:
    """--version prints the program name and version."""
    result = run("--version")
    assert result.code == 0
    assert result.out.startswith("wachat-qr ")


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
    ],
)
def test_usage_errors_exit_2(run: Callable[..., Run], argv: list[str]) -> None:
    """Bad command lines exit 2 with a message on stderr."""
    result = run(*argv)
    assert result.code == 2
    assert "error" in result.err


def test_missing_key_is_a_configuration_error(
    run: Callable[..., Run], fake: FakeWachatServer
) -> None:
    """Without WACHAT_API_KEY or --api-key: exit 2 and a one-line hint."""
    result = run("fetch", NAME, "--base-url", fake.base_url)
    assert result.code == 2
    assert result.err.count("\n") == 1
    assert "WACHAT_API_KEY" in result.err


@pytest.mark.parametrize(
    ("argv", "module"),
    [
        pytest.param(["poll", NAME], "rich", id="poll-without-rich"),
        pytest.param(["show", NAME], "PIL", id="show-without-pillow"),
        pytest.param(["demo"], "segno", id="demo-without-segno"),
    ],
)
def test_missing_cli_extra_prints_the_install_hint(
    run: Callable[..., Run],
    env: FakeWachatServer,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    module: str,
) -> None:
    """Without the cli extra, the commands that need it say how to install it and exit 2."""
    monkeypatch.setitem(sys.modules, module, None)
    result = run(*argv)
    assert result.code == 2
    assert "pip install 'wachat-async[cli]'" in result.err


def test_poll_json_works_without_rich(
    run: Callable[..., Run], env: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scripts need no extra: poll --json runs without rich (and without a progress bar)."""
    monkeypatch.setitem(sys.modules, "rich", None)
    result = run("poll", NAME, "--json")
    assert result.code == 0
    assert json.loads(result.out)["ok"] is True
    assert result.err == ""


def test_a_very_short_key_does_not_garble_the_output(
    run: Callable[..., Run], fake: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The redaction safety net skips keys too short to be secrets ("x" is in "extra")."""
    monkeypatch.setenv("WACHAT_API_KEY", "x")
    monkeypatch.setitem(sys.modules, "rich", None)
    result = run("poll", NAME, "--base-url", fake.base_url)
    assert result.code == 2
    assert "'cli' extra" in result.err


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


def test_interrupt_is_exit_130(
    run: Callable[..., Run], env: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C ends with status 130 and one line, no traceback."""

    async def interrupted(*args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_fetch", interrupted)
    result = run("fetch", NAME)
    assert result.code == 130
    assert result.err == "wachat-qr: error: interrupted\n"


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


# -- qr_modules / render_half_blocks / png_filename ---------------------------------------------


@pytest.mark.parametrize(
    ("scale", "border", "resize", "mode"),
    [
        pytest.param(1, 0, None, "L", id="scale-1-no-border"),
        pytest.param(4, 4, None, "L", id="scale-4"),
        pytest.param(3, 1, (173, 173, Image.Resampling.NEAREST), "L", id="non-integer-scale"),
        pytest.param(4, 4, (173, 173, Image.Resampling.BILINEAR), "L", id="bilinear"),
        pytest.param(4, 4, (250, 250, Image.Resampling.BICUBIC), "L", id="bicubic-anti-aliased"),
        pytest.param(8, 4, (300, 300, Image.Resampling.LANCZOS), "L", id="lanczos-anti-aliased"),
        pytest.param(5, 2, None, "RGBA", id="transparent-background"),
        pytest.param(2, 4, None, "P", id="palette"),
    ],
)
def test_qr_modules_recovers_the_matrix(
    scale: int, border: int, resize: tuple[int, int, Image.Resampling] | None, mode: str
) -> None:
    """Any module size, quiet zone, smoothing or colour mode gives back segno's own matrix."""
    qr = segno.make_qr("wachat-fake:t1_abc_store:7", error="m")
    buffer = io.BytesIO()
    qr.save(buffer, kind="png", scale=scale, border=border)
    picture = Image.open(io.BytesIO(buffer.getvalue())).convert("L")
    if resize is not None:
        width, height, resample = resize
        picture = picture.resize((width, height), resample)
    if mode == "RGBA":
        rgba = Image.new("RGBA", picture.size, (0, 0, 0, 0))
        rgba.putalpha(picture.point(lambda v: 255 if v < 128 else 0))
        picture = rgba
    elif mode == "P":
        picture = picture.convert("P")
    out = io.BytesIO()
    picture.save(out, format="PNG")
    expected = [[bool(m) for m in row] for row in qr.matrix]
    assert qr_modules(out.getvalue()) == expected


def test_qr_modules_rejects_an_image_without_a_finder_pattern() -> None:
    """A dark dot is not a QR code."""
    picture = Image.new("L", (30, 30), 255)
    picture.paste(0, (10, 10, 12, 12))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    with pytest.raises(ValueError, match="finder pattern"):
        qr_modules(out.getvalue())


def test_render_half_blocks_glyphs() -> None:
    """Each character stacks two modules; the light ones are drawn unless inverted."""
    modules = [[True, False], [False, False], [True, True]]
    assert render_half_blocks(modules, border=0) == "▄█\n  \n"
    assert render_half_blocks(modules, border=0, invert=True) == "▀ \n▀▀\n"
    colored = render_half_blocks(modules, border=0, color=True)
    assert colored == "\x1b[30;107m▀ \x1b[0m\n\x1b[30;107m▀▀\x1b[0m\n"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param(NAME, f"{NAME}.png", id="plain"),
        pytest.param("a/b", "a_b-", id="slash"),
        pytest.param("../etc", "_etc-", id="dot-dot"),
        pytest.param(".hidden", "hidden-", id="leading-dot"),
        pytest.param("tökö", "t_k_-", id="unicode"),
    ],
)
def test_png_filename_is_safe(name: str, expected: str) -> None:
    """File names keep safe names as they are and never escape the folder."""
    filename = png_filename(name)
    assert filename.startswith(expected)
    assert "/" not in filename
    assert filename.endswith(".png")
    assert not filename.startswith(".")


def test_png_filename_never_collides() -> None:
    """Names that clean up to the same text still get different files."""
    assert png_filename("a/b") != png_filename("a_b") != png_filename("a b")


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
    assert "apiKey" in result.err or "key" in result.err.lower()


def test_url_with_expose_api_key_needs_a_key(run: Callable[..., Run]) -> None:
    """--expose-api-key without any key is a configuration error."""
    result = run("url", NAME, "--expose-api-key")
    assert result.code == 2
    assert "needs an API key" in result.err


def test_url_rejects_a_bad_name(run: Callable[..., Run]) -> None:
    """A name the URL builder refuses is a usage error."""
    result = run("url", "bad\nname")
    assert result.code == 2


# -- poll -------------------------------------------------------------------------------------


def test_poll_saves_pngs_and_prints_a_summary(
    run: Callable[..., Run], env: FakeWachatServer, cli_env: Path
) -> None:
    """poll fetches each distinct name once, saves the PNGs and prints a summary table."""
    result = run("poll", NAME, OTHER, NAME, "--out-dir", "out")
    assert result.code == 0
    assert sorted(p.name for p in (cli_env / "out").iterdir()) == sorted(
        [f"{NAME}.png", f"{OTHER}.png"]
    )
    assert "2 instances" in result.out
    assert "saved 2 PNG files in out" in result.out
    assert env.request_count(NAME) == 1


def test_poll_with_failures_exits_1_and_lists_them(
    run: Callable[..., Run], env: FakeWachatServer
) -> None:
    """Failed instances are counted by class and listed; the exit status is 1."""
    result = run("poll", NAME, "t1_nothere0_store", "t1_cloudapi_office")
    assert result.code == 1
    assert "InstanceNotFoundError (404)" in result.out
    assert "QRNotSupportedError (409)" in result.out
    assert "t1_nothere0_store" in result.out


def test_poll_json_lines(run: Callable[..., Run], env: FakeWachatServer, cli_env: Path) -> None:
    """--json prints one parseable object per instance and nothing else on stdout."""
    env.script(OTHER, [502] * 4)
    result = run("poll", NAME, OTHER, "t1_nothere0_store", "--json", "-d", "pngs")
    assert result.code == 1
    rows = {row["instance"]: row for row in map(json.loads, result.out.splitlines())}
    assert set(rows) == {NAME, OTHER, "t1_nothere0_store"}
    assert rows[NAME]["ok"] is True
    assert set(rows[NAME]) == {"instance", "ok", "file", "width", "height", "bytes", "sha256"}
    assert rows[NAME]["file"] == str(Path("pngs") / f"{NAME}.png")
    assert rows[NAME]["width"] == rows[NAME]["height"] > 0
    assert (cli_env / rows[NAME]["file"]).is_file()
    assert rows[OTHER] | {"message": ""} == {
        "instance": OTHER,
        "ok": False,
        "error": "QRFetchFailedError",
        "status": 502,
        "exit_code": 5,
        "message": "",
        "attempts": 4,
    }
    assert rows["t1_nothere0_store"]["exit_code"] == 4


def test_poll_from_file_and_stdin(
    run: Callable[..., Run], env: FakeWachatServer, cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--from-file skips blank lines and # comments; - reads stdin."""
    (cli_env / "names.txt").write_text(f"# fleet\n{NAME}\n\n  {OTHER}  \n", encoding="utf-8")
    from_file = run("poll", "--from-file", "names.txt", "--json")
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{NAME}\n"))
    from_stdin = run("poll", "-f", "-", "--json")
    assert from_file.code == from_stdin.code == 0
    assert len(from_file.out.splitlines()) == 2
    assert json.loads(from_stdin.out)["instance"] == NAME


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


def test_poll_stops_at_once_on_a_wrong_key(
    run: Callable[..., Run], fake: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 401 would repeat for every instance: poll stops early and exits 3."""
    monkeypatch.setenv("WACHAT_API_KEY", "wrong-key")
    names = [f"t1_{i:08d}_store" for i in range(200)]
    result = run("poll", *names, "--base-url", fake.base_url, "--concurrency", "4")
    assert result.code == 3
    assert "stopped after" in result.err
    assert fake.request_count() < 20


def test_poll_quiet_prints_nothing(run: Callable[..., Run], env: FakeWachatServer) -> None:
    """--quiet: no progress, no table; the exit status says it all."""
    result = run("poll", NAME, "-q")
    assert (result.code, result.out, result.err) == (0, "", "")


# -- watch ------------------------------------------------------------------------------------


@pytest.fixture
def rotating(
    wachat_server_factory: Callable[..., FakeWachatServer], monkeypatch: pytest.MonkeyPatch
) -> FakeWachatServer:
    """A fake server whose QR changes on every request (its clock jumps a period per read)."""
    ticks = iter(range(10**9))
    server = wachat_server_factory(api_key=KEY, qr_rotation=1.0, clock=lambda: float(next(ticks)))
    server.add_instance(NAME)
    monkeypatch.setenv("WACHAT_API_KEY", KEY)
    monkeypatch.setenv("WACHAT_BASE_URL", server.base_url)
    return server


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


def test_watch_until_connected(run: Callable[..., Run], env: FakeWachatServer) -> None:
    """--until-connected ends with status 0 once the instance is linked."""
    env.set_state(NAME, "open")
    result = run("watch", NAME, "--until-connected")
    assert result.code == 0
    assert result.out == f"{NAME} is connected\n"


def test_watch_terminal_error(run: Callable[..., Run], env: FakeWachatServer) -> None:
    """A 404 ends the watch with status 4."""
    result = run("watch", "t1_nothere0_store", "--no-show")
    assert result.code == 4


# -- fake-server and demo -------------------------------------------------------------------


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


def test_demo_runs_end_to_end(run: Callable[..., Run], cli_env: Path) -> None:
    """demo polls 50 fake instances: 47 PNGs saved, 3 expected failures, one QR drawn, exit 0."""
    result = run("demo", "--no-wait")
    assert result.code == 0
    saved = list((cli_env / "qr-codes").glob("*.png"))
    assert len(saved) == 47
    for label in (
        "ok",
        "QRNotSupportedError (409)",
        "InstanceNotFoundError (404)",
        "QRFetchFailedError (502)",
    ):
        assert label in result.out
    assert result.out.count("expected:") == 3
    drawing = "\n".join(
        line for line in result.out.splitlines() if line and set(line) <= {"█", "▀", "▄", " "}
    )
    payload = decode(terminal_to_image(drawing))
    assert payload.startswith("wachat-fake:t1_")


def test_demo_quiet_with_custom_dir(run: Callable[..., Run], cli_env: Path) -> None:
    """--quiet prints nothing; --out-dir chooses the folder; --instances the fleet size."""
    result = run("demo", "--no-wait", "-q", "--out-dir", "elsewhere", "--instances", "12")
    assert (result.code, result.out, result.err) == (0, "", "")
    assert len(list((cli_env / "elsewhere").glob("*.png"))) == 9


# -- edges ------------------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    ("error", "code"),
    [
        pytest.param(ConfigurationError("no key"), 2, id="configuration"),
        pytest.param(AuthenticationError(), 3, id="401"),
        pytest.param(SubscriptionRestrictedError(), 3, id="403"),
        pytest.param(BadRequestError(), 4, id="400"),
        pytest.param(InstanceNotFoundError(), 4, id="404"),
        pytest.param(QRNotSupportedError(), 4, id="409"),
        pytest.param(QRFetchFailedError(), 5, id="502"),
        pytest.param(GatewayTimeoutError(), 5, id="504"),
        pytest.param(UnexpectedStatusError(status=500), 5, id="500"),
        pytest.param(WachatConnectionError("reset"), 6, id="connection"),
        pytest.param(WachatTimeoutError("slow"), 6, id="timeout"),
        pytest.param(InvalidImageError("html"), 7, id="not-a-png"),
        pytest.param(ResponseTooLargeError("big", limit=64), 7, id="too-large"),
        pytest.param(InvalidResponseError("no state"), 7, id="bad-body"),
        pytest.param(WachatError("other"), 1, id="base-class"),
    ],
)
def test_exit_code_table(error: WachatError, code: int) -> None:
    """Every error class maps to the documented exit status."""
    assert cli.exit_code_for(error) == code


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["poll", "--concurrency", "many", NAME], id="non-integer"),
        pytest.param(["fake-server", "--port", "70000"], id="port-too-high"),
        pytest.param(["fake-server", "--latency", "-1"], id="negative-latency"),
    ],
)
def test_more_usage_errors(run: Callable[..., Run], argv: list[str]) -> None:
    """Option values are checked by the parser: exit 2."""
    assert run(*argv).code == 2


def test_show_quiet_prints_only_the_drawing(run: Callable[..., Run], env: FakeWachatServer) -> None:
    """--quiet drops the caption on stderr; the QR itself is the output."""
    result = run("show", NAME, "-q")
    assert result.code == 0
    assert result.err == ""
    assert "█" in result.out


def test_show_on_a_terminal_without_unicode(
    run: Callable[..., Run], env: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A terminal that cannot encode block characters gets a usage hint, not a traceback."""
    ascii_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", ascii_out)
    result = run("show", NAME)
    assert result.code == 2
    assert "PYTHONIOENCODING=utf-8" in result.err


def test_fetch_to_stdout_refuses_a_terminal(
    run: Callable[..., Run], env: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """-o - on a terminal would print binary garbage: refused before any request."""
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    result = run("fetch", NAME, "-o", "-")
    assert result.code == 2
    assert env.request_count() == 0


def test_watch_redraws_in_place_on_a_terminal(
    run: Callable[..., Run], rotating: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal each new QR clears the screen first."""
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    result = run("watch", NAME, "-n", "2", "-i", "0.001")
    assert result.code == 0
    assert result.out.count("\x1b[2J\x1b[H") == 2


def test_qr_modules_samples_an_odd_sized_symbol_at_its_own_size() -> None:
    """A symbol whose size is no QR size is sampled at the size it measures."""
    picture = Image.new("L", (43, 43), 255)
    picture.paste(0, (0, 0, 7, 1))  # a 7-module run in the corner: module size 1
    picture.paste(0, (42, 42, 43, 43))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    modules = qr_modules(out.getvalue())
    assert len(modules) == 43
    assert modules[0][:8] == [True] * 7 + [False]


def test_poll_failure_table_is_capped(run: Callable[..., Run], env: FakeWachatServer) -> None:
    """More than 20 failures are summarised in the table (all are counted)."""
    missing = [f"t1_{i:08d}_gone" for i in range(22)]
    result = run("poll", NAME, *missing)
    assert result.code == 1
    assert "... and 2 more" in result.out
    assert "│ InstanceNotFoundError (404) │        22 │" in result.out


def test_poll_failure_without_a_status_shows_its_message(
    run: Callable[..., Run], env: FakeWachatServer
) -> None:
    """A failure that is not an HTTP status shows its own (short) message."""
    env.script(OTHER, [Fault(drop=True)] * 2)
    result = run("poll", NAME, OTHER)
    assert result.code == 1
    assert "WachatConnectionError" in result.out
    assert "connection failed" in result.out


def test_demo_reports_unexpected_failures(
    run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the retries did not absorb the transient 502s, the demo says so and exits 1."""
    monkeypatch.setattr(
        cli, "RetryPolicy", lambda **kwargs: RetryPolicy(max_attempts=1, zero_wait=True)
    )
    result = run("demo", "--no-wait", "--instances", "12")
    assert result.code == 1
    assert "4 instances failed that were meant to succeed" in result.err


# -- issue 10: no tracebacks, quiet pipes, honest messages -----------------------------------

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

    monkeypatch.setattr(cli.WachatClient, "get_qr_image", refuse)
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

    monkeypatch.setattr(cli.WachatClient, "get_qr_image", broken)
    result = run("fetch", NAME)
    assert (result.code, result.out) == (70, "")
    assert result.err.splitlines() == [
        "wachat-qr: error: internal error: RuntimeError: boom with [REDACTED]",
        "wachat-qr: hint: this is a bug: run again with --debug to see the traceback, "
        "and report it",
    ]
    code = main(["fetch", NAME, "--debug"])
    assert code == 70


def test_debug_prints_the_traceback_with_the_key_redacted(
    env: FakeWachatServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--debug shows where an unexpected error came from, still without the key."""

    async def broken(self: object, name: str) -> None:
        raise RuntimeError(f"boom with {KEY}")

    monkeypatch.setattr(cli.WachatClient, "get_qr_image", broken)
    code = main(["fetch", NAME, "--debug"])
    err = capsys.readouterr().err
    assert code == 70
    assert "Traceback (most recent call last)" in err
    assert "in broken" in err
    assert KEY not in err


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
        pytest.param(["fetch", NAME, "--retries", "0"], id="retries"),
        pytest.param(["show", NAME, "--border", "0"], id="border"),
        pytest.param(["fake-server", "--port", "0"], id="port"),
        pytest.param(["fake-server", "--rotation", "0"], id="rotation"),
    ],
)
def test_documented_zeros_are_accepted(argv: list[str]) -> None:
    """0 is documented for these options, so the parser takes it."""
    args = cli.build_parser().parse_args(argv)
    assert getattr(args, argv[-2].lstrip("-")) == 0


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


@pytest.mark.parametrize(
    "suffix",
    [pytest.param("", id="root"), pytest.param("/", id="root-slash"), pytest.param("/v1", id="v1")],
)
def test_a_wrong_base_url_gets_a_hint(
    run: Callable[..., Run], env: FakeWachatServer, suffix: str
) -> None:
    """A base URL without /api/v1 reaches no route: the 404 comes with a hint saying so."""
    result = run("fetch", NAME, "--base-url", env.url + suffix)
    assert result.code == 4
    lines = result.err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("wachat-qr: error: InstanceNotFoundError: 404")
    assert lines[1].startswith("wachat-qr: hint: is --base-url (or WACHAT_BASE_URL) right? ")
    assert "it should end in /api/v1" in lines[1]


def test_a_wrong_base_url_hint_also_for_a_fleet(
    run: Callable[..., Run], env: FakeWachatServer
) -> None:
    """poll whose every name is a 404 from a wrong root prints the hint once."""
    result = run("poll", NAME, OTHER, "--json", "--base-url", env.url)
    assert result.code == 1
    assert result.err.count("it should end in /api/v1") == 1


def test_a_real_missing_instance_has_no_base_url_hint(
    run: Callable[..., Run], env: FakeWachatServer
) -> None:
    """A 404 from the right base URL is just "not found": one line, no hint."""
    result = run("fetch", "t1_nothere0_store")
    assert result.code == 4
    assert result.err.count("\n") == 1
    assert "hint" not in result.err


def test_plain_http_to_another_host_needs_allow_insecure_http(
    run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    """http:// to a non-loopback host is refused in CLI words; the flag reaches the client."""
    monkeypatch.setenv("WACHAT_API_KEY", KEY)
    refused = run("fetch", NAME, "--base-url", "http://fake.example/api/v1")
    seen: list[object] = []

    class Recorder(cli.WachatClient):
        def __init__(self, *args: object, **kwargs: object) -> None:
            seen.append(kwargs.get("allow_insecure_http"))
            raise RuntimeError("stop here")

    monkeypatch.setattr(cli, "WachatClient", Recorder)
    allowed = run(
        "fetch", NAME, "--base-url", "http://fake.example/api/v1", "--allow-insecure-http"
    )
    assert refused.code == 2
    assert "--allow-insecure-http" in refused.err
    assert "allow_insecure_http=True" not in refused.err
    assert (allowed.code, seen) == (70, [True])


def test_allow_insecure_http_reaches_a_fake_server_on_another_interface(
    run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fake server bound to every interface, reached by a non-loopback address, works."""
    import socket

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


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- pipes ------------------------------------------------------------------------------------


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


@pytest.mark.parametrize(("count", "title"), [(1, "1 instance in "), (2, "2 instances in ")])
def test_summary_title_is_singular_for_one(
    run: Callable[..., Run], env: FakeWachatServer, count: int, title: str
) -> None:
    """ "1 instance", "2 instances"; and "1 PNG file"."""
    result = run("poll", *[NAME, OTHER][:count], "-d", "out")
    assert result.out.startswith(title)
    assert f"saved {count} PNG file{'s' if count > 1 else ''} in out" in result.out


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


def _cli_process(argv: list[str], env: FakeWachatServer, **kwargs: object) -> subprocess.Popen[str]:
    environ = {**os.environ, "WACHAT_API_KEY": KEY, "WACHAT_BASE_URL": env.base_url}
    return subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "wachat_async", *argv],
        env=environ,
        text=True,
        **kwargs,  # type: ignore[call-overload]
    )


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
def test_poll_json_into_head_stops_quietly(
    wachat_server_factory: Callable[..., FakeWachatServer], cli_env: Path
) -> None:
    """`poll --json | head -1`: read one line, close the pipe: exit 141, stderr empty."""
    server = wachat_server_factory(api_key=KEY, auto_create=True, qr_rotation=None)
    names = [f"t1_{i:08d}_store_with_a_rather_long_friendly_name" for i in range(1500)]
    (cli_env / "names.txt").write_text("\n".join(names), encoding="utf-8")
    proc = _cli_process(
        ["poll", "-f", "names.txt", "--json", "-c", "16"],
        server,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
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
        proc = _cli_process(argv, fake, stdout=write_end, stderr=subprocess.PIPE)
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
        assert code in cli.EXIT_CODES, (argv, code, err)
        assert "Traceback" not in err, (argv, err)
        assert len(err.splitlines()) <= 3, (argv, err)
        exposed = argv[:1] == ["url"] and "--expose-api-key" in argv
        assert KEY not in err, argv
        assert exposed or KEY not in out, argv

    check()
