"""The fake server as a program (``wachat_async.testing.__main__``): options, output, exit codes."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from wachat_async.testing import FakeWachatServer, _server
from wachat_async.testing import __main__ as cli

from ._support import (
    KEY,
    NAME,
    PNG_SIGNATURE,
    sync_get,
)

CLI_KEY = "cli-KEY-9d1e"
ROOT = Path(__file__).resolve().parents[2]  # the repository


def stop_when_started(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the program's server stop itself (as Ctrl-C would) as soon as it listens."""

    class Stopping(FakeWachatServer):
        async def start(self) -> None:
            await super().start()
            asyncio.get_running_loop().call_soon(signal.raise_signal, signal.SIGINT)

    monkeypatch.setattr(_server, "FakeWachatServer", Stopping)


def test_cli_parses_options() -> None:
    """Options are parsed into their types; --instance repeats, --instances counts."""
    args = cli._build_parser().parse_args(
        ["--port", "0", "--api-key", "k", "--instance", "a", "--instance", "b", "--rotation", "0"]
    )
    assert (args.port, args.api_key, args.instance_names, args.rotation) == (
        0,
        "k",
        ["a", "b"],
        0.0,
    )
    assert cli._names(args) == ["a", "b"]


def test_cli_serves_the_readme_names_by_default() -> None:
    """Without --instance the names of the README's examples are served, plus any generated."""
    args = cli._build_parser().parse_args(["--instances", "3"])
    names = cli._names(args)
    assert names[: len(cli.DEFAULT_INSTANCES)] == list(cli.DEFAULT_INSTANCES)
    assert names[len(cli.DEFAULT_INSTANCES) :] == cli.generated_names(3)
    assert len(set(names)) == len(names) == len(cli.DEFAULT_INSTANCES) + 3


def test_default_names_cover_every_name_the_docs_expect_to_exist() -> None:
    """Every t1_ name in the README, docs and examples is served, except the ones shown missing."""
    root = ROOT
    texts = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    texts += sorted((root / "examples").rglob("*.py"))
    used = {m for path in texts for m in re.findall(r"\bt1_[A-Za-z0-9_]+", path.read_text())}
    # Names the docs use as the example of a missing or failing instance.
    missing = {n for n in used if re.search(r"gone|no_such|nothere|typo|stroe", n)}
    # Names the docs create themselves (a test's own fake server).
    added = {m for p in texts for m in re.findall(r'add_instance\("(t1_\w+)"', p.read_text())}
    assert used - missing - added <= set(cli.DEFAULT_INSTANCES)
    assert missing.isdisjoint(cli.DEFAULT_INSTANCES)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rotation", "soon"], "not a number: 'soon'"),
        (["--rotation", "-1"], "must be a finite number >= 0, got '-1'"),
        (["--latency", "inf"], "must be a finite number >= 0, got 'inf'"),
        (["--duration", "0"], "must be a finite number > 0, got '0'"),
        (["--port", "-1"], "must be an integer from 0 to 65535, got '-1'"),
        (["--port", "65536"], "must be an integer from 0 to 65535, got '65536'"),
        (["--log-limit", "-5"], "must be an integer >= 0, got '-5'"),
        (["--instances", "-1"], "must be an integer from 0 to 100000, got '-1'"),
        (["--instances", "a,b"], "give names with --instance NAME"),
        (["--instance", " "], "must not be empty or whitespace"),
        (["--instance", "a\nb"], "control characters: 'a\\nb'"),
        (["--api-key", " padded "], "without surrounding whitespace"),
        (["--share-502", "1.5"], "must be a share from 0 to 1, got '1.5'"),
        (["--share-hang", "-0.1"], "must be a finite number >= 0, got '-0.1'"),
        (["--rate-limit", "0"], "must be a finite number > 0, got '0'"),
        (["--retry-after", "0.5"], "not an integer: '0.5'"),
    ],
    ids=[
        "non-number",
        "negative-rotation",
        "infinite-latency",
        "zero-duration",
        "negative-port",
        "port-too-high",
        "negative-log-limit",
        "negative-count",
        "names-for-a-count",
        "blank-name",
        "newline-name",
        "padded-key",
        "share-over-one",
        "negative-share",
        "zero-rate",
        "fractional-retry-after",
    ],
)
def test_cli_rejects_bad_values_with_the_true_bound(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad values exit 2 with one error line that states the real bound, and a --help hint."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert (code, err.count("\n")) == (2, 2)
    assert message in err.splitlines()[0]
    assert err.splitlines()[1] == f"{cli.PROG}: hint: try '{cli.PROG} --help'"
    assert " padded " not in err


@pytest.mark.parametrize(
    "argv",
    [["--rotation", "0"], ["--latency", "0"], ["--port", "0"], ["--instances", "0"]],
    ids=["rotation", "latency", "port", "instances"],
)
def test_cli_accepts_the_documented_zeros(argv: list[str]) -> None:
    """0 is a documented value of these options (never, none, any free port, no extras)."""
    args = cli._build_parser().parse_args(argv)
    assert getattr(args, {"--instances": "generated"}.get(argv[0], argv[0][2:])) == 0


def test_cli_serves_until_sigint(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """main() serves requests, stops cleanly on SIGINT and never prints the key."""
    statuses: list[int] = []

    async def probe(server: FakeWachatServer) -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{server.base_url}/instance/qr/image",
                params={"instanceName": "a", "apiKey": CLI_KEY},
            ) as response,
        ):
            statuses.append(response.status)
        signal.raise_signal(signal.SIGINT)  # what Ctrl-C does

    class ProbedServer(FakeWachatServer):
        async def start(self) -> None:
            await super().start()
            probes.append(asyncio.ensure_future(probe(self)))

    probes: list[asyncio.Future[None]] = []
    monkeypatch.setattr(_server, "FakeWachatServer", ProbedServer)
    argv = ["--port", "0", "--api-key", CLI_KEY, "--instance", "a", "--instance", "b"]
    code = cli.main([*argv, "--rotation", "5"])
    out, err = capsys.readouterr()
    assert (code, statuses, [p.done() for p in probes]) == (0, [200], [True])
    assert out.startswith("Fake Wachat server listening on http://127.0.0.1:")
    assert "Instances (2): a, b; any other name: 404" in out
    assert "QR codes change every 5 s" in err
    assert err.endswith("Stopped.\n")
    assert CLI_KEY not in out + err


def test_cli_serves_its_faults_and_says_which(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--rate-limit, --retry-after and --share-502 apply to every instance's QR requests (one
    request each 1000 s: the second is a 429; a 502 share of 1: the first is a 502), and a
    line on stderr says what goes wrong."""
    statuses: list[tuple[int, str | None]] = []

    async def probe(server: FakeWachatServer) -> None:
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                async with session.get(
                    f"{server.base_url}/instance/qr/image",
                    params={"instanceName": "a", "apiKey": CLI_KEY},
                ) as response:
                    statuses.append((response.status, response.headers.get("Retry-After")))
        signal.raise_signal(signal.SIGINT)

    class ProbedServer(FakeWachatServer):
        async def start(self) -> None:
            await super().start()
            probes.append(asyncio.ensure_future(probe(self)))

    probes: list[asyncio.Future[None]] = []
    monkeypatch.setattr(_server, "FakeWachatServer", ProbedServer)
    argv = ["--port", "0", "--api-key", CLI_KEY, "--instance", "a", "--rate-limit", "0.001"]
    code = cli.main([*argv, "--retry-after", "7", "--share-502", "1"])
    err = capsys.readouterr().err
    assert (code, statuses) == (0, [(502, None), (429, "7")])
    assert (
        "Faults of the QR requests: 429 (Retry-After: 7) above 0.001 requests/s; "
        "100% answered 502.\n"
    ) in err


def test_cli_shares_over_one_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """--share-502 and --share-hang together over 1: one line, exit 2, nothing served."""
    code = cli.main(["--port", "0", "--share-502", "0.6", "--share-hang", "0.5"])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err == f"{cli.PROG}: error: --share-502 and --share-hang add up to over 1\n"


def test_cli_busy_port_exits_8(capsys: pytest.CaptureFixture[str]) -> None:
    """A busy port is one line on stderr with exit status 8 (as in wachat-qr's table)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code = cli.main(["--port", str(busy.getsockname()[1])])
    err = capsys.readouterr().err
    assert (code, err.count("\n")) == (8, 1)
    assert err.startswith(f"{cli.PROG}: error: cannot listen on 127.0.0.1:")


def test_cli_without_segno_exits_2_with_the_install_hint(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the testing extra: one line naming the install command, before listening."""
    monkeypatch.setitem(sys.modules, "segno", None)
    code = cli.main(["--port", "0", "--duration", "0.01"])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert "pip install 'wachat-async[testing]'" in err


def test_cli_access_log_configures_logging(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--access-log turns on logging to stderr before serving."""
    configured: list[dict[str, Any]] = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: configured.append(kw))
    stop_when_started(monkeypatch)
    assert cli.main(["--access-log", "--port", "0"]) == 0
    assert configured[0]["level"] == logging.INFO


def test_cli_duration_stops_serving(capsys: pytest.CaptureFixture[str]) -> None:
    """--duration ends serving with exit 0 (the one tiny real interval of these tests)."""
    code = cli.main(["--port", "0", "--duration", "0.01"])
    assert (code, capsys.readouterr().err.endswith("Stopped.\n")) == (0, True)


def test_cli_unexpected_error_is_one_line_and_exit_70(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug is reported in one line plus a hint to use --debug, which shows the traceback."""

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(_server.FakeWachatServer, "add_instances", broken)
    code = cli.main(["--port", "0"])
    err = capsys.readouterr().err
    debug_code = cli.main(["--port", "0", "--debug"])
    debug_err = capsys.readouterr().err
    assert (code, err.count("\n")) == (70, 2)
    assert err.startswith(f"{cli.PROG}: error: internal error: RuntimeError: boom\n")
    assert "--debug" in err
    assert "Traceback" not in err
    assert (debug_code, "Traceback (most recent call last)" in debug_err) == (70, True)


def _serve_in_a_process(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "wachat_async.testing", "--port", "0", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # pragma: no cover - only when the test already failed
            proc.kill()
            proc.wait()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_python_dash_m_runs_until_sigint() -> None:
    """`python -m wachat_async.testing` prints the URL first and exits 0 on Ctrl-C."""
    proc = _serve_in_a_process("--api-key", KEY)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        base_url = first.rsplit(" ", 1)[-1].strip()
        status, _ = sync_get(f"{base_url}/instance/qr/image?instanceName=t1_demo0001_store", KEY)
    finally:
        out, err = _stop(proc)
    assert (proc.returncode, status, base_url.startswith("http://127.0.0.1:")) == (0, 200, True)
    assert KEY not in first + out + err


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_readme_ten_lines_work_with_the_printed_exports(tmp_path: Path) -> None:
    """Copy the printed export lines, run the README's ten-line example: it saves qr.png."""
    proc = _serve_in_a_process()
    try:
        assert proc.stdout is not None
        exports: dict[str, str] = {}
        for line in iter(proc.stdout.readline, ""):
            if line.strip().startswith("export "):
                name, _, value = line.strip().removeprefix("export ").partition("=")
                exports[name] = value
            if line.startswith("Instances"):
                break
        blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
        (example,) = [b for b in blocks if "asyncio.run(main())" in b]
        (tmp_path / "example.py").write_text(example, encoding="utf-8")
        done = subprocess.run(
            [sys.executable, "example.py"],
            cwd=tmp_path,
            env={**os.environ, **exports},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        _stop(proc)
    assert sorted(exports) == ["WACHAT_API_KEY", "WACHAT_BASE_URL"]
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("QRImage(instance_name='t1_mq9r2jov_jakarta_store'")
    assert (tmp_path / "qr.png").read_bytes().startswith(PNG_SIGNATURE)


def _outbound_address() -> str | None:
    """This machine's own non-loopback address (a UDP "connect" sends nothing), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed to the internet
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address  # noqa: S104


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_all_interfaces_prints_urls_that_work() -> None:
    """--host 0.0.0.0 prints a loopback base URL that answers, and one for other machines."""
    proc = _serve_in_a_process("--host", "0.0.0.0")  # noqa: S104 - the case under test
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        lines = [proc.stdout.readline() for _ in range(4)]
        base_url = first.rsplit(" ", 1)[-1].strip()
        status, png = sync_get(f"{base_url}/instance/qr/image?instanceName={NAME}", "demo")
        own, remote = _outbound_address(), 200
        if own is not None:  # the same server, reached through a non-loopback interface
            port = base_url.rsplit(":", 1)[1].split("/")[0]
            url = f"http://{own}:{port}/api/v1/instance/state?instanceName={NAME}"
            remote, _ = sync_get(url, "demo")
    finally:
        _stop(proc)
    assert remote == 200
    assert base_url.startswith("http://127.0.0.1:")
    assert (status, png[:8]) == (200, PNG_SIGNATURE)
    assert any("From another machine: WACHAT_BASE_URL=http://" in line for line in lines)
    assert any("--allow-insecure-http" in line for line in lines)


@pytest.mark.skipif(not socket.has_dualstack_ipv6(), reason="no dual-stack IPv6 here")
@pytest.mark.parametrize("host", [pytest.param("::", id="ipv6-any"), pytest.param("", id="empty")])
def test_every_interface_of_both_families_serves_ipv4_and_ipv6(host: str) -> None:
    """--host :: (or ""): one dual-stack socket; the printed base URL ([::1]) and the printed
    IPv4 one (127.0.0.1) both answer, as does the host name's URL for other machines."""
    proc = _serve_in_a_process("--host", host)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(6)]
        base_url = lines[0].rsplit(" ", 1)[-1].strip()
        (ipv4_line,) = [line for line in lines if "IPv4 clients too" in line]
        ipv4_url = ipv4_line.rsplit(" ", 1)[-1].strip()
        answers = {
            url: sync_get(f"{url}/instance/qr/image?instanceName={NAME}", "demo")[0]
            for url in (base_url, ipv4_url)
        }
    finally:
        _stop(proc)
    port = base_url.rsplit(":", 1)[1].split("/")[0]
    expected_v6 = (
        f"http://[::1]:{port}/api/v1" if host == "::" else f"http://127.0.0.1:{port}/api/v1"
    )
    assert (base_url, ipv4_url) == (expected_v6, f"http://127.0.0.1:{port}/api/v1")
    assert answers == {base_url: 200, ipv4_url: 200}


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
def test_python_dash_m_stops_quietly_when_its_reader_is_gone() -> None:
    """stdout is a pipe nobody reads (`| head` that already quit): exit 141, stderr empty."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    try:
        done = subprocess.run(
            [sys.executable, "-m", "wachat_async.testing", "--port", "0", "--duration", "30"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


def test_cli_broken_pipe_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stdout whose reader went away ends main() with 141 and nothing on stderr."""

    class Gone(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Gone())
    code = cli.main(["--port", "0", "--duration", "30"])
    assert (code, capsys.readouterr().err) == (141, "")
