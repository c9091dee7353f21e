"""The ``<img>`` URL builder: encoding, opt-in refusal, ApiKeyExposureWarning, qr_img_tag."""

from __future__ import annotations

import inspect
import string
import urllib.parse
import warnings
from html.parser import HTMLParser

import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from wachat_async._urls import (
    DEFAULT_BASE_URL,
    ApiKeyExposureWarning,
    _build_qr_image_url,
    build_qr_image_url,
    qr_img_tag,
)
from wachat_async._validate import check_api_key, check_instance_name

KEY = "wk_live_S3CRET-value_42"
ENDPOINT = "https://app.wachat.net/api/v1/instance/qr/image"


def _valid(check: object, value: str) -> bool:
    try:
        check(value)  # type: ignore[operator]
        value.encode("utf-8")
    except (TypeError, ValueError):
        return False
    return True


names = st.text(min_size=1).filter(lambda s: _valid(check_instance_name, s))
keys = st.text(min_size=1).filter(lambda s: _valid(check_api_key, s))


def _query_pairs(url: str) -> list[tuple[str, str]]:
    """Parse *url*'s query the way a server (urllib) would, refusing anything malformed."""
    split = urllib.parse.urlsplit(url)
    return urllib.parse.parse_qsl(split.query, keep_blank_values=True, strict_parsing=True)


def _opted_in(name: str, key: str, **kwargs: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ApiKeyExposureWarning)
        return build_qr_image_url(name, api_key=key, expose_api_key=True, **kwargs)


# --- properties -------------------------------------------------------------------------------


@given(name=names, key=keys)
def test_query_round_trips_exactly_through_urllib(name: str, key: str) -> None:
    """urllib parses back exactly instanceName and apiKey, in order, and nothing else."""
    url = _opted_in(name, key)
    assert _query_pairs(url) == [("instanceName", name), ("apiKey", key)]


@given(name=names, key=keys)
def test_query_round_trips_exactly_through_yarl(name: str, key: str) -> None:
    """yarl (aiohttp's parser) reads back exactly the two parameters."""
    url = URL(_opted_in(name, key))
    assert list(url.query.items()) == [("instanceName", name), ("apiKey", key)]


@given(name=names, key=keys)
def test_built_url_keeps_endpoint_and_is_plain_ascii(name: str, key: str) -> None:
    """No input changes scheme, host or path, adds a fragment, or leaves raw non-ASCII/space."""
    url = _opted_in(name, key)
    split = urllib.parse.urlsplit(url)
    assert (split.scheme, split.netloc, split.path, split.fragment) == (
        "https",
        "app.wachat.net",
        "/api/v1/instance/qr/image",
        "",
    )
    assert url.isascii()
    assert not any(c in url for c in string.whitespace)


@given(name=names)
def test_keyless_url_has_only_instance_name(name: str) -> None:
    """Without a key the only parameter is instanceName."""
    assert _query_pairs(build_qr_image_url(name)) == [("instanceName", name)]


# --- labelled hostile inputs ------------------------------------------------------------------

HOSTILE_NAMES = [
    pytest.param("t1_x&apiKey=stolen", id="ampersand-apikey-injection"),
    pytest.param("t1_x&instanceName=other", id="ampersand-name-override"),
    pytest.param("t1_x#fragment", id="fragment"),
    pytest.param("t1_x?apiKey=stolen", id="question-mark"),
    pytest.param("t1_x%00", id="percent-00"),
    pytest.param("t1_x%26apiKey%3Dstolen", id="pre-encoded-ampersand"),
    pytest.param("t1_x;apiKey=stolen", id="semicolon-separator"),
    pytest.param("a+b", id="plus-sign"),
    pytest.param("a b", id="space"),
    pytest.param("a=b", id="equals"),
    pytest.param("../../admin", id="path-traversal"),
    pytest.param('x"><script>alert(1)</script>', id="html-breakout"),
    pytest.param("toko-jakarta-é-ß-東京-🙂", id="unicode"),
    pytest.param("abc\u202egpj.exe", id="rtl-override"),
    pytest.param("\ufeffbom", id="byte-order-mark"),
    pytest.param("n" * 10 * 1024, id="10kb-name"),
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_encoded_not_interpreted(name: str) -> None:
    """A hostile name stays one instanceName value; the key stays the only apiKey."""
    url = _opted_in(name, KEY)
    assert _query_pairs(url) == [("instanceName", name), ("apiKey", KEY)]
    assert list(URL(url).query.items()) == [("instanceName", name), ("apiKey", KEY)]
    assert urllib.parse.urlsplit(url).fragment == ""
    assert urllib.parse.urlsplit(url).path == "/api/v1/instance/qr/image"


HOSTILE_KEYS = [
    pytest.param("k&instanceName=other", id="ampersand-name-injection"),
    pytest.param("k#fragment", id="fragment"),
    pytest.param("k%00", id="percent-00"),
    pytest.param("k+/=", id="base64-chars"),
    pytest.param("k;x=1", id="semicolon-separator"),
    pytest.param("ключ-鍵", id="unicode"),
]


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_hostile_keys_are_encoded_not_interpreted(key: str) -> None:
    """A hostile key stays one apiKey value and cannot touch instanceName."""
    url = _opted_in("t1_abc_store", key)
    assert _query_pairs(url) == [("instanceName", "t1_abc_store"), ("apiKey", key)]


REJECTED_NAMES = [
    pytest.param("t1_x\r\nSet-Cookie: a=b", id="crlf-injection"),
    pytest.param("t1_x\n", id="lf"),
    pytest.param("t1_x\x00", id="null-byte"),
    pytest.param("t1\tx", id="tab"),
    pytest.param("t1_x\x7f", id="del"),
    pytest.param("t1_x\x85", id="c1-next-line"),
    pytest.param("", id="empty"),
    pytest.param(" \t ", id="whitespace-only"),
    pytest.param("t1_x\ud800", id="lone-surrogate"),
]


@pytest.mark.parametrize("name", REJECTED_NAMES)
def test_unusable_names_are_rejected(name: str) -> None:
    """Empty/whitespace names, control characters and lone surrogates raise ValueError."""
    with pytest.raises(ValueError, match="instance_name"):
        build_qr_image_url(name)


def test_lone_surrogate_is_rejected_not_silently_dropped() -> None:
    """yarl would drop a lone surrogate and address another instance; the builder refuses."""
    with pytest.raises(ValueError, match="valid Unicode"):
        build_qr_image_url("ab\udc00c")


REJECTED_KEYS = [
    pytest.param("SECRET\r\nX-Injected: 1", id="crlf-injection"),
    pytest.param("SECRET\x00", id="null-byte"),
    pytest.param(" SECRET", id="leading-space"),
    pytest.param("SECRET ", id="trailing-space"),
    pytest.param("", id="empty"),
    pytest.param("SECRET\ud800", id="lone-surrogate"),
]


@pytest.mark.parametrize("key", REJECTED_KEYS)
def test_unusable_keys_are_rejected_without_echoing_them(key: str) -> None:
    """A malformed key raises ValueError whose message does not contain the key."""
    with pytest.raises(ValueError, match="api_key") as info:
        build_qr_image_url("t1_abc_store", api_key=key, expose_api_key=True)
    assert "SECRET" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"instance_name": 42}, "instance_name", id="name-int"),
        pytest.param({"instance_name": b"t1"}, "instance_name", id="name-bytes"),
        pytest.param({"api_key": 42}, "api_key", id="key-int"),
        pytest.param({"expose_api_key": "yes"}, "expose_api_key", id="expose-str"),
        pytest.param({"base_url": URL.build}, "base_url", id="base-url-callable"),
    ],
)
def test_wrong_types_raise_type_error(kwargs: dict[str, object], match: str) -> None:
    """Arguments of the wrong type raise TypeError naming the argument."""
    call: dict[str, object] = {"instance_name": "t1_abc_store", **kwargs}
    with pytest.raises(TypeError, match=match):
        build_qr_image_url(**call)  # type: ignore[arg-type]


# --- the opt-in ---------------------------------------------------------------------------------


def test_key_without_opt_in_is_refused() -> None:
    """A key without expose_api_key=True raises ValueError explaining the opt-in and options."""
    with pytest.raises(ValueError, match="expose_api_key=True") as info:
        build_qr_image_url("t1_abc_store", api_key=KEY)
    message = str(info.value)
    for hint in ("to_data_uri()", "examples/aiohttp_proxy.py", "WachatClient", "history"):
        assert hint in message
    assert KEY not in message


def test_refusal_emits_no_warning() -> None:
    """The refused call does not also warn (filterwarnings=error would turn it into an error)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="Refusing"):
            build_qr_image_url("t1_abc_store", api_key=KEY, expose_api_key=False)
    assert caught == []


def test_opt_in_returns_url_with_key() -> None:
    """With the opt-in the URL carries the key as apiKey."""
    assert _opted_in("t1_abc_store", KEY) == (
        f"{ENDPOINT}?instanceName=t1_abc_store&apiKey=wk_live_S3CRET-value_42"
    )


def test_opt_in_without_key_returns_keyless_url_silently() -> None:
    """expose_api_key=True with no key exposes nothing, so nothing is warned about."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        url = build_qr_image_url("t1_abc_store", expose_api_key=True)
    assert (url, caught) == (f"{ENDPOINT}?instanceName=t1_abc_store", [])


def test_keyless_url_matches_the_documented_endpoint() -> None:
    """The default base URL and path are the ones in the API reference."""
    assert DEFAULT_BASE_URL == "https://app.wachat.net/api/v1"
    assert build_qr_image_url("t1_mq9r2jov_store-jakarta") == (
        f"{ENDPOINT}?instanceName=t1_mq9r2jov_store-jakarta"
    )


# --- the warning ------------------------------------------------------------------------------


def test_warning_is_a_user_warning() -> None:
    """ApiKeyExposureWarning is a UserWarning, so default filters show it."""
    assert issubclass(ApiKeyExposureWarning, UserWarning)


def test_warning_once_per_call() -> None:
    """Every opted-in call emits exactly one ApiKeyExposureWarning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            build_qr_image_url("t1_abc_store", api_key=KEY, expose_api_key=True)
    assert [w.category for w in caught] == [ApiKeyExposureWarning] * 3


def test_warning_points_at_the_caller() -> None:
    """stacklevel makes the warning's location this test file and the calling line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        build_qr_image_url("t1_abc_store", api_key=KEY, expose_api_key=True)
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, line)]


def _wrapper_like_the_client(name: str) -> str:
    """Stands in for WachatClient.qr_image_url: one frame between the user and the builder."""
    return _build_qr_image_url(
        name, api_key=KEY, base_url=DEFAULT_BASE_URL, expose_api_key=True, stacklevel=2
    )


def test_private_stacklevel_lets_a_wrapper_point_at_its_caller() -> None:
    """With stacklevel=2 the warning skips the wrapper and points at the wrapper's caller."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        _wrapper_like_the_client("t1_abc_store")
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, line)]


def test_warning_text_never_contains_the_key() -> None:
    """The warning explains the risk and the safer options without quoting the key."""
    with pytest.warns(ApiKeyExposureWarning) as record:
        build_qr_image_url("t1_abc_store", api_key=KEY, expose_api_key=True)
    text = str(record[0].message)
    assert KEY not in text
    assert "to_data_uri()" in text


@pytest.mark.parametrize(
    ("base_url", "mentions_http"),
    [
        pytest.param("http://gw.example/api/v1", True, id="http-remote"),
        pytest.param("https://gw.example/api/v1", False, id="https"),
        pytest.param("http://127.0.0.1:8080/api/v1", False, id="http-loopback-v4"),
        pytest.param("http://[::1]:8080/api/v1", False, id="http-loopback-v6"),
        pytest.param("http://localhost:8080/api/v1", False, id="http-localhost"),
    ],
)
def test_warning_mentions_clear_text_http_to_remote_hosts(
    base_url: str, mentions_http: bool
) -> None:
    """Over plain http to a non-loopback host the warning adds that the key travels in clear."""
    with pytest.warns(ApiKeyExposureWarning) as record:
        build_qr_image_url("t1", api_key=KEY, base_url=base_url, expose_api_key=True)
    assert ("unencrypted" in str(record[0].message)) is mentions_http


def test_warning_filter_ignore_silences_it() -> None:
    """The standard 'ignore' filter for the category silences the warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", ApiKeyExposureWarning)
        url = build_qr_image_url("t1_abc_store", api_key=KEY, expose_api_key=True)
    assert caught == []
    assert "apiKey=" in url


def test_warning_filter_error_turns_it_into_an_exception() -> None:
    """The standard 'error' filter makes every opted-in call raise."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ApiKeyExposureWarning)
        with pytest.raises(ApiKeyExposureWarning):
            build_qr_image_url("t1_abc_store", api_key=KEY, expose_api_key=True)


def test_warning_filter_by_module_of_caller() -> None:
    """A filter on the caller's module works because the warning is attributed to the caller."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=ApiKeyExposureWarning, module=__name__)
        build_qr_image_url("t1_abc_store", api_key=KEY, expose_api_key=True)
    assert caught == []


# --- base URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "endpoint"),
    [
        pytest.param("https://app.wachat.net/api/v1", ENDPOINT, id="default"),
        pytest.param("https://app.wachat.net/api/v1/", ENDPOINT, id="trailing-slash"),
        pytest.param("https://gw.example/", "https://gw.example/instance/qr/image", id="root"),
        pytest.param("https://gw.example", "https://gw.example/instance/qr/image", id="no-path"),
        pytest.param(
            "http://127.0.0.1:8123",
            "http://127.0.0.1:8123/instance/qr/image",
            id="loopback-port",
        ),
        pytest.param(
            "http://[::1]:8123/api/v1",
            "http://[::1]:8123/api/v1/instance/qr/image",
            id="ipv6-loopback",
        ),
        pytest.param(
            "HTTPS://GW.Example/Api/V1",
            "https://gw.example/Api/V1/instance/qr/image",
            id="case-normalised-host",
        ),
        pytest.param(
            "https://bücher.example/api",
            "https://xn--bcher-kva.example/api/instance/qr/image",
            id="idna-host",
        ),
        pytest.param(
            "https://gw.example/a%20b/v1",
            "https://gw.example/a%20b/v1/instance/qr/image",
            id="encoded-path",
        ),
    ],
)
def test_base_url_variants_keep_their_path(base_url: str, endpoint: str) -> None:
    """The base path is kept, with or without a trailing slash, and the endpoint appended."""
    assert build_qr_image_url("t1", base_url=base_url) == f"{endpoint}?instanceName=t1"


@pytest.mark.parametrize(
    ("base_url", "match"),
    [
        pytest.param("ftp://gw.example/api", "http", id="ftp"),
        pytest.param("file:///etc/passwd", "http", id="file"),
        pytest.param("gw.example/api/v1", "http", id="no-scheme"),
        pytest.param("/api/v1", "http", id="relative"),
        pytest.param("", "http", id="empty"),
        pytest.param("http:///api", "host", id="no-host"),
        pytest.param("https://gw.example/api?x=1", "query", id="query"),
        pytest.param("https://gw.example/api#frag", "fragment", id="fragment"),
        pytest.param("http://[::1", "valid URL", id="unparseable"),
    ],
)
def test_bad_base_urls_are_rejected(base_url: str, match: str) -> None:
    """Only http(s) URLs with a host and no query/fragment are accepted."""
    with pytest.raises(ValueError, match=match):
        build_qr_image_url("t1", base_url=base_url)


def test_base_url_with_credentials_is_rejected_without_echoing_them() -> None:
    """user:password@ in the base URL is refused and the password is not in the message."""
    with pytest.raises(ValueError, match="user info") as info:
        build_qr_image_url("t1", base_url="https://admin:hunter2@gw.example/api")
    assert "hunter2" not in str(info.value)


def test_base_url_may_be_a_yarl_url() -> None:
    """The client passes its yarl.URL base; the private builder accepts it."""
    url = _build_qr_image_url(
        "t1",
        api_key=None,
        base_url=URL("http://127.0.0.1:9/api/v1"),
        expose_api_key=False,
        stacklevel=2,
    )
    assert url == "http://127.0.0.1:9/api/v1/instance/qr/image?instanceName=t1"


# --- qr_img_tag -------------------------------------------------------------------------------


class _ImgParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(tag: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _ImgParser()
    parser.feed(tag)
    parser.close()
    assert parser.text == []
    return parser.tags


def test_img_tag_default_attributes() -> None:
    """The tag has src, alt, no-referrer and async decoding, and no width/height by default."""
    assert qr_img_tag("/qr/t1.png") == (
        '<img src="/qr/t1.png" alt="WhatsApp QR code" '
        'referrerpolicy="no-referrer" decoding="async">'
    )


def test_img_tag_with_size() -> None:
    """width and height are written when given."""
    assert _parse(qr_img_tag("/qr/t1.png", width=264, height=200)) == [
        (
            "img",
            {
                "src": "/qr/t1.png",
                "alt": "WhatsApp QR code",
                "width": "264",
                "height": "200",
                "referrerpolicy": "no-referrer",
                "decoding": "async",
            },
        )
    ]


@pytest.mark.parametrize(
    ("url", "alt"),
    [
        pytest.param('/qr/x" onerror="alert(1)', "QR", id="double-quote-in-url"),
        pytest.param("/qr/x' onerror='alert(1)", "QR", id="single-quote-in-url"),
        pytest.param("/qr/x><script>alert(1)</script>", "QR", id="angle-brackets-in-url"),
        pytest.param("/qr/x.png?a=1&b=2", "QR", id="ampersand-in-url"),
        pytest.param("/qr/x.png", '"><script>alert(1)</script>', id="breakout-in-alt"),
        pytest.param("/qr/x.png", "Tom's <b>shop</b> & co", id="markup-in-alt"),
        pytest.param("/qr/x.png", "&amp; already escaped", id="entity-in-alt"),
    ],
)
def test_img_tag_escapes_url_and_alt(url: str, alt: str) -> None:
    """Quotes, <, > and & are escaped: the tag parses back to exactly one img with our values."""
    tag = qr_img_tag(url, alt=alt)
    assert _parse(tag) == [
        (
            "img",
            {
                "src": url,
                "alt": alt,
                "referrerpolicy": "no-referrer",
                "decoding": "async",
            },
        )
    ]
    assert (tag.count("<"), tag.count(">"), tag.count('"')) == (1, 1, 8)


html_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")),
    min_size=1,
)


@given(url=html_text, alt=st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"))))
def test_img_tag_round_trips_arbitrary_text(url: str, alt: str) -> None:
    """For arbitrary text, an HTML parser reads back exactly one img with src and alt unchanged."""
    tag = qr_img_tag(url, alt=alt)
    assert _parse(tag)[0][1]["src"] == url
    assert _parse(tag)[0][1]["alt"] == alt
    assert len(_parse(tag)) == 1


def test_img_tag_of_opted_in_url_escapes_the_ampersand() -> None:
    """The & between instanceName and apiKey becomes &amp; in the attribute."""
    url = _opted_in("t1_abc_store", KEY)
    assert "instanceName=t1_abc_store&amp;apiKey=" in qr_img_tag(url)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        pytest.param({"width": 0}, ValueError, id="zero-width"),
        pytest.param({"height": -5}, ValueError, id="negative-height"),
        pytest.param({"width": 2.5}, TypeError, id="float-width"),
        pytest.param({"width": "264"}, TypeError, id="str-width"),
        pytest.param({"height": True}, TypeError, id="bool-height"),
        pytest.param({"alt": None}, TypeError, id="none-alt"),
        pytest.param({"url": ""}, ValueError, id="empty-url"),
        pytest.param({"url": b"/qr/x.png"}, TypeError, id="bytes-url"),
    ],
)
def test_img_tag_rejects_bad_arguments(kwargs: dict[str, object], error: type[Exception]) -> None:
    """Sizes must be positive ints; url and alt must be str, url non-empty."""
    call: dict[str, object] = {"url": "/qr/x.png", **kwargs}
    with pytest.raises(error):
        qr_img_tag(**call)  # type: ignore[arg-type]


def test_img_tag_docstring_explains_no_referrer_limits() -> None:
    """The docstring says what no-referrer protects and what it does not."""
    doc = qr_img_tag.__doc__ or ""
    for word in ("Referer", "history", "logs", "proxy", "screenshots", "page source"):
        assert word in doc


# --- through the client -----------------------------------------------------------------------


def test_client_qr_image_url_warning_points_at_the_caller() -> None:
    """WachatClient.qr_image_url passes a stacklevel so the warning names this file and line."""
    from wachat_async import WachatClient

    client = WachatClient(api_key=KEY, base_url="http://127.0.0.1:9/api/v1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        url = client.qr_image_url("t1_abc_store", expose_api_key=True)
    assert [(w.category, w.filename, w.lineno) for w in caught] == [
        (ApiKeyExposureWarning, __file__, line)
    ]
    assert _query_pairs(url) == [("instanceName", "t1_abc_store"), ("apiKey", KEY)]


def test_client_qr_image_url_without_opt_in_is_keyless() -> None:
    """Without the opt-in the client's URL has no key and emits no warning."""
    from wachat_async import WachatClient

    client = WachatClient(api_key=KEY, base_url="http://127.0.0.1:9/api/v1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        url = client.qr_image_url("t1_abc_store")
    assert (url, caught) == (
        "http://127.0.0.1:9/api/v1/instance/qr/image?instanceName=t1_abc_store",
        [],
    )


def test_public_names_are_exported() -> None:
    """The URL helpers are importable from the package root and are the same objects."""
    import wachat_async

    assert (
        wachat_async.build_qr_image_url,
        wachat_async.qr_img_tag,
        wachat_async.ApiKeyExposureWarning,
        wachat_async.DEFAULT_BASE_URL,
    ) == (build_qr_image_url, qr_img_tag, ApiKeyExposureWarning, DEFAULT_BASE_URL)


@pytest.mark.parametrize("slashes", [0, 1, 2, 3], ids=lambda n: f"{n}-slashes")
async def test_every_call_joins_a_base_url_with_trailing_slashes_the_same_way(slashes: int) -> None:
    """One rule for every URL the client builds: the base URL's trailing slashes are dropped
    once, so the state, the QR and the handed-out URL all land on /api/v1/instance/..."""
    from wachat_async import WachatClient
    from wachat_async.testing import FakeWachatServer

    async with FakeWachatServer("k-0123456789") as server:
        server.add_instance("t1_abc_store")
        base_url = server.base_url + "/" * slashes
        async with WachatClient("k-0123456789", base_url=base_url) as client:
            assert client.base_url == server.base_url
            assert (await client.get_instance_state("t1_abc_store")).state == "connecting"
            assert (await client.get_qr_image("t1_abc_store")).width > 0
            url = client.qr_image_url("t1_abc_store")
        assert url == f"{server.base_url}/instance/qr/image?instanceName=t1_abc_store"
        assert {r.path for r in server.requests} == {
            "/api/v1/instance/state",
            "/api/v1/instance/qr/image",
        }
