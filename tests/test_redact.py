"""Redaction (wachat_async/_redact.py): the key in every encoding a server or proxy may echo it
in, each character its own way, in JSON, HTML and plain bodies, whole or cut short, and
``Bearer``/``apiKey=`` credentials consumed to the end of the token."""

from __future__ import annotations

import functools
import html
import html.entities
import json
import re
import traceback
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from wachat_async._redact import REDACTED, Secret, _secret_matcher, excerpt, mentions, redact

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=300)

#: Keys of every shape: the stranger's reproducer (with "&"), the hostile suite's, URL-safe
#: base64, one with a space, one beyond ASCII (an emoji outside the BMP).
KEYS = {
    "reproducer": "wk_Ab3/xY+9kLmN0pQ7&rS2",
    "hostile": "wk_live_H0st1le/Key+7f3a9c1e=5b2d",
    "url-safe": "sk-AbC_dEf-123~xyz.789",
    "with-space": "my key/with space+&=",
    "non-ascii": "cl\u00e9-\u00df\U0001f600/\u00e9+xyz",
}


def _names() -> dict[str, str]:
    """One HTML5 name (with its ";") per character that has one."""
    names: dict[str, str] = {}
    for name, value in sorted(html.entities.html5.items(), key=lambda item: len(item[0])):
        if len(value) == 1 and name.endswith(";"):
            names.setdefault(value, name)
    return names


_HTML_NAMES = _names()


def _u(char: str, fmt: str = "\\u{:04x}") -> str:
    """*char* as JSON's \\uXXXX (a surrogate pair beyond the BMP)."""
    data = char.encode("utf-16-be")
    return "".join(
        fmt.format(int.from_bytes(data[i : i + 2], "big")) for i in range(0, len(data), 2)
    )


def _python_escape(char: str) -> str:
    code = ord(char)
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )


#: One character in one encoding: what a server may do to each character of an echoed key.
CHAR_ENCODINGS: dict[str, Callable[[str], str]] = {
    "raw": lambda c: c,
    "upper-case": str.upper,
    "percent": lambda c: quote(c, safe=""),
    "percent-lower-hex": lambda c: quote(c, safe="").lower() if not c.isalnum() else c,
    "percent-every-byte": lambda c: "".join(f"%{b:02X}" for b in c.encode()),
    "percent-twice": lambda c: quote(quote(c, safe=""), safe=""),
    "form-encoded": quote_plus,
    "json": lambda c: json.dumps(c)[1:-1],
    "json-php-slash": lambda c: "\\/" if c == "/" else json.dumps(c)[1:-1],
    "json-u-punctuation": lambda c: c if c.isalnum() else _u(c),
    "json-u-everything-upper-hex": lambda c: _u(c, "\\u{:04X}"),
    "json-go-html-safe": lambda c: _u(c) if c in "&<>" else json.dumps(c, ensure_ascii=False)[1:-1],
    "javascript-identity-escape": lambda c: c if c.isalnum() else "\\" + c,
    "javascript-code-point": lambda c: c if c.isalnum() else f"\\u{{{ord(c):X}}}",
    "python-repr-escape": lambda c: c if c.isalnum() else _python_escape(c),
    "escaped-twice": lambda c: c if c.isalnum() else "\\\\" + _u(c),
    "html-escape": lambda c: html.escape(c),
    "html-decimal": lambda c: c if c.isalnum() else f"&#{ord(c)};",
    "html-decimal-zero-padded": lambda c: f"&#{ord(c):07d};",
    "html-hex": lambda c: c if c.isalnum() else f"&#x{ord(c):x};",
    "html-hex-upper": lambda c: f"&#X{ord(c):X};",
    "html-named": lambda c: c if c.isalnum() else "&" + _HTML_NAMES.get(c, f"#{ord(c)};"),
    "html-escaped-twice": lambda c: html.escape(html.escape(c)),
    "go-json-of-html": lambda c: html.escape(c).replace("&", "\\u0026"),
}


def _each_char(encode: Callable[[str], str], key: str) -> str:
    return "".join(map(encode, key))


#: Every character encoded one way, and whole-key encodings that are not one character at a
#: time.
KEY_ENCODINGS: dict[str, Callable[[str], str]] = {
    **{name: functools.partial(_each_char, f) for name, f in CHAR_ENCODINGS.items()},
    "json-in-json": lambda k: json.dumps(json.dumps(k)[1:-1].replace("/", "\\/"))[1:-1],
    "case-folded": str.casefold,
}

#: Where an echo lands: (body with @@ for the echoed key, what redact must make of it).
CONTAINERS = {
    "plain": ("Invalid API key @@: not found", f"Invalid API key {REDACTED}: not found"),
    "json-field": (
        '{"status": 401, "provided": "@@"}',
        f'{{"status": 401, "provided": "{REDACTED}"}}',
    ),
    "html-bearer": (
        "<html><pre>Authorization: Bearer @@</pre></html>",
        f"<html><pre>Authorization: Bearer {REDACTED}</pre></html>",
    ),
    "html-query": (  # the apiKey= pattern takes the rest of the token, "&amp;..." included
        '<a href="/qr?apiKey=@@&amp;instanceName=x">retry</a>',
        f'<a href="/qr?apiKey={REDACTED}">retry</a>',
    ),
    "at-the-start": ("@@ rejected", f"{REDACTED} rejected"),
    "alone": ("@@", REDACTED),
}


def _leaks(out: str, key: str, form: str, start: str) -> list[str]:
    """What of the key is still in *out*: the key, its echoed *form*, its first 8 characters
    raw or as echoed (*start*), compared case-insensitively."""
    folded = out.casefold()
    return [f for f in dict.fromkeys((key, form, key[:8], start)) if f and f.casefold() in folded]


@pytest.mark.parametrize("key", list(KEYS.values()), ids=list(KEYS))
@pytest.mark.parametrize("encoding", list(KEY_ENCODINGS), ids=list(KEY_ENCODINGS))
def test_each_encoding_of_the_key_is_hidden_in_each_kind_of_body(key: str, encoding: str) -> None:
    """The key echoed in any encoding, in a JSON, HTML or plain body, becomes [REDACTED] and
    the text around it stays as it was; redacting again changes nothing."""
    encode = KEY_ENCODINGS[encoding]
    form = encode(key)
    for name, (body, expected) in CONTAINERS.items():
        out = redact(body.replace("@@", form), [key])
        assert out == expected, f"{name}: {out!r}"
        assert redact(out, [key]) == out
        assert mentions(body.replace("@@", form), [key]), name


@st.composite
def echoes(draw: st.DrawFn) -> tuple[str, str, str, str, bool]:
    """(text, key, echoed form, echoed form of the key's first 8 characters, cut): a key in a
    realistic alphabet, each character encoded its own way, at a random place in a random
    body; when *cut*, the text ends inside the echo, as a body read up to a limit does."""
    key = draw(
        st.text(
            alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_&/+=~.",
            min_size=12,
            max_size=64,
        )
    )
    names = st.sampled_from(sorted(CHAR_ENCODINGS))
    pieces = [CHAR_ENCODINGS[draw(names)](c) for c in key]
    form, start = "".join(pieces), "".join(pieces[:8])
    template = draw(st.sampled_from([b for b, _ in CONTAINERS.values()]))
    before, after = template.split("@@")
    before = draw(st.text(max_size=40)) + before
    after += draw(st.text(max_size=40))
    assume(not _leaks(before + after, key, form, start))
    cut = draw(st.booleans())
    if cut:
        return before + form[: draw(st.integers(len(start), len(form)))], key, form, start, cut
    return before + form + after, key, form, start, cut


@FUZZ
@given(echoes(), st.one_of(st.none(), st.integers(1, 600)))
@example(
    ("x" * 490 + "wk_Ab3\\/xY+9kLmN0pQ7&amp;rS2 tail", "wk_Ab3/xY+9kLmN0pQ7&rS2", "", "", False),
    500,
)
def test_an_echoed_key_never_survives_redaction_or_an_excerpt(
    sample: tuple[str, str, str, str, bool], limit: int | None
) -> None:
    """Whatever the key, the mix of encodings, the body and the place: neither the key, nor
    its echoed form, nor its first 8 characters (raw or echoed) are left, also when the text
    ends inside the echo, and also in an excerpt cut at any length."""
    text, key, form, start, _ = sample
    out = redact(text, [key]) if limit is None else excerpt(text, [key], limit=limit)
    assert not _leaks(out, key, form, start), out


@pytest.mark.parametrize("encoding", list(KEY_ENCODINGS), ids=list(KEY_ENCODINGS))
def test_a_text_cut_inside_the_key_hides_the_start_it_ends_with(encoding: str) -> None:
    """A body read up to a size limit can end anywhere in the echo: once 4 characters of the
    key are there, the end of the text from the key's start is hidden; fewer stay visible."""
    key = KEYS["reproducer"]
    encode = KEY_ENCODINGS[encoding]
    form = encode(key)
    for length in range(1, len(key)):
        shown = encode(key[:length])
        for text in (f"server said: {shown}", f"server said: {form[: len(shown) + 1]}"):
            out = redact(text, [key])
            if length >= 4:
                assert out == f"server said: {REDACTED}", (length, text, out)
            elif text.endswith(shown):
                assert out == text  # "wk_" is not worth hiding a word for


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "Authorization: Bearer abc&def", f"Authorization: Bearer {REDACTED}", id="bearer-amp"
        ),
        pytest.param("Bearer ab;c,d)e}f]g", f"Bearer {REDACTED}", id="bearer-punctuation"),
        pytest.param("Bearer a&amp;b&#43;c x", f"Bearer {REDACTED} x", id="bearer-html-escaped"),
        pytest.param("bearer%20abc%26def", f"bearer%20{REDACTED}", id="bearer-percent-encoded"),
        pytest.param("apiKey=abc&def next", f"apiKey={REDACTED} next", id="api-key-query"),
        pytest.param("apiKey%3Dabc%26d", f"apiKey%3D{REDACTED}", id="api-key-in-a-nested-url"),
        pytest.param(
            '{"api_key": "a&b;c", "n": 1}', f'{{"api_key": "{REDACTED}", "n": 1}}', id="json"
        ),
        pytest.param(
            '{\\"apiKey\\":\\"abc\\"}', f'{{\\"apiKey\\":\\"{REDACTED}"}}', id="json-in-json"
        ),
        pytest.param(
            "apiKey&quot;:&quot;abc&amp;d", f"apiKey&quot;:&quot;{REDACTED}", id="html-json"
        ),
        pytest.param("access_token: x/y+z==", f"access_token: {REDACTED}", id="access-token"),
        pytest.param(f"Bearer {REDACTED}&amp;rS2", f"Bearer {REDACTED}", id="redacted-start-tail"),
        pytest.param(f"Bearer {REDACTED}", f"Bearer {REDACTED}", id="already-redacted"),
        pytest.param(f"apiKey={REDACTED} x", f"apiKey={REDACTED} x", id="already-redacted-key"),
    ],
)
def test_credential_patterns_consume_the_whole_token(text: str, expected: str) -> None:
    """Bearer/apiKey=/token credentials of an unknown key are hidden to the end of the token
    (through "&", ";", ",", ")", entities and escapes), and redacting is idempotent."""
    assert redact(text) == expected
    assert redact(expected) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("<p>Tom &amp; Jerry &#47; &#x2F; &sol;</p>", id="html-entities"),
        pytest.param('{"path": "\\/api\\/v1", "q": "\\u0026"}', id="json-escapes"),
        pytest.param("https://h.example/a%2Fb?x=1%26y", id="percent-encoded-url"),
        pytest.param("the key wk_ was refused", id="key-start-mid-text"),
        pytest.param("ends with wk_", id="three-characters-at-the-end"),
        pytest.param("\\" * 65536, id="64-KiB-of-backslashes"),
        pytest.param("&#" + "0" * 65536, id="64-KiB-of-zeros"),
        pytest.param("%25" * 20000, id="percent-signs"),
    ],
)
def test_text_without_the_key_is_left_alone(text: str) -> None:
    """Entities, escapes and percent-encoding that are not the key stay as they are, and
    hostile runs (backslashes, zeros) are handled in one pass."""
    key = KEYS["reproducer"]
    assert redact(text, [key]) == text
    assert not mentions(text, [key])


def test_mentions_needs_the_whole_key() -> None:
    """mentions (the base URL check) wants the whole key: a start of it at the end, which
    redact hides, is not a mention."""
    key = KEYS["reproducer"]
    assert redact("https://h.example/wk_Ab3", [key]) == f"https://h.example/{REDACTED}"
    assert not mentions("https://h.example/wk_Ab3", [key])
    assert mentions(f"https://h.example/wk_Ab3/{quote(key, safe='')}", [key])


def test_one_secret_inside_another_is_hidden_whole() -> None:
    """Several secrets: the longest is matched first, so no tail of it is left over."""
    out = redact("x abc&amp;def y", ["abc", "abc&def"])
    assert out == f"x {REDACTED} y"


def test_nothing_in_the_matcher_or_a_traceback_shows_the_key() -> None:
    """The compiled patterns hold the key: their holder's repr hides it, so a traceback of
    redact with its locals (rich, pytest --showlocals) shows no form of the key."""
    key = Secret(KEYS["reproducer"])
    assert repr(_secret_matcher((key,))) == f"<secret matcher {REDACTED}>"
    with pytest.raises(TypeError) as caught:
        redact(None, [key])  # type: ignore[arg-type]
    rendered = "".join(
        traceback.TracebackException.from_exception(caught.value, capture_locals=True).format()
    )
    assert "secret matcher" in rendered  # the locals were rendered
    for form in (key, quote(key, safe=""), "xY+9kLmN", re.escape(key)):
        assert form not in rendered
