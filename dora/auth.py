"""Qiniu's credentials and request signatures (QBox and Qiniu).

Every scheme is an HMAC-SHA1 under the secret key, written in URL-safe base64
and paired with the access key as ``<AK>:<sign>``. They differ in what is
signed:

- **QBox** (``Authorization: QBox <AK>:<sign>``): ``<path>[?<query>]\\n``,
  plus the body for form-encoded requests.
- **Qiniu** (``Authorization: Qiniu <AK>:<sign>``): the method, path and
  query, ``Host``, ``Content-Type``, the sorted ``X-Qiniu-*`` headers, and
  the body unless it is ``application/octet-stream``.

Upload tokens, private download URLs and saveas signatures build on these
and live in :mod:`dora.tokens`.

The signing texts are byte-for-byte those of the official ``qiniu`` SDK (the
tests check both directions). Verifiers take the *raw* path and query as they
came on the wire, because that is what the client signed. Every failure is
:class:`~dora.errors.Unauthorized` (401); signatures are compared with
:func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from dora.b64 import urlsafe_b64encode
from dora.errors import BadRequest, Unauthorized

__all__ = [
    "Credentials",
    "KeyRing",
    "access_token",
    "generate_credentials",
    "qbox_authorization",
    "qbox_signing_text",
    "qiniu_authorization",
    "qiniu_signing_text",
    "sign",
    "sign_with_data",
    "verify_authorization",
    "verify_qbox",
    "verify_qiniu",
]

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
OCTET_STREAM = "application/octet-stream"
QINIU_HEADER_PREFIX = "x-qiniu-"
QINIU_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
# Qiniu's servers reject an X-Qiniu-Date more than 15 minutes off their clock.
DEFAULT_MAX_CLOCK_SKEW = 15 * 60.0

_KEY_ALPHABET = string.ascii_letters + string.digits + "-_"
_KEY_LENGTH = 40
_HEADER_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")


# --------------------------------------------------------------- credentials


@dataclass(frozen=True, slots=True)
class Credentials:
    """An access key / secret key pair. The secret never shows in ``repr``."""

    access_key: str
    secret_key: str = field(repr=False)

    def __post_init__(self) -> None:
        ak = self.access_key
        if not ak or ":" in ak or any(c.isspace() for c in ak):
            raise BadRequest("invalid access key: must be non-empty, without ':' or spaces")
        if not self.secret_key:
            raise BadRequest("invalid secret key: must be non-empty")


def generate_credentials() -> Credentials:
    """A fresh random pair: 40 URL-safe characters each, as Qiniu issues them."""

    def one() -> str:
        # A leading '-' would read as an option on a command line.
        first = secrets.choice(string.ascii_letters + string.digits)
        return first + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(_KEY_LENGTH - 1))

    return Credentials(one(), one())


class KeyRing(Mapping[str, str]):
    """An immutable mapping from access key to secret key."""

    __slots__ = ("_secrets",)

    def __init__(self, entries: Iterable[Credentials] | Mapping[str, str] = ()) -> None:
        pairs = (
            [Credentials(ak, sk) for ak, sk in entries.items()]
            if isinstance(entries, Mapping)
            else list(entries)
        )
        self._secrets: dict[str, str] = {c.access_key: c.secret_key for c in pairs}

    def secret_for(self, access_key: str) -> str | None:
        """The secret key of *access_key*, or None when it is unknown."""
        return self._secrets.get(access_key)

    def __getitem__(self, access_key: str) -> str:
        return self._secrets[access_key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._secrets)

    def __len__(self) -> int:
        return len(self._secrets)

    def __repr__(self) -> str:
        return f"KeyRing(access_keys={sorted(self._secrets)!r})"


# ------------------------------------------------------------------- signing


def sign(secret_key: str | bytes, data: bytes | str) -> str:
    """``urlsafe_b64(hmac_sha1(secret_key, data))``."""
    key = secret_key.encode() if isinstance(secret_key, str) else secret_key
    payload = data.encode() if isinstance(data, str) else data
    return urlsafe_b64encode(hmac.new(key, payload, hashlib.sha1).digest())


def access_token(creds: Credentials, data: bytes | str) -> str:
    """``<AK>:<sign of data>``, the SDK's ``Auth.token``."""
    return f"{creds.access_key}:{sign(creds.secret_key, data)}"


def sign_with_data(creds: Credentials, data: bytes | str) -> str:
    """``<AK>:<sign of encoded>:<encoded>`` with encoded = urlsafe_b64(data)."""
    encoded = urlsafe_b64encode(data)
    return f"{creds.access_key}:{sign(creds.secret_key, encoded)}:{encoded}"


def split_credential(text: str, what: str) -> tuple[str, str]:
    """Split ``<AK>:<sign>``; neither half may be empty or hold another ':'."""
    ak, sep, sig = text.partition(":")
    if not sep or not ak or not sig or ":" in sig:
        raise Unauthorized(f"malformed {what}: want <AccessKey>:<Sign>")
    return ak, sig


def check_signature(keyring: KeyRing, ak: str, signed: bytes | str, given_sig: str) -> str:
    """Raise Unauthorized unless *given_sig* is AK's signature of *signed*."""
    secret = keyring.secret_for(ak)
    if secret is None:
        raise Unauthorized("unknown access key")
    expected = sign(secret, signed).encode()
    if not hmac.compare_digest(expected, given_sig.encode("utf-8", "replace")):
        raise Unauthorized("bad token: signature mismatch")
    return ak


# -------------------------------------------------------- QBox request auth


def qbox_signing_text(path_and_query: str, body: bytes | None, content_type: str | None) -> bytes:
    """``<path>[?<query>]\\n``, then the body when it is form-encoded."""
    text = path_and_query.encode() + b"\n"
    if body and content_type == FORM_CONTENT_TYPE:
        text += body
    return text


def qbox_authorization(
    creds: Credentials, path_and_query: str, body: bytes | None, content_type: str | None
) -> str:
    """The ``Authorization`` header value ``QBox <AK>:<sign>`` for a request."""
    return "QBox " + access_token(creds, qbox_signing_text(path_and_query, body, content_type))


def verify_qbox(
    header_value: str,
    path_and_query: str,
    body: bytes | None,
    content_type: str | None,
    keyring: KeyRing,
) -> str:
    """Check a ``QBox <AK>:<sign>`` header; return the access key."""
    scheme, _, credential = header_value.partition(" ")
    if scheme != "QBox":
        raise Unauthorized("malformed Authorization header: want 'QBox <AccessKey>:<Sign>'")
    ak, sig = split_credential(credential.strip(), "Authorization header")
    return check_signature(keyring, ak, qbox_signing_text(path_and_query, body, content_type), sig)


# ------------------------------------------------------ Qiniu request auth


def _canonical_header_key(name: str) -> str:
    """Go's ``CanonicalMIMEHeaderKey`` (``x-qiniu-foo`` → ``X-Qiniu-Foo``)."""
    if not name or any(c not in _HEADER_TOKEN_CHARS for c in name):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def _qiniu_headers(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """The ``X-Qiniu-*`` headers, canonical names, first value of each, sorted."""
    found: dict[str, str] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered.startswith(QINIU_HEADER_PREFIX) and len(lowered) > len(QINIU_HEADER_PREFIX):
            found.setdefault(_canonical_header_key(name), value)
    return sorted(found.items())


def qiniu_signing_text(  # noqa: PLR0917 - the positional order mirrors the signed text
    method: str,
    path_and_query: str,
    host: str,
    content_type: str | None,
    qiniu_headers: Mapping[str, str],
    body: bytes | None,
) -> bytes:
    """The text a ``Qiniu`` (v2) signature covers, as the SDK builds it::

        <METHOD> <path>[?<query>]
        Host: <host>
        [Content-Type: <ct>]
        [X-Qiniu-*: <value>, sorted]

        [<body> unless absent or application/octet-stream]

    *qiniu_headers* may hold every request header; only ``X-Qiniu-*`` count.
    """
    lines = [f"{method} {path_and_query}", f"Host: {host}"]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    lines.extend(f"{name}: {value}" for name, value in _qiniu_headers(qiniu_headers))
    text = ("\n".join(lines) + "\n\n").encode()
    if content_type and content_type != OCTET_STREAM and body:
        text += body
    return text


def qiniu_authorization(  # noqa: PLR0917 - the positional order mirrors the signed text
    creds: Credentials,
    method: str,
    path_and_query: str,
    host: str,
    content_type: str | None,
    headers: Mapping[str, str],
    body: bytes | None,
) -> str:
    """The ``Authorization`` header value ``Qiniu <AK>:<sign>`` for a request."""
    text = qiniu_signing_text(method, path_and_query, host, content_type, headers, body)
    return "Qiniu " + access_token(creds, text)


def _check_qiniu_date(headers: Mapping[str, str], now: float, max_skew: float) -> None:
    """A signed X-Qiniu-Date bounds how long a captured request can be replayed."""
    value = next((v for k, v in headers.items() if k.lower() == "x-qiniu-date"), None)
    if value is None:
        return
    try:
        stamp = datetime.strptime(value, QINIU_DATE_FORMAT).replace(tzinfo=UTC).timestamp()
    except ValueError as exc:
        raise Unauthorized("malformed X-Qiniu-Date: want YYYYMMDDTHHMMSSZ") from exc
    if abs(now - stamp) > max_skew:
        raise Unauthorized("X-Qiniu-Date is too far from the server's clock")


def verify_qiniu(  # noqa: PLR0917 - the positional order mirrors the signed text
    header_value: str,
    method: str,
    path_and_query: str,
    host: str,
    content_type: str | None,
    headers: Mapping[str, str],
    body: bytes | None,
    keyring: KeyRing,
    *,
    now: float | None = None,
    max_clock_skew: float | None = DEFAULT_MAX_CLOCK_SKEW,
) -> str:
    """Check a ``Qiniu <AK>:<sign>`` header; return the access key.

    When the request carries ``X-Qiniu-Date`` (the SDKs add it by default) it
    must lie within *max_clock_skew* seconds of *now*; None disables the check.
    """
    scheme, _, credential = header_value.partition(" ")
    if scheme != "Qiniu":
        raise Unauthorized("malformed Authorization header: want 'Qiniu <AccessKey>:<Sign>'")
    ak, sig = split_credential(credential.strip(), "Authorization header")
    text = qiniu_signing_text(method, path_and_query, host, content_type, headers, body)
    check_signature(keyring, ak, text, sig)
    if max_clock_skew is not None:
        _check_qiniu_date(headers, time.time() if now is None else now, max_clock_skew)
    return ak


def verify_authorization(  # noqa: PLR0917 - the positional order mirrors the signed text
    header_value: str | None,
    method: str,
    path_and_query: str,
    host: str,
    content_type: str | None,
    headers: Mapping[str, str],
    body: bytes | None,
    keyring: KeyRing,
    *,
    now: float | None = None,
) -> str:
    """Check a request's ``Authorization`` header in either scheme; return the AK."""
    if not header_value:
        raise Unauthorized("missing Authorization header")
    if header_value.startswith("QBox "):
        return verify_qbox(header_value, path_and_query, body, content_type, keyring)
    if header_value.startswith("Qiniu "):
        return verify_qiniu(
            header_value,
            method,
            path_and_query,
            host,
            content_type,
            headers,
            body,
            keyring,
            now=now,
        )
    raise Unauthorized("unsupported Authorization scheme: want 'QBox' or 'Qiniu'")
