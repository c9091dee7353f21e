"""A fake Wachat server for tests, demos and notebooks: real HTTP on loopback, no mocks.

:class:`FakeWachatServer` is an :mod:`aiohttp.web` application that implements
``GET /api/v1/instance/qr/image`` and ``GET /api/v1/instance/state`` the way Wachat's reference
describes them: ``Authorization: Bearer`` or ``?apiKey=`` auth, every documented status
(400, 401, 403, 404, 409, 502, 504) with a JSON error body, real scannable QR PNGs that rotate,
Baileys and non-Baileys instances, subscription-restricted keys, scripted faults per instance
(statuses, ``Retry-After``, delays, truncated bodies, dropped or hanging connections),
:class:`Conditions` for every instance at once (a rate limit answered 429, an outage, a share
of 502s or hangs) and a log of every request it received (API keys redacted). It needs the
``testing`` extra for QR rendering: ``pip install 'wachat-async[testing]'``.

In an async test::

    from wachat_async.testing import FakeWachatServer, Fault

    async def test_retries_a_502() -> None:
        async with FakeWachatServer(api_key="test-key") as server:
            server.add_instance("t1_abc_store")
            server.script("t1_abc_store", [502, Fault(status=504, retry_after="0")])
            ...  # point your client at server.base_url with api_key=server.api_key
            assert server.request_count("t1_abc_store") == 3

With pytest, the ``wachat_server`` fixture (installed with the package) gives a started server
that works in sync and async tests alike, because it runs on its own thread::

    def test_shows_qr(wachat_server):
        wachat_server.add_instance("t1_abc_store")
        ...  # GET {wachat_server.base_url}/instance/qr/image?instanceName=t1_abc_store
        # the PNG decodes to wachat_server.qr_payload("t1_abc_store")

From the shell: ``python -m wachat_async.testing --port 8080 --instance a --instance b``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Conditions", "FakeInstance", "FakeWachatServer", "Fault", "RecordedRequest"]

if TYPE_CHECKING:
    from ._faults import Conditions, Fault
    from ._registry import FakeInstance, RecordedRequest
    from ._server import FakeWachatServer


def __getattr__(name: str) -> Any:
    # Lazy: the pytest plugin imports this package in every pytest run of every project that
    # installs wachat-async; aiohttp.web is only paid for when a fake server is actually used
    # (each name comes from the module that defines it: Fault alone does not load aiohttp).
    if name in ("Conditions", "Fault"):
        from . import _faults as home
    elif name in ("FakeInstance", "RecordedRequest"):
        from . import _registry as home  # type: ignore[no-redef]
    elif name == "FakeWachatServer":
        from . import _server as home  # type: ignore[no-redef]
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(home, name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
