"""The fake server's TLS: a throwaway certificate authority and the contexts on both ends.

:class:`ThrowawayCA` makes a fresh CA (trustme, in the ``testing`` extra) that lives only in
memory, issues the fake server's certificate for the names a client may dial (``127.0.0.1``,
``localhost`` and ``::1`` by default), and hands out the two ``ssl.SSLContext`` objects a test
needs: the server's (its certificate and key) and a client's that trusts *only* this CA (no
system roots, so a test cannot pass by trusting something else). Nothing touches the disk unless
asked (:meth:`ThrowawayCA.write_ca_file`), and nothing here ever imports aiohttp or the client.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import trustme

__all__ = ["DEFAULT_TLS_HOSTNAMES", "TLS_INSTALL_HINT", "ThrowawayCA", "require_trustme"]

TLS_INSTALL_HINT = (
    "trustme is required for FakeWachatServer(tls=True): pip install 'wachat-async[testing]'"
)

#: The names a client on this machine may dial: the certificate is valid for each of them.
DEFAULT_TLS_HOSTNAMES: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")


def require_trustme() -> None:
    """Raise :class:`ImportError` with the install command unless trustme can be imported."""
    try:
        import trustme  # noqa: F401
    except ImportError as exc:
        raise ImportError(TLS_INSTALL_HINT, name="trustme") from exc


def check_hostnames(hostnames: Iterable[str]) -> tuple[str, ...]:
    """The certificate's names, checked: DNS names or IP addresses, at least one."""
    if isinstance(hostnames, (str, bytes)):
        raise TypeError("tls_hostnames must be a collection of str, not a single str")
    names = tuple(hostnames)
    if not names:
        raise ValueError("tls_hostnames must name at least one host")
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"tls_hostnames must hold str, not {type(name).__name__}")
        try:
            ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            if not name or not name.isascii() or any(c in name for c in " /\\@:\x00\r\n"):
                raise ValueError(f"not a host name for a certificate: {name!r}") from None
    return tuple(n.strip("[]") for n in names)


class ThrowawayCA:
    """A certificate authority made for one server, and the certificate it issued to it."""

    def __init__(self, hostnames: Iterable[str] = DEFAULT_TLS_HOSTNAMES) -> None:
        require_trustme()
        import trustme

        self.hostnames = check_hostnames(hostnames)
        self._ca: trustme.CA = trustme.CA(organization_name="wachat-async FakeWachatServer")
        self._cert = self._ca.issue_cert(*self.hostnames)

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate, PEM-encoded (what a ``--ca-file`` or ``SSL_CERT_FILE`` holds)."""
        return self._ca.cert_pem.bytes()

    def server_context(self) -> ssl.SSLContext:
        """A server-side context presenting the issued certificate (TLS 1.2 or later)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._cert.configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client-side context that trusts this CA and nothing else, host names checked."""
        return ssl.create_default_context(cadata=self.ca_pem.decode("ascii"))

    def write_ca_file(self, path: str | os.PathLike[str]) -> Path:
        """Write :attr:`ca_pem` to *path* (created or replaced) and return it as a Path."""
        target = Path(path)
        target.write_bytes(self.ca_pem)
        return target
