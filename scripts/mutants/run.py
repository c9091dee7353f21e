# ruff: noqa: E501, S603, S607
"""Hand-made mutants of the retry, transport, redaction, configuration and polling code.

Each mutant replaces one snippet of one module, runs only the test files that specify that
code (``pytest -x``, so a killed mutant stops at its first failure), records killed/survived
and restores the file, whatever happens. Run from the repository root, on a clean tree:

    .venv/bin/python scripts/mutants/run.py            # all mutants
    .venv/bin/python scripts/mutants/run.py retry- budget-   # ids starting with these
    .venv/bin/python scripts/mutants/run.py --check    # no test run: every snippet still found

``--check`` (a second or so, no pytest) says for each mutant whether its snippet occurs exactly
once in its module and its test files exist; code that moved or changed makes a mutant stale,
and it fails (exit 1) naming where the snippet is found now, if anywhere. tests/test_mutants.py
runs it, so a stale mutant fails the suite.

Light on CPU by design: one pytest process at a time, niced, no coverage. Prints one line per
mutant and a summary; exits 1 if any mutant survived that is not listed in EQUIVALENT.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PY = ROOT / ".venv" / "bin" / "python"

RETRY_TESTS = ("tests/test_retry.py", "tests/test_units.py")
LOOP_TESTS = ("tests/test_retry.py", "tests/test_client.py", "tests/hostile/test_faults.py")
PARSE_TESTS = ("tests/test_transport.py", *RETRY_TESTS)
TRANSPORT_TESTS = (
    "tests/test_transport.py",
    "tests/test_units.py",
    "tests/test_client.py",
    "tests/hostile/test_faults.py",
)
VALIDATE_TESTS = ("tests/test_validate.py", *RETRY_TESTS)
REDACT_TESTS = (
    "tests/test_redact.py",
    "tests/test_units.py",
    "tests/hostile/test_faults.py",
    "tests/hostile/test_fuzz.py",
)
CONFIG_TESTS = (
    "tests/hostile/test_config_leaks.py",
    "tests/test_urls.py",
    "tests/test_units.py",
    "tests/test_validate.py",
)
POLLING_TESTS = ("tests/test_polling.py", "tests/test_retry.py")
#: A test that a mutant hangs fails in 30 s with pytest-timeout (the dev extra), a kill; the
#: outer ``timeout 180`` is left for a hang outside any test.
HANG_LIMIT = ("--timeout", "30") if importlib.util.find_spec("pytest_timeout") else ()


@dataclass(frozen=True)
class Mutant:
    id: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


M = Mutant
MUTANTS = [
    # -- _retry.py: backoff, predicates, validation, budget (Retry-After: _transport.py) -----
    M(
        "retry-backoff-max-not-min",
        "wachat_async/_retry.py",
        "ceiling = min(max_wait,",
        "ceiling = max(max_wait,",
        RETRY_TESTS,
    ),
    M(
        "retry-backoff-exponent-off-by-one",
        "wachat_async/_retry.py",
        "2.0 ** min(retry_number, 1000)",
        "2.0 ** min(retry_number + 1, 1000)",
        RETRY_TESTS,
    ),
    M(
        "retry-backoff-no-jitter",
        "wachat_async/_retry.py",
        "return rand(0.0, ceiling) if ceiling > 0 else 0.0",
        "return ceiling",
        RETRY_TESTS,
    ),
    M(
        "retry-backoff-accepts-negative",
        "wachat_async/_retry.py",
        "if retry_number < 0:",
        "if retry_number < -1:",
        RETRY_TESTS,
    ),
    M(
        "retry-after-past-date-negative",
        "wachat_async/_transport.py",
        "return max(0.0, (when - now).total_seconds())",
        "return (when - now).total_seconds()",
        PARSE_TESTS,
    ),
    M(
        "retry-after-empty-is-zero",
        "wachat_async/_transport.py",
        "    if not value:\n        return None",
        "    if not value:\n        return 0.0",
        PARSE_TESTS,
    ),
    M(
        "retry-after-naive-date-kept-naive",
        "wachat_async/_transport.py",
        "when = when.replace(tzinfo=UTC)",
        "pass",
        PARSE_TESTS,
    ),
    M(
        "transport-fault-deadline-included",
        "wachat_async/_pacing.py",
        "return not isinstance(error, DeadlineExceededError)",
        "return True",
        RETRY_TESTS,
    ),
    M(
        "transport-fault-every-invalid-image",
        "wachat_async/_pacing.py",
        "return isinstance(error, InvalidImageError) and error.truncated",
        "return isinstance(error, InvalidImageError)",
        RETRY_TESTS,
    ),
    M(
        "transport-fault-connection-excluded",
        "wachat_async/_pacing.py",
        "    if isinstance(error, WachatConnectionError):\n"
        "        return not isinstance(error, (TLSVerificationError, ProxyAuthenticationError))",
        "    if isinstance(error, WachatConnectionError):\n        return False",
        RETRY_TESTS,
    ),
    M(
        "transport-fault-attempt-timeout-excluded",
        "wachat_async/_pacing.py",
        "return not isinstance(error, DeadlineExceededError)",
        "return False",
        RETRY_TESTS,
    ),
    M(
        "transient-no-429",
        "wachat_async/_retry.py",
        "return status == 429 or status >= 500",
        "return status >= 500",
        RETRY_TESTS,
    ),
    M(
        "transient-500-excluded",
        "wachat_async/_retry.py",
        "return status == 429 or status >= 500",
        "return status == 429 or status > 500",
        RETRY_TESTS,
    ),
    M(
        "transient-deadline-excluded",
        "wachat_async/_retry.py",
        "return isinstance(error, DeadlineExceededError) or is_transport_fault(error)",
        "return is_transport_fault(error)",
        RETRY_TESTS,
    ),
    M(
        "transient-any-exception",
        "wachat_async/_retry.py",
        '    if not isinstance(error, WachatError):\n        return False\n    status = getattr(error, "status", None)\n    if isinstance(status, int):\n        if isinstance(error, UnexpectedStatusError):',
        '    status = getattr(error, "status", None)\n    if isinstance(status, int):\n        if isinstance(error, UnexpectedStatusError):',
        RETRY_TESTS,
    ),
    M(
        "retryable-every-status",
        "wachat_async/_retry.py",
        "            return status in self.statuses",
        "            return True",
        RETRY_TESTS,
    ),
    M(
        "retryable-transport-without-switch",
        "wachat_async/_retry.py",
        "return self.retry_transport_errors and is_transport_fault(error)",
        "return is_transport_fault(error)",
        RETRY_TESTS,
    ),
    M(
        "retryable-any-exception",
        "wachat_async/_retry.py",
        "        if not isinstance(error, WachatError):\n            return False\n        status",
        "        status",
        RETRY_TESTS,
    ),
    M(
        "disabled-keeps-deadline",
        "wachat_async/_retry.py",
        "return cls(max_attempts=1, deadline=None)",
        "return cls(max_attempts=1)",
        RETRY_TESTS,
    ),
    M(
        "retry-after-ignored-flag",
        "wachat_async/_retry.py",
        "if retry_after is not None and self.respect_retry_after:",
        "if retry_after is not None:",
        RETRY_TESTS,
    ),
    M(
        "validate-zero-deadline-accepted",
        "wachat_async/_retry.py",
        '        if value == 0 and not isinstance(value, bool):\n            raise ValueError("deadline must be > 0',
        '        if value < 0 and not isinstance(value, bool):\n            raise ValueError("deadline must be > 0',
        RETRY_TESTS,
    ),
    M(
        "validate-zero-attempts-accepted",
        "wachat_async/_retry.py",
        "integer=True, minimum=1, type_error=ValueError)",
        "integer=True, minimum=0, type_error=ValueError)",
        RETRY_TESTS,
    ),
    M(
        "validate-infinite-accepted",
        "wachat_async/_validate.py",
        "and (infinite or math.isfinite(value))",
        "and (infinite or value == value)",
        VALIDATE_TESTS,
    ),
    M(
        "validate-status-600-accepted",
        "wachat_async/_retry.py",
        "not 100 <= status <= 599",
        "not 100 <= status <= 600",
        RETRY_TESTS,
    ),
    M(
        "validate-flag-any-type",
        "wachat_async/_validate.py",
        "    if not isinstance(value, bool):\n        raise TypeError",
        "    if False:\n        raise TypeError",
        ("tests/hostile/test_config_leaks.py", *VALIDATE_TESTS),
    ),
    M(
        "budget-withdraw-from-empty",
        "wachat_async/_retry.py",
        "if self.balance >= _TOKEN:",
        "if self.balance >= 0:",
        RETRY_TESTS,
    ),
    M(
        "budget-deposit-whole-token",
        "wachat_async/_retry.py",
        "return self.ratio * deposits - withdrawn",
        "return 1.0 * deposits - withdrawn",
        RETRY_TESTS,
    ),
    M(
        "budget-horizon-off-by-one",
        "wachat_async/_retry.py",
        "self.marks[0][0] <= self.end - 1 - seconds",
        "self.marks[0][0] < self.end - 1 - seconds",
        RETRY_TESTS,
    ),
    M(
        "budget-never-expires",
        "wachat_async/_retry.py",
        "self.expired = self.marks.popleft()[1:]",
        "self.marks.popleft()",
        RETRY_TESTS,
    ),
    M(
        "budget-ttl-unbounded",
        "wachat_async/_retry.py",
        "if not 1 <= value <= 60:",
        "if not 1 <= value:",
        RETRY_TESTS,
    ),
    # -- _retry.py: the retry loop (Retrier) -----------------------------------------------
    M(
        "decide-one-attempt-too-many",
        "wachat_async/_retry.py",
        "if state.attempt_number - self.free >= policy.max_attempts:",
        "if state.attempt_number - self.free > policy.max_attempts:",
        LOOP_TESTS,
    ),
    M(
        "decide-retry-after-at-cap-refused",
        "wachat_async/_retry.py",
        "(retry_after or 0) > limit",
        "(retry_after or 0) >= limit",
        LOOP_TESTS,
    ),
    M(
        "decide-sleep-to-the-deadline",
        "wachat_async/_retry.py",
        "self.started + wait >= deadline:",
        "self.started + wait > deadline:",
        LOOP_TESTS,
    ),
    M(
        "decide-no-budget",
        "wachat_async/_retry.py",
        "elif not self.paced and not (budget := retrier.budget).try_withdraw():",
        "elif False:",
        LOOP_TESTS,
    ),
    M(
        "budget-charged-when-giving-up",
        "wachat_async/_retry.py",
        "if state.attempt_number - self.free >= policy.max_attempts:\n",
        "if state.attempt_number - self.free >= policy.max_attempts and retrier.budget.try_withdraw():\n",
        LOOP_TESTS,
    ),
    M(
        "call-unretryable-enters-tenacity",
        "wachat_async/_retry.py",
        "                    if not (policy.is_retryable(exc) or paced):\n                        raise\n",
        "                    if False:\n                        raise\n",
        LOOP_TESTS,
    ),
    M(
        "deadline-loses-cause",
        "wachat_async/_retry.py",
        "raise self.deadline_exceeded(expired) from self.error",
        "raise self.deadline_exceeded(expired)",
        LOOP_TESTS,
    ),
    M(
        "queue-wait-counted-as-attempt",
        "wachat_async/_retry.py",
        "            # The attempt counted last was never sent: it was waiting for a slot or the pacer.\n            attempts -= 1\n",
        "",
        LOOP_TESTS,
    ),
    M(
        "call-no-deposit",
        "wachat_async/_retry.py",
        "started = self.budget.deposit()",
        "started = self.clock()",
        LOOP_TESTS,
    ),
    M(
        "guard-first-attempt-at-equal",
        "wachat_async/_retry.py",
        "attempt_timeout is None or attempt_timeout > policy.deadline",
        "attempt_timeout is None or attempt_timeout >= policy.deadline",
        LOOP_TESTS,
    ),
    M(
        "on-retry-not-called",
        "wachat_async/_retry.py",
        "        if policy.on_retry is not None:\n",
        "        if False:\n",
        LOOP_TESTS,
    ),
    M(
        "attempts-not-recorded",
        "wachat_async/_retry.py",
        "                exc.attempts = state.attempt_number - self.pacing  # not sent if still pacing\n",
        "",
        LOOP_TESTS,
    ),
    M(
        "wait-ignores-retry-after",
        "wachat_async/_retry.py",
        'state.attempt_number - 1, getattr(self.error, "retry_after", None)',
        "state.attempt_number - 1, None",
        LOOP_TESTS,
    ),
    # -- _transport.py: one attempt on the wire (and _errors.raise_clean) ------------------
    M(
        "sanitise-no-chain-check",
        "wachat_async/_transport.py",
        "if isinstance(exc, aiohttp.ClientResponseError) or _chain_mentions(exc, secrets):",
        "if isinstance(exc, aiohttp.ClientResponseError):",
        TRANSPORT_TESTS,
    ),
    M(
        "sanitise-only-chain-check",
        "wachat_async/_transport.py",
        "if isinstance(exc, aiohttp.ClientResponseError) or _chain_mentions(exc, secrets):",
        "if _chain_mentions(exc, secrets):",
        TRANSPORT_TESTS,
    ),
    M(
        "chain-check-skips-context",
        "wachat_async/_transport.py",
        "todo += (current.__cause__, current.__context__)",
        "todo += (current.__cause__,)",
        TRANSPORT_TESTS,
    ),
    M(
        "chain-check-skips-repr",
        "wachat_async/_transport.py",
        'text = f"{current!s}{current!r}"',
        'text = f"{current!s}"',
        TRANSPORT_TESTS,
    ),
    M(
        "transport-message-unredacted",
        "wachat_async/_transport.py",
        "text = redact(str(exc), secrets)",
        "text = str(exc)",
        TRANSPORT_TESTS,
    ),
    M(
        "transport-timeout-as-connection-error",
        "wachat_async/_transport.py",
        "    elif isinstance(exc, asyncio.TimeoutError):\n        error = WachatTimeoutError(",
        "    elif False:\n        error = WachatTimeoutError(",
        TRANSPORT_TESTS,
    ),
    M(
        "transport-cut-body-not-truncated",
        "wachat_async/_transport.py",
        "error = InvalidImageError(message, instance_name=name, truncated=True)",
        "error = InvalidImageError(message, instance_name=name, truncated=False)",
        TRANSPORT_TESTS,
    ),
    M(
        "excerpt-body-never-released",
        "wachat_async/_transport.py",
        "        finally:\n            resp.release()\n        text = raw",
        "        finally:\n            pass\n        text = raw",
        TRANSPORT_TESTS,
    ),
    M(
        "redirects-followed",
        "wachat_async/_transport.py",
        "headers=headers,\n                allow_redirects=False,",
        "headers=headers,\n                allow_redirects=True,",
        TRANSPORT_TESTS,
    ),
    M(
        "raise-clean-keeps-context",
        "wachat_async/_errors.py",
        "        exc.__context__ = None\n        raise",
        "        raise",
        ("tests/hostile/test_config_leaks.py", *TRANSPORT_TESTS),  # raised in except blocks
    ),
    M(
        "status-error-drops-retry-after",
        "wachat_async/_transport.py",
        "body=body, retry_after=retry_after)",
        "body=body, retry_after=None)",
        ("tests/test_transport.py", *LOOP_TESTS),
    ),
    # -- _redact.py ----------------------------------------------------------------------------
    M(
        "redact-no-percent-encoded-form",
        "wachat_async/_redact.py",
        '    alternatives.append("".join(f"{_PERCENT}{byte:02x}" for byte in utf8))\n',
        "",
        REDACT_TESTS,
    ),
    M(
        "redact-case-sensitive",
        "wachat_async/_redact.py",
        "return re.compile(_char_pattern(char), re.IGNORECASE)",
        "return re.compile(_char_pattern(char))",
        REDACT_TESTS,
    ),
    M(
        "redact-forms-unsorted",
        "wachat_async/_redact.py",
        "key=len, reverse=True)  # longest first",
        "key=len)  # longest first",
        REDACT_TESTS,
    ),
    M(
        "redact-no-generic",
        "wachat_async/_redact.py",
        '    return _GENERIC.sub(lambda m: m.group("prefix") + REDACTED, text)',
        "    return text",
        REDACT_TESTS,
    ),
    M(
        "redact-no-bearer",
        "wachat_async/_redact.py",
        '|bearer(?:\\s+|%20|\\+))"',
        ')"',
        REDACT_TESTS,
    ),
    M(
        "excerpt-cut-before-redact",
        "wachat_async/_redact.py",
        '    text = redact(text, secrets)\n    text = _SPACE.sub(" ", _CONTROL.sub(" ", text)).strip()\n    if len(text) > limit:\n        text = text[: limit - 1].rstrip() + "…"\n    return text',
        '    text = _SPACE.sub(" ", _CONTROL.sub(" ", text)).strip()\n    if len(text) > limit:\n        text = text[: limit - 1].rstrip() + "…"\n    return redact(text, secrets)',
        REDACT_TESTS,
    ),
    M(
        "excerpt-keeps-control-characters",
        "wachat_async/_redact.py",
        'text = _SPACE.sub(" ", _CONTROL.sub(" ", text)).strip()',
        "text = text.strip()",
        REDACT_TESTS,
    ),
    M(
        "excerpt-limit-zero-accepted",
        "wachat_async/_redact.py",
        "if limit < 1:",
        "if limit < 0:",
        REDACT_TESTS,
    ),
    M(
        "secret-repr-shows-value",
        "wachat_async/_redact.py",
        "        return repr(REDACTED)",
        "        return str.__repr__(self)",
        REDACT_TESTS,
    ),
    M(
        "message-no-url-scrub",
        "wachat_async/_redact.py",
        "    text = _URL.sub(_scrub_url, text)\n",
        "",
        CONFIG_TESTS,
    ),
    M(
        "message-keeps-control-characters",
        "wachat_async/_redact.py",
        '    return _CONTROL.sub(" ", redact(text, secrets))',
        "    return redact(text, secrets)",
        CONFIG_TESTS,
    ),
    M(
        "message-keeps-userinfo",
        "wachat_async/_redact.py",
        "    if at >= 0:\n        rest = REDACTED + rest[at:]",
        "    if False:\n        rest = REDACTED + rest[at:]",
        CONFIG_TESTS,
    ),
    M(
        "message-keeps-query",
        "wachat_async/_redact.py",
        "    if query >= 0:\n        rest = rest[: query + 1] + REDACTED",
        "    if False:\n        rest = rest[: query + 1] + REDACTED",
        CONFIG_TESTS,
    ),
    # -- configuration: _errors.py, _urls.py, _validate.py, client __init__ -----------------
    M(
        "config-error-ignores-secrets",
        "wachat_async/_errors.py",
        "super().__init__(redact_message(message, secrets))",
        "super().__init__(redact_message(message))",
        CONFIG_TESTS,
    ),
    M(
        "config-error-not-redacted",
        "wachat_async/_errors.py",
        "super().__init__(redact_message(message, secrets))",
        "super().__init__(message)",
        CONFIG_TESTS,
    ),
    M(
        "url-error-echoes-url",
        "wachat_async/_urls.py",
        'redact_message(f"{problem}; got {_where(base)} (the rest is not shown)", secrets)',
        'f"{problem}: {base}"',
        CONFIG_TESTS,
    ),
    M(
        "url-parse-error-chained",
        "wachat_async/_urls.py",
        "    try:\n        return URL(url)\n    except ValueError:\n        return None",
        "    return URL(url)",
        CONFIG_TESTS,
    ),
    M(
        "client-accepts-keyed-base-url",
        "wachat_async/_client.py",
        '        if mentions(f"{api_base} {api_base.host} {api_base.path}", secrets):',
        "        if False:",
        CONFIG_TESTS,
    ),
    M(
        "client-config-error-context-kept",
        "wachat_async/_client.py",
        '            check_bool(trust_env, "trust_env")\n        except (TypeError, ValueError) as exc:\n'
        "            raise_clean(ConfigurationError(str(exc), secrets=secrets))",
        '            check_bool(trust_env, "trust_env")\n        except (TypeError, ValueError) as exc:\n'
        "            raise ConfigurationError(str(exc), secrets=secrets) from None",
        CONFIG_TESTS,
    ),
    M(
        "client-timeout-repr-echoed",
        "wachat_async/_validate.py",
        'ClientTimeout, "\n            f"got {shown(value)}"',
        'ClientTimeout, "\n            f"got {value!r}"',
        CONFIG_TESTS,
    ),
    M(
        "client-user-agent-unchecked",
        "wachat_async/_client.py",
        "            ua = check_user_agent(user_agent)",
        "            ua = user_agent",
        CONFIG_TESTS,
    ),
    M(
        "loopback-case-sensitive",
        "wachat_async/_validate.py",
        'if host.lower() == "localhost":',
        'if host == "localhost":',
        CONFIG_TESTS,
    ),
    M(
        "loopback-localhost-subdomains",
        "wachat_async/_validate.py",
        'if host.lower() == "localhost":',
        'if host.lower() == "localhost" or host.endswith(".localhost"):',
        CONFIG_TESTS,
    ),
    M(
        "loopback-no-ipv4-mapped",
        "wachat_async/_validate.py",
        "        return address.ipv4_mapped.is_loopback",
        "        return False",
        CONFIG_TESTS,
    ),
    M(
        "loopback-unspecified-counts",
        "wachat_async/_validate.py",
        "    return address.is_loopback\n",
        "    return address.is_loopback or address.is_unspecified\n",
        CONFIG_TESTS,
    ),
    M(
        "url-builder-own-loopback-rule",
        "wachat_async/_urls.py",
        'not is_loopback_host(url.host or "")',
        'not (url.host or "").endswith("localhost")',
        CONFIG_TESTS,
    ),
    # -- _polling.py: the watch loop ------------------------------------------------------------
    M(
        "watch-raises-nothing",
        "wachat_async/_polling.py",
        "                if not is_transient(exc):\n                    raise",
        "                if False:\n                    raise",
        POLLING_TESTS,
    ),
    M(
        "watch-raises-everything",
        "wachat_async/_polling.py",
        "                if not is_transient(exc):\n                    raise",
        "                if True:\n                    raise",
        POLLING_TESTS,
    ),
    M(
        "watch-max-qrs-one-late",
        "wachat_async/_polling.py",
        "                if self.shown == self.max_qrs:",
        "                if self.shown > (self.max_qrs or 10**9):",
        POLLING_TESTS,
    ),
    M(
        "watch-linking-timeout-does-not-cancel",
        "wachat_async/_polling.py",
        "            async with asyncio.timeout(left) as scope:",
        "            async with asyncio.timeout(None) as scope:",
        POLLING_TESTS,
    ),
    M(
        "watch-yields-repeats",
        "wachat_async/_polling.py",
        "            if self.latest is None or image.sha256 != self.latest.sha256:",
        "            if True:",
        POLLING_TESTS,
    ),
    M(
        "watch-failure-count-not-reset",
        "wachat_async/_polling.py",
        "            self.failures = 0\n            if self.latest",
        "            if self.latest",
        POLLING_TESTS,
    ),
    M(
        "watch-jitter-one-sided",
        "wachat_async/_polling.py",
        "self._rand(1.0 - self._jitter, 1.0 + self._jitter)",
        "self._rand(1.0, 1.0 + self._jitter)",
        POLLING_TESTS,
    ),
    M(
        "watch-aclose-raises-cancelled",
        "wachat_async/_polling.py",
        "                raise StopAsyncIteration from None  # the round was cancelled, not the consumer\n",
        "                raise\n",
        POLLING_TESTS,
    ),
    M(
        "watch-consumer-cancel-swallowed",
        "wachat_async/_polling.py",
        "if by_aclose and task is not None and not task.cancelling():",
        "if by_aclose:",
        POLLING_TESTS,
    ),
    # -- the size cap, proxy credentials, closing (two survivors and two hangs, issue 18) ------
    M(
        "stream-cap-exclusive",
        "wachat_async/_stream.py",
        "            if self.bytes_read <= self._limit:",
        "            if self.bytes_read < self._limit:",
        ("tests/test_stream.py", "tests/test_client.py"),
    ),
    M(
        "proxy-secrets-no-token",
        "wachat_async/_network.py",
        "forms = [pair, token, self.password]",
        "forms = [pair, self.password]",
        ("tests/test_proxy.py",),
    ),
    M(
        "queue-close-wakes-nobody",
        "wachat_async/_slots.py",
        "        for _ in range(self.waiting):",
        "        for _ in range(0):",
        ("tests/test_slots.py", "tests/test_session.py"),
    ),
    M(
        "fetch-many-closed-client-per-name",
        "wachat_async/_polling.py",
        "        except ClientClosedError:\n            raise  # the client's fault, not this name's: it ends the batch (see fetch_many)\n",
        "",
        ("tests/test_polling.py", "tests/test_session.py"),
    ),
]

#: Survivors argued equivalent (id -> reason); they do not fail the run.
EQUIVALENT: dict[str, str] = {
    "decide-sleep-to-the-deadline": "elapsed + wait equal to the deadline to the last bit has "
    "probability zero on a real monotonic clock (the client takes no clock to inject); at the "
    "boundary either side is right: the deadline timer ends the call at that instant anyway",
}


def run(mutant: Mutant) -> tuple[str, float]:
    path = ROOT / mutant.path
    original = path.read_text(encoding="utf-8")
    if original.count(mutant.old) != 1:
        return f"BAD ({original.count(mutant.old)} matches)", 0.0
    started = time.monotonic()
    try:
        path.write_text(original.replace(mutant.old, mutant.new), encoding="utf-8")
        proc = subprocess.run(
            [
                "nice",
                "-n",
                "10",
                "timeout",
                "180",
                str(PY),
                "-m",
                "pytest",
                "-x",
                "-q",
                "-p",
                "no:cacheprovider",
                *HANG_LIMIT,
                *mutant.tests,
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        path.write_text(original, encoding="utf-8")
    elapsed = time.monotonic() - started
    if proc.returncode == 0:
        return "SURVIVED", elapsed
    if proc.returncode in (1, 124, -15):  # a failure, or hung (a timeout is a kill too)
        failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
        return "killed" + (f" by {failed[0][7:].split(' - ')[0]}" if failed else ""), elapsed
    return f"ERROR rc={proc.returncode}: {proc.stdout[-300:]} {proc.stderr[-300:]}", elapsed


def stale(mutant: Mutant) -> str | None:
    """Why *mutant* cannot run as written (its snippet is not found exactly once in its module,
    it changes nothing, a test file is missing), or ``None`` when it can."""
    path = ROOT / mutant.path
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    count = text.count(mutant.old)
    if count != 1:
        found = [
            f"{other.relative_to(ROOT)} ({n})"
            for other in sorted((ROOT / "wachat_async").rglob("*.py"))
            if (n := other.read_text(encoding="utf-8").count(mutant.old))
        ]
        return f"{count} matches in {mutant.path}; found in: {', '.join(found) or 'no module'}"
    if mutant.old == mutant.new:
        return "the replacement is the snippet itself"
    missing = [test for test in mutant.tests if not (ROOT / test).is_file()]
    if missing:
        return f"no such test file: {', '.join(missing)}"
    return None


def check(mutants: list[Mutant], equivalent: dict[str, str] = EQUIVALENT) -> int:
    """``--check``: report every stale mutant (and every *equivalent* entry that names no
    mutant); 0 when none is. Runs no test."""
    problems = {m.id: why for m in mutants if (why := stale(m)) is not None}
    ids = [m.id for m in mutants]
    problems.update({i: "id used twice" for i in ids if ids.count(i) > 1})
    problems.update(
        {i: "listed in EQUIVALENT but no such mutant" for i in equivalent if i not in ids}
    )
    for mutant_id, why in problems.items():
        print(f"{mutant_id:45} STALE: {why}")
    print(f"{len(mutants)} mutants: {len(mutants) - len(problems)} ready, {len(problems)} stale")
    return 1 if problems else 0


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        return check(MUTANTS)
    prefixes = tuple(argv) or ("",)
    chosen = [m for m in MUTANTS if m.id.startswith(prefixes)]
    results = {}
    for mutant in chosen:
        outcome, elapsed = run(mutant)
        results[mutant.id] = outcome
        print(f"{mutant.id:45} {outcome}  ({elapsed:.0f} s)", flush=True)
    killed = sum(o.startswith("killed") for o in results.values())
    survived = [i for i, o in results.items() if o == "SURVIVED"]
    other = [i for i, o in results.items() if not o.startswith("killed") and o != "SURVIVED"]
    print(
        f"\n{len(results)} mutants: {killed} killed, {len(survived)} survived, {len(other)} broken"
    )
    for i in survived:
        print(f"  survived: {i}" + (f" (equivalent: {EQUIVALENT[i]})" if i in EQUIVALENT else ""))
    for i in other:
        print(f"  broken: {i}: {results[i]}")
    return 1 if other or any(i not in EQUIVALENT for i in survived) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
