"""The package face (``wachat_async.testing``): exactly the public names, loaded lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

from wachat_async.testing import RecordedRequest


def test_public_surface() -> None:
    """wachat_async.testing exports exactly the five public names."""
    import wachat_async.testing as testing

    assert sorted(testing.__all__) == [
        "Conditions",
        "FakeInstance",
        "FakeWachatServer",
        "Fault",
        "RecordedRequest",
    ]
    assert set(testing.__all__) <= set(dir(testing))
    assert testing.RecordedRequest is RecordedRequest


def test_unknown_attribute_is_an_attribute_error() -> None:
    """The lazy module raises AttributeError for names it does not have."""
    import wachat_async.testing as testing

    with pytest.raises(AttributeError, match="nope"):
        _ = testing.nope


def test_fault_alone_does_not_load_the_server() -> None:
    """``from wachat_async.testing import Fault`` loads only the fault values."""
    code = (
        "import sys\n"
        "from wachat_async.testing import Fault\n"
        "print(Fault.__module__, 'wachat_async.testing._server' in sys.modules,"
        " 'aiohttp.web' in sys.modules)"
    )
    out = subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["wachat_async.testing._faults", "False", "False"]


def test_public_names_are_one_object_wherever_imported() -> None:
    """The package, the server module and each defining module hand out the same classes."""
    from wachat_async import testing
    from wachat_async.testing import _faults, _registry, _server

    assert (testing.Fault, testing.FakeInstance, testing.RecordedRequest) == (
        _faults.Fault,
        _registry.FakeInstance,
        _registry.RecordedRequest,
    )
    assert all(getattr(_server, name) is getattr(testing, name) for name in testing.__all__)
