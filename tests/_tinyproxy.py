"""A real HTTP proxy for the tests: Debian's ``tinyproxy``, started on a free loopback port.

:class:`Tinyproxy` writes a config of its own (``Listen``/``Allow`` 127.0.0.1 only, ``BasicAuth``
with :data:`PROXY_USER`/:data:`PROXY_PASSWORD`, ``ConnectPort`` for the ports the test will
``CONNECT`` to, no ``Via`` header, an ``Info`` log in the test's temporary folder), runs
``tinyproxy -d`` in the foreground and kills it in :meth:`Tinyproxy.stop`. Its log shows every
request that went through it (:meth:`Tinyproxy.requests`), which is how the tests prove that a
client used the proxy and that ``https://`` went through ``CONNECT``.

Outside CI a missing tinyproxy skips the tests; with ``CI=true`` it fails them (``.ci/run``
installs Debian's ``tinyproxy`` package).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

__all__ = [
    "PROXY_PASSWORD",
    "PROXY_USER",
    "Tinyproxy",
    "find_tinyproxy",
    "require_tinyproxy",
    "running_tinyproxy",
]

PROXY_USER = "wachat-proxy-user"
#: Distinctive, so a leak anywhere is easy to spot.
PROXY_PASSWORD = "pr0xy-PASS-7f2e9c"

#: How long tinyproxy may take to listen, and to stop (it normally needs milliseconds).
_START_TIMEOUT = 10.0
_REQUEST = re.compile(r"Request \(file descriptor \d+\): (?P<line>\S+ \S+ HTTP/\d\.\d)")


def find_tinyproxy() -> str | None:
    """$TINYPROXY, else tinyproxy on PATH, else Debian's /usr/bin/tinyproxy (None: missing)."""
    for candidate in (os.environ.get("TINYPROXY"), shutil.which("tinyproxy")):
        if candidate:
            return candidate
    return "/usr/bin/tinyproxy" if os.access("/usr/bin/tinyproxy", os.X_OK) else None


def require_tinyproxy() -> str:
    """The tinyproxy to run; skip without one, except in CI (CI=true), where that fails."""
    path = find_tinyproxy()
    if path is None:
        message = "no tinyproxy binary found (install Debian's 'tinyproxy' package)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true, so this is a failure, not a skip")
        pytest.skip(message)
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Tinyproxy:
    """One tinyproxy process with its config and log in *folder*."""

    def __init__(
        self,
        folder: Path,
        *,
        connect_ports: Iterable[int] = (),
        basic_auth: bool = True,
        binary: str | None = None,
    ) -> None:
        self.folder = folder
        self.binary = binary or require_tinyproxy()
        self.connect_ports = tuple(connect_ports)
        self.basic_auth = basic_auth
        self.log_file = folder / "tinyproxy.log"
        self.config_file = folder / "tinyproxy.conf"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no credentials)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url_with_credentials(self) -> str:
        """``http://USER:PASSWORD@127.0.0.1:PORT``, the password percent-encoded."""
        from urllib.parse import quote

        return f"http://{quote(PROXY_USER, safe='')}:{quote(PROXY_PASSWORD, safe='')}@" + (
            f"127.0.0.1:{self.port}"
        )

    def _config(self) -> str:
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 30",
            "Allow 127.0.0.1",
            f'LogFile "{self.log_file}"',
            "LogLevel Info",
            "MaxClients 64",
            "DisableViaHeader Yes",
        ]
        if self.basic_auth:
            lines.append(f"BasicAuth {PROXY_USER} {PROXY_PASSWORD}")
        # tinyproxy's stock config allows CONNECT to 443 and 563 only; ours names each port.
        lines += [f"ConnectPort {port}" for port in self.connect_ports]
        if os.geteuid() == 0:
            lines += ["User root", "Group root"]  # else it drops to nobody: the log is ours
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        """Start tinyproxy on a free port and return once it accepts connections."""
        for _ in range(3):  # the free port may be taken between probing and binding
            self.port = _free_port()
            self.config_file.write_text(self._config())
            self.log_file.write_text("")
            output = (self.folder / "tinyproxy.out").open("wb")
            with output:
                self._process = subprocess.Popen(  # noqa: S603 - our own binary and config
                    [self.binary, "-d", "-c", str(self.config_file)],
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_listening():
                return
            self.stop()
        output_text = (self.folder / "tinyproxy.out").read_text(errors="replace")
        raise RuntimeError(f"tinyproxy did not start:\n{output_text}\n{self.log_text()}")

    def _wait_listening(self) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0),
            ):
                return True
            time.sleep(0.01)  # a process starting, not a test waiting for an effect
        return False

    def stop(self) -> None:
        """Kill tinyproxy. Idempotent. Not SIGTERM: it has nothing to save, and its graceful exit
        sometimes waited out the whole 5 s grace (a teardown of the baseline run)."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait(timeout=5.0)

    def log_text(self) -> str:
        """Everything tinyproxy logged so far."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def requests(self) -> list[str]:
        """The request lines tinyproxy received, oldest first (``GET http://... HTTP/1.1``,
        ``CONNECT 127.0.0.1:PORT HTTP/1.1``)."""
        return [m.group("line") for m in _REQUEST.finditer(self.log_text())]


@contextlib.contextmanager
def running_tinyproxy(folder: Path, **kwargs: object) -> Iterator[Tinyproxy]:
    """A started :class:`Tinyproxy` for the duration of a ``with`` block."""
    proxy = Tinyproxy(folder, **kwargs)  # type: ignore[arg-type]
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
