"""Polling a fleet (wachat_async.cli._fleet): each distinct name fetched once, PNGs saved off
the event loop under safe names, JSON lines, the summary tables, an early stop on a bad key."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cli._support import OTHER, Run, instance_rows
from tests.conftest import KEY, NAME
from wachat_async import InstanceNotFoundError, QRImage, QRResult
from wachat_async.cli import _fleet as fleet_module
from wachat_async.cli import main, png_filename
from wachat_async.cli._commands import stopped_message
from wachat_async.cli._fleet import Fleet, summary
from wachat_async.cli._output import Out
from wachat_async.testing import FakeWachatServer, Fault
from wachat_async.testing._png import render_qr_png


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
    *lines, last = result.out.splitlines()
    rows = {row["instance"]: row for row in map(json.loads, lines)}
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
    record = json.loads(last)["summary"]
    assert record | {"seconds": 0} == {
        "instances": 3,
        "ok": 1,
        "failed": 2,
        "not_fetched": 0,
        "saved": 1,
        "errors": {"QRFetchFailedError (502)": 1, "InstanceNotFoundError (404)": 1},
        "stopped": None,
        "seconds": 0,
    }
    assert record["seconds"] >= 0


def test_poll_json_without_out_dir_names_no_file(
    run: Callable[..., Run], env: FakeWachatServer, cli_env: Path
) -> None:
    """Without --out-dir nothing is written and each success says "file": null."""
    result = run("poll", NAME, OTHER, "--json")
    assert result.code == 0
    *lines, last = result.out.splitlines()
    assert [json.loads(line)["file"] for line in lines] == [None, None]
    assert json.loads(last)["summary"]["saved"] == 0
    assert list(cli_env.iterdir()) == []


class _CheckingStdout(io.StringIO):
    """A stdout that, as each JSON line is written, checks that the file it names is in place."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self.checked = 0

    def write(self, text: str) -> int:
        for line in text.splitlines():
            row = json.loads(line)
            if row.get("ok"):
                data = (self.folder / row["file"]).read_bytes()  # there, and whole
                assert hashlib.sha256(data).hexdigest() == row["sha256"]
                assert len(data) == row["bytes"]
                self.checked += 1
        return super().write(text)


def test_poll_a_large_fleet_names_each_file_only_once_it_is_written(
    wachat_server_factory: Callable[..., FakeWachatServer],
    monkeypatch: pytest.MonkeyPatch,
    cli_env: Path,
) -> None:
    """300 instances into a folder: every PNG saved whole, and every JSON line printed only
    once its file is in place (a script may open it at once); no temporary file is left."""
    server = wachat_server_factory(api_key=KEY, auto_create=True, qr_rotation=None)
    names = [f"t1_{i:08d}_store" for i in range(300)]
    (cli_env / "names.txt").write_text("\n".join(names), encoding="utf-8")
    monkeypatch.setenv("WACHAT_API_KEY", KEY)
    monkeypatch.setenv("WACHAT_BASE_URL", server.base_url)
    stdout = _CheckingStdout(cli_env)
    monkeypatch.setattr("sys.stdout", stdout)
    code = main(["poll", "-f", "names.txt", "--json", "-d", "out", "-c", "32"])
    assert code == 0
    assert stdout.checked == len(names)
    assert sorted(p.name for p in (cli_env / "out").iterdir()) == sorted(
        png_filename(name) for name in names
    )


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["poll", NAME, OTHER, "-d", "out", "-q"], id="poll"),
        pytest.param(["demo", "--no-wait", "-q", "-d", "out", "--instances", "12"], id="demo"),
    ],
)
def test_pngs_are_saved_off_the_event_loop(
    env: FakeWachatServer, monkeypatch: pytest.MonkeyPatch, cli_env: Path, argv: list[str]
) -> None:
    """Every fsync of a save runs in a worker thread, never on the event loop's (main) thread,
    so fetching goes on while the disk works (the demo's in-process server keeps serving)."""
    threads: list[int] = []
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        threads.append(threading.get_ident())
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    assert main(argv) == 0
    saved = len(list((cli_env / "out").glob("*.png")))
    assert saved >= 2
    assert len(threads) >= saved  # the file (and its folder) were fsynced...
    assert threading.main_thread().ident not in threads  # ...off the loop


def test_a_png_that_cannot_be_saved_is_exit_8_and_leaves_no_temporary_file(
    run: Callable[..., Run], wachat_server_factory: Callable[..., FakeWachatServer], cli_env: Path
) -> None:
    """A save that fails (here: a folder where a PNG goes) stops the poll with one line naming
    the path, exit 8; the writes in flight are cancelled or finished, none left half-done."""
    server = wachat_server_factory(api_key=KEY, auto_create=True, qr_rotation=None)
    names = [f"t1_{i:08d}_store" for i in range(60)]
    blocked = cli_env / "out" / png_filename(names[5])
    blocked.mkdir(parents=True)
    result = run("poll", *names, "-d", "out", "-q", "--api-key", KEY, "--base-url", server.base_url)
    assert result.code == 8
    assert result.err.startswith(f"wachat-qr: error: {Path('out') / blocked.name}: ")
    assert result.err.count("\n") == 1
    assert [p.name for p in (cli_env / "out").iterdir() if p.suffix != ".png"] == []
    assert blocked.is_dir()


def test_poll_stops_at_once_on_a_wrong_key(
    run: Callable[..., Run], fake: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 401 would repeat for every instance: poll stops early and exits 3."""
    monkeypatch.setenv("WACHAT_API_KEY", "wrong-key")
    names = [f"t1_{i:08d}_store" for i in range(200)]
    result = run("poll", *names, "--base-url", fake.base_url, "--concurrency", "4")
    assert result.code == 3
    assert "stopped after" in result.err
    assert "not fetched (stopped early)" in result.out
    assert fake.request_count() < 20


@pytest.mark.parametrize(
    ("count", "tail"),
    [
        pytest.param(1, "server said: Missing or invalid API key.", id="one-instance-nothing-left"),
        pytest.param(
            2,
            "server said: Missing or invalid API key; stopped after 1 of 2 instances: "
            "the other one would fail the same way",
            id="one-left",
        ),
        pytest.param(
            4,
            "server said: Missing or invalid API key; stopped after 1 of 4 instances: "
            "the other 3 would fail the same way",
            id="three-left",
        ),
    ],
)
def test_poll_stopped_on_a_401_says_how_many_were_left(
    run: Callable[..., Run],
    fake: FakeWachatServer,
    monkeypatch: pytest.MonkeyPatch,
    count: int,
    tail: str,
) -> None:
    """One sentence: no ``.;`` after the server's message, and "the other ..." only for
    instances really left unfetched (none with one instance)."""
    monkeypatch.setenv("WACHAT_API_KEY", "wrong-key")
    names = [f"t1_{i:08d}_store" for i in range(count)]
    result = run("poll", *names, "--base-url", fake.base_url, "-c", "1")
    (line,) = result.err.splitlines()
    assert result.code == 3
    assert line.startswith("wachat-qr: error: AuthenticationError: 401")
    assert line.endswith(tail), line
    assert ".;" not in line


@pytest.mark.parametrize(
    ("error", "done", "total", "expected"),
    [
        pytest.param("E: x.", 1, 1, "E: x.", id="all-done-keeps-the-period"),
        pytest.param("E: x", 3, 3, "E: x", id="all-done-in-flight"),
        pytest.param(
            "E: x.",
            1,
            2,
            "E: x; stopped after 1 of 2 instances: the other one would fail the same way",
            id="period-dropped-one-left",
        ),
        pytest.param(
            "E: x",
            2,
            10,
            "E: x; stopped after 2 of 10 instances: the other 8 would fail the same way",
            id="many-left",
        ),
    ],
)
def test_stopped_message(error: str, done: int, total: int, expected: str) -> None:
    """The stop line for any count: punctuation joined once, the number left spelled right."""
    assert stopped_message(error, done, total) == expected


def test_poll_quiet_prints_nothing(run: Callable[..., Run], env: FakeWachatServer) -> None:
    """--quiet: no progress, no table; the exit status says it all."""
    result = run("poll", NAME, "-q")
    assert (result.code, result.out, result.err) == (0, "", "")


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


@pytest.mark.parametrize(("count", "title"), [(1, "1 instance in "), (2, "2 instances in ")])
def test_summary_title_is_singular_for_one(
    run: Callable[..., Run], env: FakeWachatServer, count: int, title: str
) -> None:
    """ "1 instance", "2 instances"; and "1 PNG file"."""
    result = run("poll", *[NAME, OTHER][:count], "-d", "out")
    assert result.out.startswith(title)
    assert f"saved {count} PNG file{'s' if count > 1 else ''} in out" in result.out


# -- png_filename -----------------------------------------------------------------------------


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


def test_a_terminal_gets_a_progress_bar_that_counts_every_instance(
    run: Callable[..., Run], env: FakeWachatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stderr on a terminal: a progress bar that ends at N/N with the failures counted, saved
    files included; the summary stays on stdout."""
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    result = run("poll", NAME, OTHER, "t1_nothere0_store", "-d", "out")
    assert result.code == 1
    assert "polling" in result.err
    assert "3/3" in result.err
    assert "1 failed" in result.err
    assert "saved 2 PNG files in out" in result.out


# -- piped summaries: no line wrapped or split, whatever the counts ---------------------------

_LONG = "t1_" + "x" * 150 + "_a_name_far_wider_than_any_terminal"


def _fleet(total: int, failed: int) -> Fleet:
    """A finished fleet of *total* instances, *failed* of them unknown (404), one with a long
    name and a long message."""
    names = [_LONG, *(f"t1_{i:08d}_gone" for i in range(failed - 1))][:failed]
    fleet = Fleet([*names, *(f"t1_{i:08d}_ok" for i in range(total - failed))])
    qr = QRImage.from_png(render_qr_png("payload"), instance_name=NAME)
    for name in fleet.names:
        error = InstanceNotFoundError(status=404, instance_name=name, body="why " * 60)
        fleet.add(
            QRResult(instance_name=name, error=error)
            if name in names
            else QRResult(instance_name=name, image=qr),
            None,
        )
    fleet.elapsed = 1234.5678
    return fleet


@pytest.mark.parametrize("failed", [0, 1, 25], ids=["all-ok", "one-failed", "many-failed"])
@pytest.mark.parametrize("total", [1, 999, 1000, 100_000])
def test_piped_summary_lines_are_never_wrapped(
    capsys: pytest.CaptureFixture[str], total: int, failed: int
) -> None:
    """1, 999, 1000 or 100000 instances: the title is one whole line, each table row one line
    that holds its instance name whole, no line ends in a space."""
    failed = min(failed, total)
    summary(_fleet(total, failed), Out(False, []))
    lines = capsys.readouterr().out.split("\n")
    noun = "instance" if total == 1 else "instances"
    assert lines[0] == f"{total} {noun} in 1234.57 s"
    assert not [line for line in lines if line != line.rstrip()]
    assert any(line.startswith("│ ok ") and f" {total - failed} │" in line for line in lines)
    if failed:
        assert "failures" in lines
        assert sum(_LONG in line for line in lines) == 1
        shown = min(failed, 20)
        assert sum("InstanceNotFoundError" in line and "│" in line for line in lines) == 1 + shown


def test_a_piped_poll_of_1000_instances_has_a_whole_title_line(
    run: Callable[..., Run], wachat_server_factory: Callable[..., FakeWachatServer], cli_env: Path
) -> None:
    """End to end, the stranger's case: `seq ... | wachat-qr poll -f - | head -1`."""
    server = wachat_server_factory(api_key=KEY, auto_create=True, qr_rotation=None)
    names = [f"inst_{i:05d}" for i in range(1, 1001)]
    (cli_env / "names.txt").write_text("\n".join(names), encoding="utf-8")
    result = run(
        "poll", "-f", "names.txt", "-c", "64", "--api-key", KEY, "--base-url", server.base_url
    )
    first, *rest = result.out.split("\n")
    assert result.code == 0
    assert first.startswith("1000 instances in ")
    assert first.endswith(" s")
    assert not [line for line in rest if line.strip() == "s"]


@pytest.mark.parametrize("command", [["poll", NAME], ["demo", "--no-wait"]], ids=["poll", "demo"])
def test_an_out_dir_that_is_a_file_says_so(
    run: Callable[..., Run], env: FakeWachatServer, cli_env: Path, command: list[str]
) -> None:
    """-d FILE: "exists and is not a folder" (not the bare "File exists"), exit 8."""
    (cli_env / "taken").write_text("not a folder", encoding="utf-8")
    result = run(*command, "-d", "taken")
    assert result.code == 8
    assert "wachat-qr: error: taken: exists and is not a folder\n" in result.err


# -- progress on a stderr that is not a terminal ----------------------------------------------


@pytest.mark.parametrize(
    ("argv", "lines"),
    [
        pytest.param([], 1, id="tables"),
        pytest.param(["--json"], 1, id="json"),
        pytest.param(["-q"], 0, id="quiet"),
    ],
)
def test_a_piped_stderr_gets_a_progress_line_every_few_seconds(
    run: Callable[..., Run],
    env: FakeWachatServer,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    lines: int,
) -> None:
    """Cron, CI, Kubernetes: one line every PROGRESS_EVERY seconds of the (injected) clock,
    none before the first period is over, none with -q."""
    ticks = iter(range(0, 1000, 3))  # each reading of the clock is 3 s later
    monkeypatch.setattr(fleet_module, "clock", lambda: float(next(ticks)))
    result = run("poll", NAME, OTHER, "t1_cloudapi_office", *argv)
    assert result.code == 1
    # Readings: start 0, then one per instance (3, 6, 9): a line at 6 only (the next at 11).
    progress = re.findall(
        r"^wachat-qr: polled 2 of 3 instances in 6 s: ([12]) ok, ([01]) failed$",
        result.err,
        re.MULTILINE,
    )
    assert len(progress) == lines
    assert all(int(ok) + int(failed) == 2 for ok, failed in progress)
    assert result.err.count("\n") == lines


def test_a_signal_during_a_save_lets_it_end_and_reports_it(
    run: Callable[..., Run], env: FakeWachatServer, monkeypatch: pytest.MonkeyPatch, cli_env: Path
) -> None:
    """SIGTERM while a PNG is being written: the write ends, its JSON line is printed and it is
    counted, so every file left in --out-dir is whole and named; no temporary file is left."""
    env.script(OTHER, [Fault(hang=True)])
    leaving = threading.Event()
    real_exit = fleet_module._Writer.__aexit__

    async def exit_(self: fleet_module._Writer, *exc_info: Any) -> None:
        leaving.set()  # the fetches are cancelled: now the writer is told to stop
        await real_exit(self, *exc_info)

    fsync = os.fsync
    sent: list[int] = []

    def signalling_fsync(fd: int) -> None:  # the first one: mid-write, in a worker thread
        if not sent:
            sent.append(fd)
            os.kill(os.getpid(), signal.SIGTERM)
            assert leaving.wait(60)  # a guard against a hang only: set at once in practice
        fsync(fd)

    monkeypatch.setattr(fleet_module._Writer, "__aexit__", exit_)
    monkeypatch.setattr(os, "fsync", signalling_fsync)
    result = run("poll", NAME, OTHER, "--json", "-d", "out")
    assert result.code == 143
    rows = instance_rows(result.out)
    summary = json.loads(result.out.splitlines()[-1])["summary"]
    assert [row["file"] for row in rows] == [str(Path("out") / f"{NAME}.png")]
    assert (summary["saved"], summary["not_fetched"]) == (1, 1)
    assert [p.name for p in (cli_env / "out").iterdir()] == [f"{NAME}.png"]
