"""Smoke tests for benchmarks/: the code runs end to end at tiny sizes (nothing is timed)."""

from __future__ import annotations

import importlib
import io
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import aiohttp
import pytest
import zxingcpp
from PIL import Image

from wachat_async.testing import FakeWachatServer

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str) -> ModuleType:
    """Import ``benchmarks.<name>`` (a namespace package next to ``tests/``)."""
    sys.path.insert(0, str(ROOT))
    try:
        return importlib.import_module(f"benchmarks.{name}")
    finally:
        sys.path.remove(str(ROOT))


server_mod = _load("_server")
throughput = _load("throughput")
fleet = _load("fleet")
instructions = _load("instructions")
limits = _load("limits")
shutdown = _load("shutdown")
fanout = _load("fanout")
cli_fleet = _load("cli_fleet")


@pytest.fixture
async def bench_server() -> AsyncIterator[str]:
    """The benchmark server in this test's loop; yields its root URL."""
    runner, root_url = await server_mod.start_in_process()
    try:
        yield root_url
    finally:
        await runner.cleanup()


def _target(root_url: str, connections: int = 4) -> object:
    return throughput.Target(
        f"{root_url}/api/v1", server_mod.BENCH_API_KEY, connections=connections
    )


async def test_throughput_runs_every_client_every_round(bench_server: str) -> None:
    """Each client gets one sample per round, and the server saw every request."""
    clients = throughput.client_table()
    results = await throughput.run_throughput(
        _target(bench_server),
        clients,
        requests=20,
        concurrency=4,
        rounds=2,
        warmup=4,
        collect=False,
    )
    stats = await server_mod.control(bench_server, "_stats")
    assert [r.name for r in results] == list(clients)
    assert all([s.requests for s in r.samples] == [20, 20] for r in results)
    assert stats["requests"] == len(clients) * (4 + 2 * 20)
    table = throughput.throughput_table(results)
    assert table.count("\n") == len(clients) + 1
    assert "| bare aiohttp |" in table
    assert "| 1.00x | " in table


async def test_storm_amplification_per_client(bench_server: str) -> None:
    """Against 100% 502s the naive clients send max_attempts each; wachat-async's budget and
    circuit fewer, its calls failing with the 502 or (held by the open circuit) at their
    deadline, shortened here so that the test is quick."""
    target = throughput.Target(
        f"{bench_server}/api/v1", server_mod.BENCH_API_KEY, connections=20, deadline=0.5
    )
    results = await throughput.run_storm(
        target,
        throughput.client_table(storm=True),
        bench_server,
        calls=100,
    )
    per_call = {r.name: r.requests_per_call for r in results}
    outcomes = {r.name: r.outcomes for r in results}
    assert per_call["aiohttp + tenacity (naive)"] == 4.0
    assert per_call["aiohttp-retry"] == 4.0
    assert 1.0 <= per_call["wachat-async"] < 2.0
    got = outcomes["wachat-async"]
    assert sum(got.values()) == 100
    assert set(got) <= {"QRFetchFailedError", "DeadlineExceededError"}
    assert (await server_mod.control(bench_server, "_stats"))["mode"] == "ok"
    assert "| wachat-async |" in throughput.storm_table(results, 4)


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        ({}, "instanceName=a", 401),
        ({"Authorization": "Bearer wrong"}, "instanceName=a", 401),
        ({"Authorization": f"Bearer {server_mod.BENCH_API_KEY}"}, "", 400),
        ({"Authorization": f"Bearer {server_mod.BENCH_API_KEY}"}, "instanceName=a", 200),
    ],
    ids=["no-auth", "wrong-key", "no-instance-name", "ok"],
)
async def test_server_checks_bearer_auth_and_instance_name(
    bench_server: str, headers: dict[str, str], query: str, expected: int
) -> None:
    """The benchmark server answers like the real endpoint for auth and a missing name."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{bench_server}{server_mod.QR_PATH}?{query}", headers=headers) as resp,
    ):
        body = await resp.read()
    assert resp.status == expected
    assert body.startswith(b"\x89PNG\r\n\x1a\n") == (expected == 200)


def test_main_runs_both_modes_against_a_child_process_server(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The CLI starts the server process, prints both Markdown tables and exits 0."""
    code = throughput.main(
        [
            "--mode",
            "all",
            "--requests",
            "10",
            "--rounds",
            "1",
            "--concurrency",
            "2",
            "--warmup",
            "0",
            "--storm-calls",
            "10",
            "--storm-wait",
            "0",
            "--storm-deadline",
            "0.5",
            "--no-pin",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "| bare aiohttp | " in out
    assert "| aiohttp-retry | 10 | 40 | 4.00 |" in out


def test_server_png_is_a_scannable_whatsapp_like_qr() -> None:
    """The benchmark PNG decodes back to the WhatsApp-shaped payload it was made from."""
    decoded = zxingcpp.read_barcodes(Image.open(io.BytesIO(server_mod.make_png())))
    assert [r.text for r in decoded] == [server_mod.whatsapp_like_payload()]


async def test_fleet_poll_gets_one_result_per_instance() -> None:
    """poll_fleet drains fetch_many: one ok result per instance, each fetched once."""
    names = fleet.fleet_names(50)
    async with FakeWachatServer(fleet.FLEET_API_KEY, qr_rotation=None) as server:
        server.add_instances(names)
        report = await fleet.poll_fleet(server.base_url, server.api_key, names, concurrency=10)
        received = server.request_count()
    assert [(p.results, dict(p.outcomes)) for p in report.passes] == [(50, {"ok": 50})]
    assert received == 50
    assert "| 1 (cold: server renders each QR) | 50 |" in fleet.report_tables(report)


def test_fleet_main_runs_the_fake_server_in_a_child_process(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The fleet CLI polls every instance each pass and reads the child server's count."""
    code = fleet.main(["--instances", "20", "--concurrency", "5", "--passes", "2", "--no-pin"])
    out = capsys.readouterr().out
    assert code == 0
    assert "| 2 (warm) | 20 |" in out
    assert "fake server received 40 requests" in out


@pytest.mark.parametrize("kind", list(instructions.CLIENTS))
async def test_instructions_clients_fetch_every_image(bench_server: str, kind: str) -> None:
    """Each client instructions.py measures (run here without valgrind) makes every request."""
    await instructions._client(kind, f"{bench_server}/api/v1", 12, 3)
    assert (await server_mod.control(bench_server, "_stats"))["requests"] == 12


def test_instructions_rows_pair_a_floor_with_a_wachat_client() -> None:
    """Every row compares a bare aiohttp client with a wachat-async one, both defined."""
    for _label, floor, ours in instructions.ROWS.values():
        assert floor.startswith("bare")
        assert ours.startswith("wachat")
        assert {floor, ours} <= instructions.CLIENTS.keys()


@pytest.mark.parametrize("client", list(limits.client_table()))
async def test_limits_clients_fetch_every_name_once_when_nothing_fails(client: str) -> None:
    """Each row of limits.py gets one ok per name and sends one request per name."""
    names = [f"t1_limits{i:03d}_store" for i in range(12)]
    row = limits.Row(client, "smoke", len(names), 4)
    async with FakeWachatServer(limits.LIMITS_API_KEY, qr_rotation=None) as server:
        server.add_instances(names)
        await limits.client_table()[client](server.base_url, names, 4, row)
        received = server.request_count()
    assert row.outcomes == {"ok": 12}
    assert received == 12
    assert row.attempts in (None, 12)  # the hand-written clients count their attempts


def test_limits_table_shows_failures_by_type_and_the_share_of_429() -> None:
    """A row's failures, requests per name, 429 share and wall/ideal reach the table."""
    row = limits.Row("bare aiohttp", "ratelimit", 10, 4, wall_s=3.0, ideal_s=2.0)
    row.outcomes.update({"ok": 6, "StatusError(429)": 4})
    row.statuses.update({200: 6, 429: 9})
    assert "| 4 (40%) | StatusError(429) 4 | 15 | 1.50 | 40% | 60% | 3.0 | 1.50x |" in (
        limits.table([row])
    )
    assert row.as_dict()["statuses"] == {"200": 6, "429": 9}


def test_limits_main_counts_the_programs_answers(capsys: pytest.CaptureFixture[str]) -> None:
    """Against the fake server program with 50% 502s, every name gets an outcome and the
    access log counts one answer per bare aiohttp request."""
    code = limits.main(
        [
            *("--scenario", "flaky", "--names", "20", "--concurrency", "5", "--no-pin", "--json"),
            *("--clients", "bare aiohttp", "wachat-async"),
        ]
    )
    rows = {r["client"]: r for r in json.loads(capsys.readouterr().out)}
    assert code == 0
    assert sum(rows["wachat-async"]["outcomes"].values()) == 20
    bare = rows["bare aiohttp"]
    assert bare["attempts"] == bare["answered"] == 20
    assert set(bare["statuses"]) <= {"200", "502"}
    assert bare["failed"] == bare["statuses"].get("502", 0)


def test_shutdown_main_ends_every_stream_and_times_the_exit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """shutdown.py starts the aiohttp example, opens the viewers, and reports a clean end."""
    code = shutdown.main(
        ["--apps", "aiohttp.web", "--signals", "SIGTERM", "--viewers", "3", "--json"]
    )
    [row] = json.loads(capsys.readouterr().out)
    assert code == 0
    assert row["exit_status"] == 0
    assert row["streams_ended"] == {"clean end": 3}


def test_fanout_main_counts_viewers_and_upstream_requests(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """fanout.py gets a first QR to every viewer and samples the app's memory."""
    code = fanout.main(["--apps", "aiohttp.web", "--viewers", "3", "--hold", "0", "--json"])
    [row] = json.loads(capsys.readouterr().out)
    assert code == 0
    assert row["events"]["qr (first)"] == 3
    assert row["streams_failed"] == 0
    assert row["rss_idle"] > 0


def test_cli_fleet_main_measures_a_whole_poll(capsys: pytest.CaptureFixture[str]) -> None:
    """cli_fleet.py runs wachat-qr poll to its end and reads its peak RSS."""
    code = cli_fleet.main(
        ["--mode", "rss", "--names", "30", "--outputs", "json", "--no-pin", "--json"]
    )
    [row] = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (row["exit_status"], row["stdout_lines"]) == (0, 31)  # 30 records and the summary
    assert row["peak_rss"] > 0
