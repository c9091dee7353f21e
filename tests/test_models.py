"""QRImage: every way of building one validates its bytes (wachat_async/_models.py)."""

from __future__ import annotations

import struct
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from wachat_async import (
    InstanceState,
    InvalidImageError,
    InvalidResponseError,
    QRFailure,
    QRImage,
    QRSuccess,
)
from wachat_async._models import check_png_chunks, check_png_end, png_dimensions
from wachat_async.testing import Fault

NAME = "t1_models"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png(width: int = 3, height: int = 2, grey: int = 0x7F) -> bytes:
    """A minimal, valid PNG of the given size, every pixel *grey* (8-bit greyscale)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = b"".join(b"\x00" + bytes([grey]) * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


GOOD = png(3, 2)
BAD_DATA = [
    pytest.param(b"", "empty", id="empty"),
    pytest.param(b"GIF89a" + bytes(40), "bad signature", id="gif"),
    pytest.param(b"<html>not a png</html>" * 3, "bad signature", id="html"),
    pytest.param(GOOD[:20], "truncated", id="cut-in-header"),
    pytest.param(GOOD[:-12], "IEND", id="no-iend"),
    pytest.param(GOOD[:-1], "IEND", id="iend-cut"),
    pytest.param(GOOD + b"trailing junk", "IEND", id="junk-after-iend"),
    pytest.param(GOOD[:29] + b"\x00\x00\x00\x00" + GOOD[33:], "checksum", id="bad-ihdr-crc"),
    pytest.param(png(0, 2), "dimensions", id="zero-width"),
    pytest.param(png(3, 0), "dimensions", id="zero-height"),
    pytest.param(
        GOOD[:12] + b"IDAT" + GOOD[16:],
        "first chunk is not IHDR",
        id="idat-first",
    ),
]


@pytest.mark.parametrize(("data", "phrase"), BAD_DATA)
def test_the_constructor_refuses_bytes_that_are_not_a_complete_png(
    data: bytes, phrase: str
) -> None:
    """QRImage(...) validates like from_png: InvalidImageError naming the instance."""
    with pytest.raises(InvalidImageError, match=phrase) as info:
        QRImage(instance_name=NAME, data=data, width=3, height=2)
    assert info.value.instance_name == NAME


@pytest.mark.parametrize(("data", "phrase"), BAD_DATA)
def test_from_png_refuses_the_same_bytes(data: bytes, phrase: str) -> None:
    """from_png and the constructor agree on what is a PNG."""
    with pytest.raises(InvalidImageError, match=phrase):
        QRImage.from_png(data, instance_name=NAME)


@pytest.mark.parametrize(
    ("width", "height"),
    [
        pytest.param(4, 2, id="width-off"),
        pytest.param(3, 9, id="height-off"),
        pytest.param(2, 3, id="swapped"),
        pytest.param(-3, 2, id="negative"),
        pytest.param(5, 0, id="height-from-header-but-width-wrong"),
    ],
)
def test_a_width_or_height_that_disagrees_with_the_header_is_refused(
    width: int, height: int
) -> None:
    """Sizes that contradict the IHDR chunk are refused rather than believed."""
    with pytest.raises(InvalidImageError, match=r"disagree with the PNG header \(3x2\)"):
        QRImage(instance_name=NAME, data=GOOD, width=width, height=height)


@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param({}, id="omitted"),
        pytest.param({"width": 3, "height": 2}, id="matching"),
        pytest.param({"width": 0, "height": 0}, id="zero-means-from-header"),
        pytest.param({"width": 3}, id="only-width"),
    ],
)
def test_width_and_height_come_from_the_header(sizes: dict[str, int]) -> None:
    """Omitted (or 0) sizes are read from IHDR; matching ones are accepted."""
    qr = QRImage(instance_name=NAME, data=GOOD, **sizes)
    assert (qr.width, qr.height) == (3, 2)
    assert qr == QRImage.from_png(GOOD, instance_name=NAME, fetched_at=qr.fetched_at)


@pytest.mark.parametrize(
    "wrap", [bytearray, memoryview, lambda b: type("B", (bytes,), {})(b)], ids=["ba", "mv", "sub"]
)
def test_bytes_like_data_is_stored_as_plain_bytes(wrap: object) -> None:
    """bytearray, memoryview and bytes subclasses become immutable bytes (hashable)."""
    for build in (
        lambda d: QRImage(instance_name=NAME, data=d),
        lambda d: QRImage.from_png(d, instance_name=NAME),
    ):
        qr = build(wrap(GOOD))  # type: ignore[operator]
        assert type(qr.data) is bytes
        assert qr.data == GOOD
        assert hash(qr) == hash(attrs.evolve(qr))


@pytest.mark.parametrize("data", ["a string", None, 42], ids=["str", "None", "int"])
def test_data_that_is_not_bytes_is_a_type_error(data: object) -> None:
    """Text or other objects are a TypeError, not a confusing parse failure."""
    with pytest.raises(TypeError, match="must be bytes"):
        QRImage(instance_name=NAME, data=data)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "ok"),
    [
        pytest.param({"data": b"junk"}, False, id="junk-data"),
        pytest.param({"data": GOOD[:-12]}, False, id="truncated-data"),
        pytest.param({"width": 30}, False, id="wrong-width"),
        pytest.param({"data": png(3, 2, grey=0)}, True, id="other-png-same-size"),
        pytest.param({"data": png(7, 7), "width": 7, "height": 7}, True, id="new-png-and-size"),
        pytest.param({"instance_name": "other"}, True, id="rename"),
    ],
)
def test_attrs_evolve_validates_too(changes: dict[str, object], ok: bool) -> None:
    """attrs.evolve goes through the constructor, so it cannot smuggle in a bad image."""
    qr = QRImage.from_png(GOOD, instance_name=NAME)
    if ok:
        evolved = attrs.evolve(qr, **changes)
        assert (evolved.width, evolved.height) == png_dimensions(evolved.data)
    else:
        with pytest.raises(InvalidImageError):
            attrs.evolve(qr, **changes)


def test_the_trusted_path_builds_the_same_object_without_parsing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """_trusted (the client's already-validated path) and from_png on a good PNG build equal
    objects; neither calls the slow, message-building parsers."""
    at = datetime(2024, 1, 2, tzinfo=UTC)
    calls: list[str] = []
    import wachat_async._models as models

    real_dimensions, real_end = models.png_dimensions, models.check_png_end
    monkeypatch.setattr(
        models, "png_dimensions", lambda *a, **k: calls.append("dims") or real_dimensions(*a, **k)
    )
    monkeypatch.setattr(
        models, "check_png_end", lambda *a, **k: calls.append("end") or real_end(*a, **k)
    )
    trusted = QRImage._trusted(instance_name=NAME, data=GOOD, width=3, height=2, fetched_at=at)
    from_png = QRImage.from_png(GOOD, instance_name=NAME, fetched_at=at)
    assert calls == []
    assert trusted == from_png
    assert repr(trusted) == repr(from_png)
    assert trusted.content_type == "image/png"
    with pytest.raises(InvalidImageError, match="IEND"):
        QRImage.from_png(GOOD[:-1], instance_name=NAME)
    assert calls == ["dims", "end"]  # a refused image gets the precise message


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: QRImage.from_png(GOOD, instance_name=NAME), id="from_png"),
        pytest.param(
            lambda: QRImage._trusted(instance_name=NAME, data=GOOD, width=3, height=2),
            id="trusted",
        ),
        pytest.param(lambda: QRImage(instance_name=NAME, data=GOOD), id="constructor"),
    ],
)
def test_every_construction_path_gives_the_same_kind_of_object(build: object) -> None:
    """Each path builds a frozen QRImage with every field set, stamped in UTC now-ish."""
    before = datetime.now(UTC)
    qr = build()  # type: ignore[operator]
    assert type(qr) is QRImage
    assert (qr.instance_name, qr.data, qr.content_type, qr.width, qr.height) == (
        NAME,
        GOOD,
        "image/png",
        3,
        2,
    )
    assert qr.fetched_at.tzinfo is UTC
    assert before <= qr.fetched_at <= datetime.now(UTC)
    assert attrs.asdict(qr).keys() == {
        "instance_name",
        "data",
        "content_type",
        "width",
        "height",
        "fetched_at",
    }
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        qr.data = b""  # type: ignore[misc]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(bytearray(GOOD), id="bytearray"),
        pytest.param(memoryview(GOOD), id="memoryview"),
    ],
)
def test_from_png_keeps_an_immutable_copy_of_buffers(data: bytearray | memoryview) -> None:
    """A bytearray or memoryview is copied into bytes, so later edits cannot reach the image."""
    qr = QRImage.from_png(data, instance_name=NAME)  # type: ignore[arg-type]
    assert type(qr.data) is bytes
    assert qr.data == GOOD


def _mutated_png() -> st.SearchStrategy[bytes]:
    """Valid PNGs with a few bytes overwritten, cut off or appended: near misses of every rule."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(png(draw(st.integers(1, 40)), draw(st.integers(1, 40))))
        # Mostly in the bytes the rules read: the 33-byte header and the 12-byte IEND.
        where = st.one_of(
            st.integers(0, 32), st.integers(len(data) - 12, len(data) - 1), st.integers(0, 99)
        )
        for _ in range(draw(st.integers(0, 3))):
            data[min(draw(where), len(data) - 1)] = draw(st.integers(0, 255))
        data = data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data
        return bytes(data) + draw(st.binary(max_size=3))

    return build()


def header_only(width: int, height: int) -> bytes:
    """Signature, an IHDR of any declared size, an IDAT and IEND: what the validators read (the
    pixels are never decompressed, so a huge declared size needs no huge body)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b""))
        + _chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("width", "height", "ok"),
    [
        pytest.param(2**31 - 1, 1, True, id="widest"),
        pytest.param(1, 2**31 - 1, True, id="tallest"),
        pytest.param(2**31, 1, False, id="too-wide"),
        pytest.param(1, 2**31, False, id="too-tall"),
        pytest.param(2**32 - 1, 2**32 - 1, False, id="all-ones"),
        pytest.param(0, 0, False, id="empty"),
    ],
)
@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda d: QRImage.from_png(d, instance_name=NAME), id="from_png"),
        pytest.param(lambda d: QRImage(instance_name=NAME, data=d), id="constructor"),
    ],
)
def test_sides_at_the_png_spec_limits(width: int, height: int, ok: bool, build: object) -> None:
    """Sides of 1..2**31-1 pixels are accepted, anything else refused, on every path."""
    data = header_only(width, height)
    if ok:
        qr = build(data)  # type: ignore[operator]
        assert (qr.width, qr.height) == (width, height)
    else:
        with pytest.raises(InvalidImageError, match="dimensions"):
            build(data)  # type: ignore[operator]


def _reference_verdict(data: bytes) -> tuple[str, bool] | tuple[int, int]:
    try:
        size = png_dimensions(data, instance_name=NAME)
        check_png_end(data, instance_name=NAME)
        check_png_chunks(data, instance_name=NAME)
    except InvalidImageError as exc:
        return str(exc), exc.truncated
    return size


def _from_png_verdict(data: bytes) -> tuple[str, bool] | tuple[int, int]:
    try:
        qr = QRImage.from_png(data, instance_name=NAME)
    except InvalidImageError as exc:
        return str(exc), exc.truncated
    return qr.width, qr.height


def test_from_png_reads_every_header_and_trailer_byte() -> None:
    """Changing any one byte of the header or of IEND (to each of a few values): from_png
    refuses exactly when the reference parsers do, with their message."""
    good = png(5, 7)
    positions = [*range(33), *range(len(good) - 12, len(good))]
    verdicts = []
    for i in positions:
        for value in (0x00, 0x01, 0x7F, 0x80, 0xFF, good[i] ^ 0x01):
            data = good[:i] + bytes([value]) + good[i + 1 :]
            verdicts.append((i, value, _from_png_verdict(data), _reference_verdict(data)))
    assert [v for v in verdicts if v[2] != v[3]] == []
    assert sum(v[3] == (5, 7) for v in verdicts) < len(verdicts) / 2  # most edits are refused


@given(st.one_of(_mutated_png(), st.binary(max_size=80)))
def test_from_png_accepts_exactly_what_the_reference_parsers_accept(data: bytes) -> None:
    """from_png's inline checks agree with png_dimensions + check_png_end + check_png_chunks on
    every input, including the reason given when it refuses."""
    assert _from_png_verdict(data) == _reference_verdict(data)


def test_a_built_image_is_still_frozen() -> None:
    """Validation in the constructor does not make the object mutable."""
    qr = QRImage(instance_name=NAME, data=GOOD)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        qr.width = 9  # type: ignore[misc]


@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_either_a_png_or_refused(data: bytes) -> None:
    """For any bytes: the constructor and from_png agree, and an accepted image's size is its
    header's."""
    try:
        png_dimensions(data)
        check_png_end(data)
        check_png_chunks(data)
    except InvalidImageError:
        with pytest.raises(InvalidImageError):
            QRImage(instance_name=NAME, data=data)
        return
    qr = QRImage(instance_name=NAME, data=data)
    assert (qr.width, qr.height) == png_dimensions(data)


@given(st.integers(1, 64), st.integers(1, 64), st.binary(min_size=1, max_size=20))
def test_a_valid_png_with_bytes_appended_is_refused(width: int, height: int, junk: bytes) -> None:
    """Whatever follows IEND, the image is refused: IEND must be the end."""
    data = png(width, height) + junk
    assume(not data.endswith(_chunk(b"IEND", b"")))
    with pytest.raises(InvalidImageError, match="IEND"):
        QRImage(instance_name=NAME, data=data, width=width, height=height)


# -- InstanceState.from_payload -------------------------------------------------------------

STATE_KEY = "sk-live-TOPSECRET-0123456789abcdef"


def _circular() -> dict[str, object]:
    """A decoded value that cannot be written back as JSON (it contains itself)."""
    loop: dict[str, object] = {}
    loop["instance"] = {"self": loop}
    return loop


@pytest.mark.parametrize(
    ("payload", "state", "integration"),
    [
        pytest.param(b'{"instance": {"state": "open"}}', "open", None, id="bytes"),
        pytest.param('{"instance": {"state": "close"}}', "close", None, id="str"),
        pytest.param(
            {"instance": {"state": "connecting", "integration": "WHATSAPP-BAILEYS"}},
            "connecting",
            "WHATSAPP-BAILEYS",
            id="decoded",
        ),
        pytest.param(
            b'{"data": {"instance": {"state": "open"}}}', "open", None, id="wrapped-in-data"
        ),
        pytest.param(
            b'{"instance": {"state": "new-state", "integration": 7}}',
            "new-state",
            None,
            id="unknown-state-odd-integration",
        ),
        pytest.param(memoryview(b'{"instance": {"state": "open"}}'), "open", None, id="memoryview"),
    ],
)
def test_from_payload_reads_the_state(payload: object, state: str, integration: str | None) -> None:
    """The state comes from instance.state (or data.instance.state), kept as sent."""
    result = InstanceState.from_payload(payload, instance_name=NAME)
    assert (result.instance_name, result.state, result.integration) == (NAME, state, integration)
    assert result.is_connected is (state == "open")
    assert result.raw["instance" if "data" not in result.raw else "data"]


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"[" * 100_000, id="deeply-nested"),
        pytest.param(b'{"instance": {"state": 5}}', id="state-not-a-string"),
        pytest.param(b'{"instance": "open"}', id="instance-not-an-object"),
        pytest.param(None, id="none"),
        pytest.param(["open"], id="decoded-list"),
        pytest.param(_circular(), id="decoded-circular"),
        pytest.param(f'{{"echo": "{STATE_KEY}"}}'.encode(), id="echoes-the-key"),
    ],
)
def test_from_payload_refuses_a_body_without_a_state(payload: object) -> None:
    """Untrusted JSON without a state string is an InvalidResponseError quoting a short,
    redacted excerpt, and never anything else."""
    with pytest.raises(InvalidResponseError, match="no state string") as info:
        InstanceState.from_payload(payload, instance_name=NAME, secrets=[STATE_KEY])
    assert STATE_KEY not in str(info.value)
    assert len(str(info.value)) < 300
    assert info.value.instance_name == NAME


@given(
    st.recursive(
        st.none() | st.booleans() | st.text(), lambda c: st.lists(c) | st.dictionaries(st.text(), c)
    )
)
def test_from_payload_never_raises_anything_else(payload: object) -> None:
    """Whatever JSON value arrives, the result is an InstanceState or InvalidResponseError."""
    try:
        result = InstanceState.from_payload(payload, instance_name=NAME)
    except InvalidResponseError:
        result = None
    assert result is None or isinstance(result.state, str)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        pytest.param({"fetched_at": "2024-01-01"}, TypeError, id="fetched-at-str"),
        pytest.param({"fetched_at": 1700000000}, TypeError, id="fetched-at-int"),
        pytest.param({"fetched_at": datetime(2024, 1, 1)}, TypeError, id="fetched-at-naive"),
        pytest.param({"content_type": "text/html"}, InvalidImageError, id="content-type-html"),
        pytest.param({"content_type": 3}, InvalidImageError, id="content-type-int"),
        pytest.param({"instance_name": None}, TypeError, id="name-none"),
        pytest.param({"instance_name": b"t1"}, TypeError, id="name-bytes"),
    ],
)
def test_the_other_fields_are_checked_too(changes: dict[str, object], error: type) -> None:
    """fetched_at is an aware datetime, content_type image/png, instance_name a str: a value
    that is not would make repr() or save() fail later, so it is refused when built."""
    base: dict[str, object] = {"instance_name": "t1", "data": png()}
    with pytest.raises(error):
        QRImage(**{**base, **changes})  # type: ignore[arg-type]
    good = QRImage(instance_name="t1", data=png(), content_type="IMAGE/PNG")
    with pytest.raises(error):
        attrs.evolve(good, **changes)
    assert "t1" in repr(good)


SECRETISH = b"\x89PNG-bytes-that-must-not-be-quoted-" + b"k" * 40


@pytest.mark.parametrize(
    ("build", "names"),
    [
        pytest.param(
            lambda: QRSuccess(instance_name=NAME, image=SECRETISH),  # type: ignore[arg-type]
            ("QRImage", "bytes"),
            id="success-image-bytes",
        ),
        pytest.param(
            lambda: QRSuccess(instance_name=NAME, image=bytearray(SECRETISH)),  # type: ignore[arg-type]
            ("QRImage", "bytearray"),
            id="success-image-bytearray",
        ),
        pytest.param(
            lambda: QRFailure(instance_name=NAME, error=SECRETISH),  # type: ignore[arg-type]
            ("WachatError", "bytes"),
            id="failure-error-bytes",
        ),
        pytest.param(
            lambda: Fault(body=SECRETISH.decode("latin-1")),  # type: ignore[arg-type]
            ("bytes", "str"),
            id="fault-body-str",
        ),
        pytest.param(lambda: Fault(status=SECRETISH), ("int", "bytes"), id="fault-status"),  # type: ignore[arg-type]
        pytest.param(lambda: Fault(delay=SECRETISH), ("number", "bytes"), id="fault-delay"),  # type: ignore[arg-type]
        pytest.param(lambda: Fault(hang=SECRETISH), ("bool", "bytes"), id="fault-flag"),  # type: ignore[arg-type]
        pytest.param(
            lambda: Fault(headers={"X-Raw": SECRETISH}),  # type: ignore[dict-item]
            ("str", "bytes"),
            id="fault-header-value",
        ),
    ],
)
def test_a_wrong_type_is_named_never_quoted(build: Any, names: tuple[str, ...]) -> None:
    """attrs validators name the expected and the given type; the value itself (bytes a PNG or
    a secret may be made of) is in neither the message, the repr nor the args."""
    with pytest.raises((TypeError, ValueError)) as info:
        build()
    texts = [str(info.value), repr(info.value), *map(repr, info.value.args)]
    for text in texts:
        assert "must-not-be-quoted" not in text
    for name in names:
        assert name in str(info.value)


def test_a_fetched_images_time_is_made_when_first_read() -> None:
    """from_png without fetched_at stamps the image with the clock and makes the datetime on
    first read: an aware UTC datetime of the fetch, the same on every read, on copies and
    pickles too; any other missing attribute is still an AttributeError."""
    import copy
    import pickle

    before = datetime.now(UTC)
    qr = QRImage.from_png(GOOD, instance_name=NAME)
    twin = pickle.loads(pickle.dumps(qr))  # noqa: S301  # our own bytes
    shallow = copy.copy(qr)
    assert "fetched_at" not in vars(qr)
    stamp = qr.fetched_at
    assert stamp.tzinfo is UTC
    assert before - timedelta(seconds=1) <= stamp <= datetime.now(UTC)
    assert qr.fetched_at is stamp  # made once
    assert twin == shallow == qr
    assert attrs.evolve(qr, instance_name="other").fetched_at == stamp
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        qr.nope  # type: ignore[attr-defined]  # noqa: B018
    given = QRImage.from_png(GOOD, instance_name=NAME, fetched_at=before)
    assert vars(given)["fetched_at"] is before
