"""What the fake server knows and remembers: API keys, instances, QR scripts, the rotation of
QR codes and the log of requests, all behind one lock.

The server answers on one event loop, but tests configure it from wherever they are (another
loop, a synchronous test, a notebook cell). Every method of :class:`Registry` is therefore one
step under one :class:`threading.Lock`, held for dictionary work only (there is no ``await`` in
this module). The registry stores and looks up; it does not validate a user's arguments (that
is :mod:`._server`, the public face) nor decide what to answer (:mod:`._handlers`). It never
imports aiohttp or the client.
"""

from __future__ import annotations

import math
import random
import re
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Literal

import attrs

from ._faults import Conditions, Fault

__all__ = ["BAILEYS", "FakeInstance", "RecordedRequest", "Registry", "friendly_name"]

BAILEYS = "WHATSAPP-BAILEYS"

_BAD_GATEWAY = Fault(status=502)
_HANG = Fault(hang=True)

# "t1_" + 8 lowercase alphanumerics + "_" + friendly name (related-endpoints.md).
_PREFIXED_NAME = re.compile(r"t\d+_[a-z0-9]{8}_(.+)", re.DOTALL)


def friendly_name(name: str) -> str:
    """What the state route reports as ``instanceName``: ``jakarta_store`` for
    ``t1_mq9r2jov_jakarta_store``, otherwise *name* itself."""
    match = _PREFIXED_NAME.fullmatch(name)
    return match.group(1) if match else name


@attrs.frozen(kw_only=True)
class FakeInstance:
    """A snapshot of one fake WhatsApp instance (its owner key is deliberately not exposed).

    ``name`` is the prefixed API name used in requests; ``friendly_name`` is what the state
    route reports as ``instance.instanceName`` (``jakarta_store`` for
    ``t1_mq9r2jov_jakarta_store``, otherwise the name itself).
    """

    name: str
    integration: str = BAILEYS
    state: str = "connecting"
    friendly_name: str


@attrs.frozen(kw_only=True)
class RecordedRequest:
    """One request the fake server received, safe to print: it holds no API key.

    ``query`` excludes ``apiKey``; ``auth_via`` says how a key was presented (``"bearer"``,
    ``"query"`` or ``None``) and ``key_valid`` whether it was accepted. ``headers`` is a
    case-insensitive copy whose ``Authorization`` value is replaced by ``"Bearer <redacted>"``.
    ``status`` is the status sent, or 0 when no response was sent (``drop``, ``hang``).
    ``time`` is read from the server's clock when the response was decided.
    """

    method: str
    path: str
    instance_name: str | None
    query: Mapping[str, str] = attrs.field(eq=False, hash=False)
    auth_via: Literal["bearer", "query"] | None
    key_valid: bool
    status: int
    headers: Mapping[str, str] = attrs.field(eq=False, hash=False)
    user_agent: str | None
    time: float


@attrs.define
class _Instance:
    """Mutable state of one instance (only touched under the registry's lock)."""

    info: FakeInstance
    owner: str
    forced_rotations: int = 0


class Registry:
    """The fake server's state. Every method is atomic; none blocks for longer than a dict
    operation (or a copy, for the snapshots)."""

    def __init__(
        self,
        api_key: str,
        *,
        clock: Callable[[], float],
        qr_rotation: float | None,
        auto_create: bool,
        max_logged_requests: int | None,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._epoch = clock()
        self._qr_rotation = qr_rotation
        self._auto_create = auto_create
        self._keys: dict[str, bool] = {api_key: False}  # key -> restricted
        self._instances: dict[str, _Instance] = {}
        self._scripts: dict[str, deque[Fault]] = {}
        self._log: deque[RecordedRequest] = deque(maxlen=max_logged_requests)
        self._counts: Counter[tuple[str | None, str]] = Counter()
        self._conditions = Conditions()
        self._outage_ends = -math.inf
        self._tokens = 0.0
        self._filled = 0.0
        self._random = random.Random()  # noqa: S311 - simulated faults, not security

    # -- keys ---------------------------------------------------------------------------------

    def add_key(self, key: str, *, restricted: bool) -> None:
        """Accept *key* (again), restricted or not."""
        with self._lock:
            self._keys[key] = restricted

    def restriction(self, key: str | None) -> bool | None:
        """``None`` if *key* is not accepted, else whether it is subscription-restricted."""
        if key is None:
            return None
        with self._lock:
            return self._keys.get(key)

    # -- instances ----------------------------------------------------------------------------

    def add_instances(self, infos: Iterable[FakeInstance], *, owner: str) -> None:
        """Add every instance in *infos*, owned by *owner* (an accepted key from then on).

        All or nothing: :class:`ValueError` if a name exists already or repeats.
        """
        with self._lock:
            batch: dict[str, _Instance] = {}
            for info in infos:
                if info.name in self._instances or info.name in batch:
                    raise ValueError(f"instance already exists: {info.name!r}")
                batch[info.name] = _Instance(info=info, owner=owner)
            self._keys.setdefault(owner, False)
            self._instances.update(batch)

    def remove_instance(self, name: str) -> None:
        """Delete *name* (:class:`KeyError` if there is no such instance)."""
        with self._lock:
            self._entry(name)
            del self._instances[name]

    def set_state(self, name: str, state: str) -> FakeInstance:
        """Change what the state route reports for *name*; return the new snapshot."""
        with self._lock:
            entry = self._entry(name)
            entry.info = attrs.evolve(entry.info, state=state)
            return entry.info

    def rotate_qr(self, name: str) -> None:
        """Move *name*'s QR on by one generation, now."""
        with self._lock:
            self._entry(name).forced_rotations += 1

    def generation(self, name: str) -> int:
        """How many times *name*'s QR has changed (rotation period plus forced rotations)."""
        with self._lock:
            forced = self._entry(name).forced_rotations
        return self._period_generation() + forced

    def find(self, name: str, key: str) -> tuple[FakeInstance, int] | None:
        """*name* and its QR generation if *key* owns it, else ``None``.

        With ``auto_create`` an unknown name is created first, as a Baileys instance of *key*.
        """
        with self._lock:
            entry = self._instances.get(name)
            if entry is None and self._auto_create:
                info = FakeInstance(name=name, friendly_name=friendly_name(name))
                entry = self._instances[name] = _Instance(info=info, owner=key)
            if entry is None or entry.owner != key:
                return None
            return entry.info, self._period_generation() + entry.forced_rotations

    def instances(self) -> Mapping[str, FakeInstance]:
        """A snapshot of all instances, by name."""
        with self._lock:
            return MappingProxyType({n: e.info for n, e in self._instances.items()})

    def __len__(self) -> int:
        return len(self._instances)

    # -- scripts ------------------------------------------------------------------------------

    def set_script(self, name: str, faults: Iterable[Fault]) -> None:
        """Queue *faults* for *name*'s next QR requests (replacing the queue; empty clears it)."""
        queue = deque(faults)
        with self._lock:
            if queue:
                self._scripts[name] = queue
            else:
                self._scripts.pop(name, None)

    def pending_script(self, name: str) -> tuple[Fault, ...]:
        """The faults queued for *name*, oldest first."""
        with self._lock:
            return tuple(self._scripts.get(name, ()))

    def set_conditions(self, conditions: Conditions) -> None:
        """Apply *conditions* from now on (an outage starts now; the bucket starts full)."""
        with self._lock:
            self._conditions = conditions
            now = self._clock()
            self._outage_ends = now + conditions.outage
            self._tokens = max(conditions.rate_limit or 0.0, 1)
            self._filled = now
            self._random = random.Random(conditions.seed)  # noqa: S311 - not security

    def next_fault(self, name: str) -> Fault | None:
        """Take the oldest fault queued for *name*, or else the one the conditions impose."""
        with self._lock:
            script = self._scripts.get(name)
            if not script:
                return self._imposed()
            fault = script.popleft()
            if not script:
                del self._scripts[name]
            return fault

    def _imposed(self) -> Fault | None:
        conditions = self._conditions
        now = self._clock()
        if now < self._outage_ends:
            return _BAD_GATEWAY
        rate = conditions.rate_limit
        if rate is not None:
            self._tokens = min(max(rate, 1), self._tokens + (now - self._filled) * rate)
            self._filled = now
            if self._tokens < 1:
                return Fault(status=429, retry_after=str(conditions.retry_after))
            self._tokens -= 1
        if conditions.share_502 or conditions.share_hang:
            roll = self._random.random()
            if roll < conditions.share_502:
                return _BAD_GATEWAY
            if roll < conditions.share_502 + conditions.share_hang:
                return _HANG
        return None

    # -- the request log ----------------------------------------------------------------------

    def now(self) -> float:
        """The server's clock."""
        return self._clock()

    @property
    def keeps_records(self) -> bool:
        """False when the log only counts (``max_logged_requests=0``): skip building records."""
        return self._log.maxlen != 0

    def record(self, name: str | None, path: str, request: RecordedRequest | None) -> None:
        """Count one request for (*name*, *path*) and keep its record, if one is given."""
        with self._lock:
            self._counts[name, path] += 1
            if request is not None:
                self._log.append(request)

    def requests(self) -> list[RecordedRequest]:
        """The records kept, oldest first."""
        with self._lock:
            return list(self._log)

    def count(self, name: str | None, paths: tuple[str, ...] | None) -> int:
        """Requests counted for *name* (``None``: any) on any of *paths* (``None``: any)."""
        with self._lock:
            return sum(
                count
                for (req_name, req_path), count in self._counts.items()
                if (name is None or req_name == name) and (paths is None or req_path in paths)
            )

    def reset_log(self) -> None:
        """Forget records and counts."""
        with self._lock:
            self._log.clear()
            self._counts.clear()

    # -- internals ----------------------------------------------------------------------------

    def _entry(self, name: str) -> _Instance:
        try:
            return self._instances[name]
        except KeyError:
            raise KeyError(f"no such fake instance: {name!r}") from None

    def _period_generation(self) -> int:
        if self._qr_rotation is None:
            return 0
        return max(0, math.floor((self._clock() - self._epoch) / self._qr_rotation))
