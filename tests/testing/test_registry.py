"""The fake server's state (``wachat_async.testing._registry``): keys, instances, rotation,
scripts and the request log, without a server."""

from __future__ import annotations

import threading

import pytest

from wachat_async.testing import Conditions, FakeInstance, Fault, RecordedRequest
from wachat_async.testing._registry import Registry, friendly_name

from ._support import KEY, NAME, OTHER_KEY, Clock


def registry(
    clock: Clock | None = None,
    *,
    qr_rotation: float | None = 20.0,
    auto_create: bool = False,
    max_logged_requests: int | None = None,
) -> Registry:
    """A registry accepting KEY, on *clock* (a fresh one by default)."""
    return Registry(
        KEY,
        clock=clock or Clock(),
        qr_rotation=qr_rotation,
        auto_create=auto_create,
        max_logged_requests=max_logged_requests,
    )


def instance(name: str, **kwargs: str) -> FakeInstance:
    """A FakeInstance snapshot for *name*."""
    return FakeInstance(name=name, friendly_name=friendly_name(name), **kwargs)


def a_record(name: str | None = NAME, path: str = "/api/v1/instance/qr/image") -> RecordedRequest:
    """A RecordedRequest for (*name*, *path*)."""
    return RecordedRequest(
        method="GET",
        path=path,
        instance_name=name,
        query={},
        auth_via="bearer",
        key_valid=True,
        status=200,
        headers={},
        user_agent=None,
        time=0.0,
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (NAME, "jakarta_store"),
        ("t12_abcdefgh_a_b", "a_b"),
        ("t1_short_store", "t1_short_store"),
        ("t1_ABCDEFGH_store", "t1_ABCDEFGH_store"),
        ("plain", "plain"),
    ],
    ids=["prefixed", "two-digit-tenant", "short-tag", "uppercase-tag", "unprefixed"],
)
def test_friendly_name_strips_the_api_prefix(name: str, expected: str) -> None:
    """t<digits>_<8 lowercase alphanumerics>_ is the API's prefix; other names stay whole."""
    assert friendly_name(name) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [(KEY, False), (OTHER_KEY, True), ("unknown", None), (None, None)],
    ids=["accepted", "restricted", "unknown", "no-key"],
)
def test_restriction_of_keys(key: str | None, expected: bool | None) -> None:
    """None for keys not accepted, else whether the key's plan is restricted."""
    state = registry()
    state.add_key(OTHER_KEY, restricted=True)
    assert state.restriction(key) is expected


def test_owner_of_new_instances_becomes_an_accepted_key() -> None:
    """Adding instances for an unknown key accepts that key, unrestricted."""
    state = registry()
    state.add_instances([instance("a")], owner=OTHER_KEY)
    assert state.restriction(OTHER_KEY) is False


def test_find_only_for_the_owner() -> None:
    """An instance is found with its owner's key, never with another key."""
    state = registry()
    state.add_instances([instance("mine")], owner=KEY)
    assert (state.find("mine", KEY), state.find("mine", OTHER_KEY), state.find("none", KEY)) == (
        (instance("mine"), 0),
        None,
        None,
    )


def test_auto_create_makes_unknown_names_for_the_asking_key() -> None:
    """With auto_create an unknown name is created, owned by the key that asked first."""
    state = registry(auto_create=True)
    first, other = state.find(NAME, KEY), state.find(NAME, OTHER_KEY)
    assert (first, other, dict(state.instances())) == (
        (instance(NAME), 0),
        None,
        {NAME: instance(NAME)},
    )


@pytest.mark.parametrize(
    "names",
    [["dup", "dup"], ["existing"], ["new", "existing"]],
    ids=["repeat-in-batch", "already-exists", "one-of-many-exists"],
)
def test_add_instances_is_all_or_nothing(names: list[str]) -> None:
    """A batch with a name that exists or repeats adds nothing."""
    state = registry()
    state.add_instances([instance("existing")], owner=KEY)
    with pytest.raises(ValueError, match="already exists"):
        state.add_instances([instance(n) for n in names], owner=OTHER_KEY)
    assert (list(state.instances()), state.restriction(OTHER_KEY)) == (["existing"], None)


@pytest.mark.parametrize(
    "operation",
    [
        lambda s: s.remove_instance("ghost"),
        lambda s: s.set_state("ghost", "open"),
        lambda s: s.rotate_qr("ghost"),
        lambda s: s.generation("ghost"),
    ],
    ids=["remove_instance", "set_state", "rotate_qr", "generation"],
)
def test_unknown_instances_are_key_errors(operation: object) -> None:
    """Operations on a name that does not exist raise KeyError naming it."""
    with pytest.raises(KeyError, match="ghost"):
        operation(registry())  # type: ignore[operator]


def test_set_state_returns_the_new_snapshot_and_keeps_the_old() -> None:
    """Snapshots are values: the one taken before set_state is unchanged."""
    state = registry()
    state.add_instances([instance("a")], owner=KEY)
    before = state.instances()["a"]
    after = state.set_state("a", "open")
    assert (before.state, after.state, state.instances()["a"]) == ("connecting", "open", after)


@pytest.mark.parametrize(
    ("elapsed", "forced", "expected"),
    [(0.0, 0, 0), (19.999, 0, 0), (20.0, 0, 1), (65.0, 0, 3), (-50.0, 0, 0), (20.0, 2, 3)],
    ids=["start", "just-before", "one-period", "three-periods", "clock-backwards", "forced"],
)
def test_generation_follows_the_clock_and_forced_rotations(
    elapsed: float, forced: int, expected: int
) -> None:
    """generation = whole periods since start (never negative) + rotate_qr calls."""
    clock = Clock()
    state = registry(clock)
    state.add_instances([instance("a")], owner=KEY)
    clock.now += elapsed
    for _ in range(forced):
        state.rotate_qr("a")
    assert (state.generation("a"), state.find("a", KEY)) == (expected, (instance("a"), expected))


def test_no_rotation_period_means_only_forced_rotations() -> None:
    """qr_rotation=None: the clock never changes the generation."""
    clock = Clock()
    state = registry(clock, qr_rotation=None)
    state.add_instances([instance("a")], owner=KEY)
    clock.now += 1e9
    state.rotate_qr("a")
    assert state.generation("a") == 1


def test_script_is_taken_oldest_first_then_empty() -> None:
    """next_fault pops in order; an exhausted script is gone."""
    state = registry()
    state.set_script("a", [Fault(status=502), Fault(drop=True)])
    taken = [state.next_fault("a"), state.next_fault("a"), state.next_fault("a")]
    assert (taken, state.pending_script("a")) == ([Fault(status=502), Fault(drop=True), None], ())


def test_script_replaces_and_empty_clears() -> None:
    """set_script replaces the queue; an empty one clears it."""
    state = registry()
    state.set_script("a", [Fault(status=502)])
    state.set_script("a", [Fault(status=504)])
    replaced = state.pending_script("a")
    state.set_script("a", [])
    assert (replaced, state.pending_script("a"), state.next_fault("a")) == (
        (Fault(status=504),),
        (),
        None,
    )


def test_counts_by_name_and_path() -> None:
    """count filters by name and by any of several paths; None means any."""
    state = registry()
    for name, path in [("a", "/q"), ("a", "/q"), ("a", "/s"), ("b", "/q"), (None, "/x")]:
        state.record(name, path, None)
    assert (
        state.count(None, None),
        state.count("a", None),
        state.count("a", ("/q",)),
        state.count(None, ("/q", "/s")),
        state.count("zzz", None),
    ) == (5, 3, 2, 4, 0)


def test_bounded_log_keeps_the_newest_and_exact_counts() -> None:
    """max_logged_requests keeps the newest records; counts stay exact."""
    state = registry(max_logged_requests=2)
    for name in ("a", "b", "c"):
        state.record(name, "/q", a_record(name))
    assert ([r.instance_name for r in state.requests()], state.count(None, None)) == (
        ["b", "c"],
        3,
    )


@pytest.mark.parametrize(("limit", "keeps"), [(0, False), (1, True), (None, True)])
def test_keeps_records_unless_the_limit_is_zero(limit: int | None, keeps: bool) -> None:
    """With max_logged_requests=0 the log only counts (handlers skip building records)."""
    assert registry(max_logged_requests=limit).keeps_records is keeps


def test_reset_log_forgets_records_and_counts_only() -> None:
    """reset_log empties the log and counts; instances and scripts stay."""
    state = registry()
    state.add_instances([instance("a")], owner=KEY)
    state.set_script("a", [Fault(status=502)])
    state.record("a", "/q", a_record("a"))
    state.reset_log()
    assert (state.requests(), state.count(None, None), len(state), state.pending_script("a")) == (
        [],
        0,
        1,
        (Fault(status=502),),
    )


def test_operations_from_many_threads_lose_nothing() -> None:
    """Concurrent adds, rotations and records from threads are all applied."""
    state = registry()
    state.add_instances([instance("shared")], owner=KEY)

    def work(i: int) -> None:
        state.add_instances([instance(f"n{i}")], owner=KEY)
        for _ in range(200):
            state.rotate_qr("shared")
            state.record("shared", "/q", None)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(state), state.generation("shared"), state.count("shared", None)) == (
        9,
        1600,
        1600,
    )


# -- conditions -------------------------------------------------------------------------------


def test_a_rate_limit_answers_429_above_its_rate_and_refills_with_time() -> None:
    """A full bucket of one second's requests, then 429 with Retry-After; time refills it."""
    clock = Clock()
    state = registry(clock)
    state.set_conditions(Conditions(rate_limit=3, retry_after=2))
    faults = [state.next_fault(NAME) for _ in range(4)]
    assert faults == [None, None, None, Fault(status=429, retry_after="2")]
    clock.now += 1 / 3  # one request's worth
    assert [state.next_fault(NAME) for _ in range(2)] == [None, Fault(status=429, retry_after="2")]


def test_an_outage_answers_502_for_its_seconds_from_when_it_is_set() -> None:
    """502 until the outage's seconds have passed on the server's clock, then normal."""
    clock = Clock()
    state = registry(clock)
    state.set_conditions(Conditions(outage=5))
    assert state.next_fault(NAME) == Fault(status=502)
    clock.now += 4.999
    assert state.next_fault(NAME) == Fault(status=502)
    clock.now += 0.001
    assert state.next_fault(NAME) is None


def test_shares_of_502s_and_hangs_are_drawn_from_the_seed() -> None:
    """About the shares asked for, the same sequence for the same seed; no share, no fault."""
    state = registry()
    conditions = Conditions(share_502=0.25, share_hang=0.1, seed=7)
    state.set_conditions(conditions)
    drawn = [state.next_fault(NAME) for _ in range(4000)]
    state.set_conditions(conditions)
    assert [state.next_fault(NAME) for _ in range(4000)] == drawn
    assert 900 <= drawn.count(Fault(status=502)) <= 1100
    assert 300 <= drawn.count(Fault(hang=True)) <= 500
    assert drawn.count(None) == 4000 - drawn.count(Fault(status=502)) - drawn.count(
        Fault(hang=True)
    )
    state.set_conditions(Conditions())
    assert {state.next_fault(NAME) for _ in range(100)} == {None}


def test_a_script_comes_before_the_conditions_and_is_not_rate_limited() -> None:
    """Scripted faults are answered first and take no token of the rate limit."""
    state = registry()
    state.set_conditions(Conditions(rate_limit=1))
    state.set_script(NAME, [Fault(status=504)] * 3)
    assert [state.next_fault(NAME) for _ in range(5)] == [
        Fault(status=504),
        Fault(status=504),
        Fault(status=504),
        None,  # the bucket's one token
        Fault(status=429, retry_after="1"),
    ]


def test_a_rate_under_one_per_second_still_lets_one_request_through() -> None:
    """The bucket holds at least one request: one every 1000 s is one now, then 429s."""
    state = registry()
    state.set_conditions(Conditions(rate_limit=0.001))
    assert [state.next_fault(NAME) for _ in range(2)] == [None, Fault(status=429, retry_after="1")]
