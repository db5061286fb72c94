"""Qiniu's signature schemes: request auth, upload tokens, signed URLs.

Every scheme is an HMAC-SHA1 under the secret key, written in URL-safe base64
and paired with the access key as ``<AK>:<sign>``. They differ in what is
signed:

- **QBox** (``Authorization: QBox <AK>:<sign>``): ``<path>[?<query>]\\n``,
  plus the body for form-encoded requests.
- **Qiniu** (``Authorization: Qiniu <AK>:<sign>``): the method, path and
  query, ``Host``, ``Content-Type``, the sorted ``X-Qiniu-*`` headers, and
  the body unless it is ``application/octet-stream``.
- **Upload token** ``<AK>:<sign>:<b64 policy>``: the encoded policy JSON.
- **Private download URL** ``<url>?e=<deadline>&token=<AK>:<sign>``: the URL
  up to and including ``e=``.
- **Synchronous saveas** ``...|saveas/<entry>/sign/<AK>:<sign>``:
  ``<host><path>?<query up to saveas/<entry>>``, without the scheme.

The signing texts are byte-for-byte those of the official ``qiniu`` SDK (the
tests check both directions). Verifiers take the *raw* path and query as they
came on the wire, because that is what the client signed. Every failure is
:class:`~dora.errors.Unauthorized` (401); signatures are compared with
:func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import string
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from dora.b64 import urlsafe_b64decode, urlsafe_b64encode
from dora.errors import BadRequest, Unauthorized

__all__ = [
    "Credentials",
    "KeyRing",
    "UploadPolicy",
    "access_token",
    "generate_credentials",
    "make_upload_token",
    "qbox_authorization",
    "qbox_signing_text",
    "qiniu_authorization",
    "qiniu_signing_text",
    "sign",
    "sign_download_url",
    "sign_saveas_url",
    "sign_with_data",
    "verify_authorization",
    "verify_download_url",
    "verify_qbox",
    "verify_qiniu",
    "verify_saveas_sign",
    "verify_upload_token",
]

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
OCTET_STREAM = "application/octet-stream"
QINIU_HEADER_PREFIX = "x-qiniu-"
QINIU_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
# Qiniu's servers reject an X-Qiniu-Date more than 15 minutes off their clock.
DEFAULT_MAX_CLOCK_SKEW = 15 * 60.0
# No legitimate token comes near this; refusing early bounds the work done.
MAX_TOKEN_LENGTH = 64 * 1024

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


def _split_credential(text: str, what: str) -> tuple[str, str]:
    """Split ``<AK>:<sign>``; neither half may be empty or hold another ':'."""
    ak, sep, sig = text.partition(":")
    if not sep or not ak or not sig or ":" in sig:
        raise Unauthorized(f"malformed {what}: want <AccessKey>:<Sign>")
    return ak, sig


def _check(keyring: KeyRing, ak: str, signed: bytes | str, given_sig: str) -> str:
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
    ak, sig = _split_credential(credential.strip(), "Authorization header")
    return _check(keyring, ak, qbox_signing_text(path_and_query, body, content_type), sig)


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
    ak, sig = _split_credential(credential.strip(), "Authorization header")
    text = qiniu_signing_text(method, path_and_query, host, content_type, headers, body)
    _check(keyring, ak, text, sig)
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


# ------------------------------------------------------------ upload tokens


@dataclass(frozen=True, slots=True)
class UploadPolicy:
    """A verified upload token's put policy (Qiniu's field names in comments)."""

    access_key: str
    scope: str
    bucket: str
    key: str | None  # the part of scope after the first ':', None for a bucket scope
    is_prefix_scope: bool  # isPrefixalScope: the scope key is a prefix
    deadline: int
    insert_only: bool  # insertOnly: never overwrite an existing key
    return_body: str | None
    return_url: str | None
    callback_url: str | None
    callback_body: str | None
    persistent_ops: str | None
    persistent_notify_url: str | None
    persistent_pipeline: str | None
    fsize_limit: int | None
    mime_limit: str | None
    save_key: str | None
    end_user: str | None
    raw: dict[str, Any] = field(hash=False, repr=False)

    def allows_key(self, key: str) -> bool:
        """Whether an upload may store under *key* with this policy."""
        if self.key is None:
            return True
        if self.is_prefix_scope:
            return key.startswith(self.key)
        return key == self.key


def make_upload_token(creds: Credentials, policy: Mapping[str, Any]) -> str:
    """``<AK>:<sign>:<b64 policy JSON>``, the JSON written as the SDK writes it."""
    return sign_with_data(creds, json.dumps(dict(policy), separators=(",", ":")))


def _opt_str(raw: Mapping[str, Any], name: str) -> str | None:
    value = raw.get(name)
    if value is None or isinstance(value, str):
        return value
    raise Unauthorized(f"bad token: policy field {name!r} must be a string")


def _opt_int(raw: Mapping[str, Any], name: str) -> int | None:
    value = raw.get(name)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise Unauthorized(f"bad token: policy field {name!r} must be an integer")


def verify_upload_token(token: str, keyring: KeyRing, now: float | None = None) -> UploadPolicy:
    """Check an upload token's signature and deadline; return its policy."""
    if not token:
        raise Unauthorized("missing upload token")
    if len(token) > MAX_TOKEN_LENGTH:
        raise Unauthorized("bad token: too long")
    parts = token.strip().split(":")
    if len(parts) != 3 or not all(parts):
        raise Unauthorized("bad token: want <AccessKey>:<Sign>:<EncodedPutPolicy>")
    ak, sig, encoded = parts
    # The signature covers the encoded text, so nothing is parsed before it holds.
    _check(keyring, ak, encoded, sig)
    try:
        raw = json.loads(urlsafe_b64decode(encoded))
    except (BadRequest, ValueError) as exc:
        raise Unauthorized("bad token: the put policy is not base64 JSON") from exc
    if not isinstance(raw, dict):
        raise Unauthorized("bad token: the put policy is not a JSON object")
    scope = raw.get("scope")
    if not isinstance(scope, str) or not scope or scope.startswith(":"):
        raise Unauthorized("bad token: policy needs a scope 'bucket' or 'bucket:key'")
    deadline = _opt_int(raw, "deadline")
    if deadline is None:
        raise Unauthorized("bad token: policy needs a deadline")
    if (time.time() if now is None else now) > deadline:
        raise Unauthorized("expired token")
    bucket, sep, key = scope.partition(":")
    fsize_limit = _opt_int(raw, "fsizeLimit")
    if fsize_limit is not None and fsize_limit < 0:
        raise Unauthorized("bad token: policy field 'fsizeLimit' must not be negative")
    return UploadPolicy(
        access_key=ak,
        scope=scope,
        bucket=bucket,
        key=key if sep else None,
        is_prefix_scope=_opt_int(raw, "isPrefixalScope") == 1,
        deadline=deadline,
        insert_only=bool(_opt_int(raw, "insertOnly")),
        return_body=_opt_str(raw, "returnBody"),
        return_url=_opt_str(raw, "returnUrl"),
        callback_url=_opt_str(raw, "callbackUrl"),
        callback_body=_opt_str(raw, "callbackBody"),
        persistent_ops=_opt_str(raw, "persistentOps"),
        persistent_notify_url=_opt_str(raw, "persistentNotifyUrl"),
        persistent_pipeline=_opt_str(raw, "persistentPipeline"),
        fsize_limit=fsize_limit,
        mime_limit=_opt_str(raw, "mimeLimit"),
        save_key=_opt_str(raw, "saveKey"),
        end_user=_opt_str(raw, "endUser"),
        raw=raw,
    )


# ---------------------------------------------------- private download URLs

_DEADLINE_AT_END = re.compile(r"[?&]e=(\d{1,12})\Z")


def sign_download_url(creds: Credentials, url: str, deadline: int) -> str:
    """``<url>?e=<deadline>&token=<AK>:<sign>`` (``&e=`` when url has a query)."""
    url_with_e = f"{url}{'&' if '?' in url else '?'}e={int(deadline)}"
    return f"{url_with_e}&token={access_token(creds, url_with_e)}"


def verify_download_url(full_url: str, keyring: KeyRing, now: float | None = None) -> str:
    """Check a signed download URL (scheme, host, path and query as the client
    signed them); return the access key.

    ``token`` must be the last query parameter and ``e`` the one before it.
    """
    if len(full_url) > MAX_TOKEN_LENGTH:
        raise Unauthorized("bad token: URL too long")
    cut = full_url.rfind("&token=")
    if cut < 0:
        raise Unauthorized("missing download token")
    token = full_url[cut + len("&token=") :]
    if "&" in token:
        raise Unauthorized("bad token: token must be the last query parameter")
    ak, sig = _split_credential(unquote(token), "download token")
    url_with_e = full_url[:cut]
    # Only the tail can hold "&e=<12 digits>"; looking there keeps the scan short.
    found = _DEADLINE_AT_END.search(url_with_e[-16:])
    if found is None:
        raise Unauthorized("bad token: want e=<deadline> right before token")
    _check(keyring, ak, url_with_e, sig)
    if (time.time() if now is None else now) > int(found.group(1)):
        raise Unauthorized("expired token")
    return ak


# ------------------------------------------------------- synchronous saveas

# saveas/<entry>/sign/<AK>:<sign>, ending the query or followed by '&'.
_SAVEAS_SIGN = re.compile(r"saveas/[A-Za-z0-9_=%-]+(/sign/([^/:&|]+):([A-Za-z0-9_=%-]+))(?=&|$)")


def sign_saveas_url(creds: Credentials, host: str, path: str, query: str) -> str:
    """*query* (ending in ``saveas/<entry>``) with ``/sign/<AK>:<sign>`` appended."""
    return f"{query}/sign/{access_token(creds, f'{host}{path}?{query}')}"


def verify_saveas_sign(host: str, path: str, query: str, keyring: KeyRing) -> None:
    """Check the ``/sign/<AK>:<sign>`` after a synchronous ``saveas/<entry>``.

    The signed text is ``<host><path>?<query up to saveas/<entry>>``, no scheme.
    """
    matches = list(_SAVEAS_SIGN.finditer(query))
    if not matches:
        raise Unauthorized("saveas needs a signature: append /sign/<AccessKey>:<Sign>")
    last = matches[-1]
    ak, sig = unquote(last.group(2)), unquote(last.group(3))
    _check(keyring, ak, f"{host}{path}?{query[: last.start(1)]}", sig)
