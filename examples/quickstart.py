"""Quickstart: fetch and save WhatsApp QR codes with wachat-async.

Run it from a clone, after ``pip install -e '.[examples]'``::

    python examples/quickstart.py                      # no key: an in-process fake server
    WACHAT_API_KEY=... python examples/quickstart.py t1_mq9r2jov_jakarta_store t1_...

Without ``WACHAT_API_KEY`` it starts the embedded fake Wachat server (a real HTTP server on
127.0.0.1, in this process; no network, no account) with a few instances. With a key it talks to
the real API (``WACHAT_BASE_URL`` optional) and fetches the instances you name. Either way it
saves the QR codes concurrently (each file written atomically), then shows how a 404 is handled.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from wachat_async import InstanceNotFoundError, WachatClient, WachatError

FAKE_INSTANCES = [
    "t1_mq9r2jov_jakarta_store",
    "t1_k2p8x1aa_bandung_store",
    "t1_zt7c4v0q_surabaya_warehouse",
]
#: A name no account has, to show the error handling.
MISSING = "t1_00000000_no_such_store"


def filename(instance_name: str) -> str:
    """A file name that stays inside the output folder, whatever the instance name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", instance_name).lstrip(".") + ".png"


async def save_all(client: WachatClient, names: Sequence[str], out_dir: Path) -> int:
    """Save every instance's QR concurrently; print one line per instance; return failures."""
    out_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before any I/O
    results = await asyncio.gather(
        *(client.save_qr_image(name, out_dir / filename(name)) for name in names),
        return_exceptions=True,
    )
    failures = 0
    for name, result in zip(names, results, strict=True):
        if isinstance(result, WachatError):
            failures += 1
            print(f"  {name}: failed: {type(result).__name__}: {result}")
        elif isinstance(result, BaseException):
            raise result  # a bug, not an API failure: let it show
        else:
            size = result.stat().st_size
            print(f"  {name}: saved {result} ({size} bytes)")
    return failures


async def show_handled_404(client: WachatClient) -> None:
    """Every failure is a typed exception; a 404 is InstanceNotFoundError."""
    try:
        await client.get_qr_image(MISSING)
    except InstanceNotFoundError as exc:
        print(f"  handled: {type(exc).__name__} (status {exc.status}): {exc}")


async def run(names: Sequence[str], out_dir: Path) -> int:
    """Fetch *names* (or the fake server's instances when no key is set)."""
    if os.environ.get("WACHAT_API_KEY"):
        if not names:
            print("WACHAT_API_KEY is set: name the instances to fetch.", file=sys.stderr)
            return 2
        async with WachatClient() as client:
            print(f"Fetching {len(names)} QR code(s) from {client.base_url}:")
            failures = await save_all(client, names, out_dir)
            print(f"A 404 for {MISSING!r}:")
            await show_handled_404(client)
        return 1 if failures else 0

    from wachat_async.testing import FakeWachatServer

    fleet = list(names) or FAKE_INSTANCES
    print("No WACHAT_API_KEY: using the embedded fake Wachat server (no network).")
    async with FakeWachatServer(api_key="quickstart-fake-key") as server:
        server.add_instances(fleet)
        async with WachatClient(api_key=server.api_key, base_url=server.base_url) as client:
            print(f"Fetching {len(fleet)} QR codes from {client.base_url}:")
            failures = await save_all(client, fleet, out_dir)
            print(f"A 404 for {MISSING!r}:")
            await show_handled_404(client)
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the quickstart; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help="instances to fetch")
    parser.add_argument("--out-dir", default="qr-codes", help="where to save (default qr-codes)")
    args = parser.parse_args(argv)
    return asyncio.run(run(args.names, Path(args.out_dir)))


if __name__ == "__main__":
    sys.exit(main())
