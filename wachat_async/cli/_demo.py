"""``wachat-qr demo``: the CLI's tour, against an in-process fake server (no account, no network).

A fleet of fake stores, a few of which answer 502/504 at first (the retries absorb them) and
three of which fail on purpose (409, 404, 502 until the retries give up), is polled like
``poll --out-dir``: progress, summary tables that say which failures were expected, saved
PNGs and one QR drawn in the terminal. Exit 1 when an instance failed that was meant to
succeed.

Never reaches the network: the server is :class:`wachat_async.testing.FakeWachatServer` on
loopback, imported only when the demo runs (it needs segno).
"""

from __future__ import annotations

import argparse
import random
import secrets
import string
from pathlib import Path

import attrs

from wachat_async import RetryPolicy, WachatClient

from ._exit import EXIT_FAILED, EXIT_OK
from ._extras import need
from ._fleet import Fleet, poll_fleet, summary
from ._output import Out, plural, print_qr

__all__ = ["cmd_demo"]


class DemoFleet:
    """The demo's instance names: mostly healthy stores, plus a few that fail on purpose."""

    def __init__(self, count: int) -> None:
        rng = random.Random(2026)  # noqa: S311 - demo data, not security
        places = ["jakarta", "bandung", "surabaya", "medan", "bali", "makassar", "semarang"]

        def prefixed(friendly: str) -> str:
            # The API's shape: "t1_" + 8 lowercase alphanumerics + "_" + the friendly name.
            tag = "".join(rng.choices(string.ascii_lowercase + string.digits, k=8))
            return f"t1_{tag}_{friendly}"

        self.stores = [
            prefixed(f"{places[i % len(places)]}_store_{i:02d}") for i in range(max(0, count - 2))
        ]
        self.business = prefixed("head_office_cloud_api")  # not Baileys: 409
        self.typo = prefixed("jakarta_stroe")  # never created: 404
        self.names = list(self.stores)
        self.names.insert(len(self.names) // 2, self.business)
        self.names.append(self.typo)
        #: Fails with 502 on every attempt, so the retries give up.
        self.give_up = self.stores[min(7, len(self.stores) - 1)] if self.stores else ""
        healthy = [n for n in self.stores if n != self.give_up]
        #: Answer 502/504 once or twice; the retries absorb it.
        self.absorbed = healthy[3 :: max(1, len(healthy) // 5)][:4]
        self.failing = {
            self.business: "409, a WhatsApp Business (Cloud API) instance has no QR code",
            self.typo: "404, a typo: no such instance for this key",
            self.give_up: "502 on every attempt, so the retries give up",
        }


async def cmd_demo(args: argparse.Namespace, out: Out) -> int:
    need("rich", "PIL", "segno")
    from wachat_async.testing import FakeWachatServer, Fault

    fleet_names = DemoFleet(args.instances)
    names, failing = fleet_names.names, fleet_names.failing
    key = "demo-" + secrets.token_hex(12)
    out.add_secrets([key])
    policy = RetryPolicy(initial_wait=0.05, max_wait=0.2, deadline=10.0, zero_wait=args.no_wait)
    retries: int | None = getattr(args, "retries", None)
    if retries is not None:  # --retries 0: the transient failures are no longer absorbed
        policy = attrs.evolve(policy, max_attempts=retries + 1)
    server = FakeWachatServer(api_key=key, latency=0.0 if args.no_wait else 0.04, qr_rotation=None)
    async with server:
        server.add_instances(fleet_names.stores)
        server.add_instance(fleet_names.business, integration="WHATSAPP-BUSINESS")
        scripts: list[list[int | Fault]] = [
            [502],
            [504],
            [502, 502],
            [Fault(status=502, retry_after="0")],
        ]
        absorbed = fleet_names.absorbed
        for name, script in zip(absorbed, scripts, strict=False):
            server.script(name, script)
        server.script(fleet_names.give_up, [502] * policy.max_attempts)
        # One script answers 502 twice: it takes two retries to absorb.
        absorbing = "the retries absorb them" if policy.max_attempts > 2 else "too few --retries"
        out.info(
            f"Demo: a fake Wachat server on {server.base_url} (in this process, no network) "
            f"with {len(names)} instances; {len(absorbed)} answer 502/504 at first ({absorbing}) "
            f"and {len(failing)} fail on purpose."
        )
        async with WachatClient(
            api_key=key,
            base_url=server.base_url,
            retry=policy,
            timeout=getattr(args, "timeout", None) or 10.0,
        ) as client:
            fleet = Fleet(names, Path(args.out_dir), expected=failing)
            await poll_fleet(client, fleet, out, concurrency=args.concurrency)
            summary(fleet, out)
            if fleet.first is not None and not out.quiet:
                first, path = fleet.first
                out.info(
                    f"\nThe QR of {first.instance_name} (saved as {path or '-'}); it encodes "
                    f"{server.qr_payload(first.instance_name)!r}:"
                )
                print_qr(first.image, args)
                out.info(
                    "Next: `wachat-qr fake-server` serves this fake API for your own code; "
                    "with WACHAT_API_KEY set, `wachat-qr show NAME` shows a real QR."
                )
    if fleet.unexpected:
        verb = "was" if fleet.unexpected == 1 else "were"
        out.error(f"{plural(fleet.unexpected, 'instance')} failed that {verb} meant to succeed")
        return EXIT_FAILED
    return EXIT_OK
