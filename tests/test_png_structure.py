"""PNG validation depth: IHDR's fields and the chunk walk, alike on every construction path.

``QRImage(...)``, :meth:`QRImage.from_png`, ``attrs.evolve`` and a ``QRStream`` (so
``get_qr_image``, ``stream_qr_image`` and ``save_qr_image``) give the same verdict, with the same
message, for every input (wachat_async/_models.py, wachat_async/_stream.py).
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wachat_async import InvalidImageError, QRImage, RetryPolicy, WachatClient
from wachat_async._models import check_png, png_dimensions
from wachat_async.testing import FakeWachatServer, Fault

from .conftest import KEY

NAME = "t1_png"
SIG = b"\x89PNG\r\n\x1a\n"
#: Bit depths the PNG spec allows for each colour type.
DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def chunk(tag: bytes, data: bytes) -> bytes:
    """One chunk with a correct CRC."""
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def ihdr(
    width: int = 4,
    height: int = 3,
    depth: int = 8,
    colour: int = 0,
    compression: int = 0,
    filtering: int = 0,
    interlace: int = 0,
) -> bytes:
    fields = struct.pack(
        ">IIBBBBB", width, height, depth, colour, compression, filtering, interlace
    )
    return chunk(b"IHDR", fields)


IDAT = chunk(b"IDAT", zlib.compress(b"\x00" * 20))
IEND = chunk(b"IEND", b"")
GOOD = SIG + ihdr() + IDAT + IEND


def reference(data: bytes) -> tuple[str, bool] | tuple[int, int]:
    """The verdict of the documented rules (check_png)."""
    try:
        size = check_png(data, instance_name=NAME)
    except InvalidImageError as exc:
        return str(exc), exc.truncated
    return size


def independent(data: bytes) -> bool:
    """A plain parser written from the spec, sharing no code with the library: is *data* a
    signature, a valid IHDR, chunks that chain by their lengths, one IDAT or more and a final
    empty IEND with its CRC?"""
    if data[:8] != SIG or len(data) < 8 + 25 + 12:
        return False
    pos, kinds = 8, []
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if len(body) < length or pos + 12 + length > len(data):
            return False
        crc = int.from_bytes(data[pos + 8 + length : pos + 12 + length], "big")
        if not kinds and (kind != b"IHDR" or length != 13 or zlib.crc32(kind + body) != crc):
            return False
        if kind == b"IEND" and (length != 0 or zlib.crc32(kind) != crc):
            return False
        kinds.append(kind)
        pos += 12 + length
        if kind == b"IEND":
            break
    if pos != len(data) or kinds[-1:] != [b"IEND"] or b"IDAT" not in kinds:
        return False
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", data[16:29]
    )
    return (
        0 < width < 2**31
        and 0 < height < 2**31
        and depth in DEPTHS.get(colour, ())
        and (compression, filtering, interlace) in {(0, 0, 0), (0, 0, 1)}
    )


def built(build: str, data: bytes) -> tuple[str, bool] | tuple[int, int]:
    """The verdict of one synchronous construction path."""
    try:
        if build == "from_png":
            qr = QRImage.from_png(data, instance_name=NAME)
        elif build == "constructor":
            qr = QRImage(instance_name=NAME, data=data)
        else:  # evolve a valid image onto the bytes
            qr = attrs.evolve(QRImage(instance_name=NAME, data=GOOD), data=data, width=0, height=0)
    except InvalidImageError as exc:
        return str(exc), exc.truncated
    return qr.width, qr.height


BUILDS = ["from_png", "constructor", "evolve"]

#: What the reproducer found accepted (/work/findings/a_qrimage_accepts_broken_png.py), and
#: more near misses of the same rules: (bytes, the phrase of the refusal).
REFUSED = [
    pytest.param(SIG + ihdr() + IEND, "no IDAT chunk", id="no-idat"),
    pytest.param(SIG + ihdr() + b"this is not png data" + IEND, "chain", id="garbage-between"),
    pytest.param(
        SIG + ihdr() + b"<html><script>alert(1)</script></html>" + IEND, "chain", id="html"
    ),
    pytest.param(SIG + ihdr(depth=99, colour=7) + IDAT + IEND, "invalid IHDR", id="depth-99"),
    pytest.param(SIG + ihdr(depth=16, colour=3) + IDAT + IEND, "invalid IHDR", id="palette-16"),
    pytest.param(SIG + ihdr(depth=4, colour=2) + IDAT + IEND, "invalid IHDR", id="rgb-4"),
    pytest.param(SIG + ihdr(depth=0) + IDAT + IEND, "invalid IHDR", id="depth-0"),
    pytest.param(SIG + ihdr(colour=1) + IDAT + IEND, "invalid IHDR", id="colour-1"),
    pytest.param(SIG + ihdr(compression=1) + IDAT + IEND, "compression 1", id="compression"),
    pytest.param(SIG + ihdr(filtering=1) + IDAT + IEND, "filter 1", id="filter"),
    pytest.param(SIG + ihdr(interlace=2) + IDAT + IEND, "interlace 2", id="interlace-2"),
    pytest.param(SIG + ihdr() + IDAT + IEND + IDAT + IEND, "IEND chunk before", id="two-iends"),
    pytest.param(SIG + ihdr() + IDAT[:-1] + IEND, "chain", id="idat-one-byte-short"),
    pytest.param(SIG + ihdr() + IDAT + b"\x00" + IEND, "chain", id="a-byte-between"),
    pytest.param(
        SIG + ihdr() + struct.pack(">I", 2**31) + IDAT[4:] + IEND, "chain", id="huge-length"
    ),
    pytest.param(SIG + ihdr() + chunk(b"tEXt", b"Comment\x00hi") + IEND, "no IDAT", id="text-only"),
]

#: Valid PNG structures beyond the minimal one.
ACCEPTED = [
    pytest.param(GOOD, id="minimal"),
    pytest.param(SIG + ihdr() + IDAT + IDAT + IEND, id="two-idats"),
    pytest.param(
        SIG + ihdr() + chunk(b"pHYs", bytes(9)) + IDAT + chunk(b"tEXt", b"k\x00v") + IEND,
        id="ancillary-chunks",
    ),
    pytest.param(SIG + ihdr(interlace=1) + IDAT + IEND, id="interlaced"),
    pytest.param(SIG + ihdr() + chunk(b"IDAT", b"") + IEND, id="empty-idat"),
    *(
        pytest.param(SIG + ihdr(depth=d, colour=c) + IDAT + IEND, id=f"colour-{c}-depth-{d}")
        for c, depths in DEPTHS.items()
        for d in depths
    ),
]


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize(("data", "phrase"), REFUSED)
def test_broken_structures_are_refused_on_every_path(build: str, data: bytes, phrase: str) -> None:
    """Each near miss is an InvalidImageError saying which rule failed, whichever way the image
    is built, and is not reported as truncated (the bytes ended with IEND)."""
    verdict = built(build, data)
    assert isinstance(verdict[0], str), verdict
    assert phrase in verdict[0]
    assert verdict == (verdict[0], False)
    assert verdict == reference(data)
    assert not independent(data)


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("data", ACCEPTED)
def test_valid_structures_are_accepted_on_every_path(build: str, data: bytes) -> None:
    """Every allowed depth/colour pair, interlacing, several IDATs and ancillary chunks pass."""
    assert built(build, data) == (4, 3) == reference(data)
    assert independent(data)


@st.composite
def near_misses(draw: st.DrawFn) -> bytes:
    """Valid structures with chunk lengths, types, IHDR fields or the bytes between chunks
    changed: the inputs the chunk walk and the IHDR rule decide."""
    colour = draw(st.sampled_from(sorted(DEPTHS)))
    head = ihdr(
        width=draw(st.integers(1, 9)),
        height=draw(st.integers(1, 9)),
        depth=draw(st.sampled_from([*DEPTHS[colour], 0, 3, 99])),
        colour=draw(st.sampled_from([colour, colour, 1, 5, 7])),
        compression=draw(st.sampled_from([0, 0, 0, 1])),
        filtering=draw(st.sampled_from([0, 0, 0, 1])),
        interlace=draw(st.sampled_from([0, 0, 1, 2])),
    )
    tags = st.sampled_from([b"IDAT", b"IDAT", b"tEXt", b"pHYs", b"IEND", b"IHDR"])
    middle = [
        chunk(draw(tags), draw(st.binary(max_size=30))) for _ in range(draw(st.integers(0, 4)))
    ]
    data = bytearray(SIG + head + b"".join(middle) + IEND)
    for _ in range(draw(st.integers(0, 2))):  # a length or type byte of some chunk
        where = draw(st.integers(33, max(33, len(data) - 1)))
        data[where] = draw(st.integers(0, 255))
    if draw(st.booleans()):  # bytes inserted or removed between header and IEND
        at = draw(st.integers(33, len(data) - 12))
        data[at:at] = draw(st.binary(max_size=3))
        cut = draw(st.integers(33, len(data) - 12))
        del data[cut : cut + draw(st.integers(0, 2))]
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(near_misses())
@example(SIG + ihdr() + IEND)
@example(GOOD)
def test_every_sync_path_agrees_with_the_rules_and_the_spec(data: bytes) -> None:
    """On near misses, from_png, the constructor and evolve give the reference verdict (same
    message), and accept exactly what an independent parser accepts."""
    verdicts = {build: built(build, data) for build in BUILDS}
    assert set(verdicts.values()) == {reference(data)}
    assert (not isinstance(reference(data)[0], str)) == independent(data)


# -- the stream and the client's other paths, against a real loopback server ---------------


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[asyncio.AbstractEventLoop, FakeWachatServer, WachatClient]]:
    """One loop, one fake server and one client for every example (hypothesis runs many)."""
    loop = asyncio.new_event_loop()
    server = FakeWachatServer(api_key=KEY)
    loop.run_until_complete(server.__aenter__())
    server.add_instance(NAME)
    client = WachatClient(
        api_key=KEY, base_url=server.base_url, retry=RetryPolicy.disabled(), max_image_bytes=4096
    )
    try:
        yield loop, server, client
    finally:
        loop.run_until_complete(client.aclose())
        loop.run_until_complete(server.__aexit__(None, None, None))
        loop.close()


async def _streamed(client: WachatClient, chunk_size: int) -> tuple[str, bool] | tuple[int, int]:
    try:
        async with client.stream_qr_image(NAME, chunk_size=chunk_size) as stream:
            async for _ in stream:
                pass
    except InvalidImageError as exc:
        return str(exc), exc.truncated
    return stream.width, stream.height


async def _fetched(client: WachatClient) -> tuple[str, bool] | tuple[int, int]:
    try:
        qr = await client.get_qr_image(NAME)
    except InvalidImageError as exc:
        return str(exc), exc.truncated
    return qr.width, qr.height


async def _saved(client: WachatClient, path: Path) -> tuple[str, bool] | tuple[int, int]:
    try:
        await client.save_qr_image(NAME, path)
    except InvalidImageError as exc:
        return str(exc), exc.truncated
    return png_dimensions(path.read_bytes())


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=near_misses(), chunk_size=st.integers(1, 40))
@example(data=SIG + ihdr() + IDAT + IEND + IDAT + IEND, chunk_size=7)
@example(data=SIG + ihdr() + IEND, chunk_size=3)
def test_the_stream_walks_chunks_as_they_arrive_with_the_same_verdict(
    live: tuple[asyncio.AbstractEventLoop, FakeWachatServer, WachatClient],
    data: bytes,
    chunk_size: int,
) -> None:
    """A stream read in small pieces (chunk headers split across reads) reaches the verdict of
    the whole bytes, and so does get_qr_image (which reads them whole)."""
    loop, server, client = live
    server.script(NAME, [Fault(body=data), Fault(body=data)])
    streamed = loop.run_until_complete(_streamed(client, chunk_size))
    fetched = loop.run_until_complete(_fetched(client))
    assert streamed == fetched == reference(data)


@pytest.mark.parametrize(("data", "phrase"), REFUSED)
def test_save_refuses_the_same_structures_and_writes_nothing(
    live: tuple[asyncio.AbstractEventLoop, FakeWachatServer, WachatClient],
    tmp_path: Path,
    data: bytes,
    phrase: str,
) -> None:
    """save_qr_image (the streaming path to disk) refuses each near miss with the reference
    message and leaves no file behind."""
    loop, server, client = live
    server.script(NAME, [Fault(body=data)])
    target = tmp_path / "qr.png"
    assert loop.run_until_complete(_saved(client, target)) == reference(data)
    assert phrase in str(reference(data)[0])
    assert list(tmp_path.iterdir()) == []
