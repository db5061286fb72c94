"""Qiniu's tokens: upload tokens, private download URLs and saveas signatures.

They build on the HMAC-SHA1 signing of :mod:`dora.auth` (``<AK>:<sign>``,
the sign a URL-safe base64 HMAC-SHA1 under the secret key) and differ in
what is signed:

- **Upload token** ``<AK>:<sign>:<b64 policy>``: the encoded policy JSON.
- **Private download URL** ``<url>?e=<deadline>&token=<AK>:<sign>``: the URL
  up to and including ``e=``.
- **Synchronous saveas** ``...|saveas/<entry>/sign/<AK>:<sign>``:
  ``<host><path>?<query up to saveas/<entry>>``, without the scheme.

The signing texts are byte-for-byte those of the official ``qiniu`` SDK.
Verifiers take the URL, path and query as they came on the wire, because
that is what the client signed. Every failure is
:class:`~dora.errors.Unauthorized` (401).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from dora.auth import (
    Credentials,
    KeyRing,
    access_token,
    check_signature,
    sign_with_data,
    split_credential,
)
from dora.b64 import urlsafe_b64decode
from dora.errors import BadRequest, Unauthorized

__all__ = [
    "MAX_TOKEN_LENGTH",
    "UploadPolicy",
    "make_upload_token",
    "sign_download_url",
    "sign_saveas_url",
    "verify_download_url",
    "verify_saveas_sign",
    "verify_upload_token",
]

# No legitimate token comes near this; refusing early bounds the work done.
MAX_TOKEN_LENGTH = 64 * 1024


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
    check_signature(keyring, ak, encoded, sig)
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
    ak, sig = split_credential(unquote(token), "download token")
    url_with_e = full_url[:cut]
    # Only the tail can hold "&e=<12 digits>"; looking there keeps the scan short.
    found = _DEADLINE_AT_END.search(url_with_e[-16:])
    if found is None:
        raise Unauthorized("bad token: want e=<deadline> right before token")
    check_signature(keyring, ak, url_with_e, sig)
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
    check_signature(keyring, ak, f"{host}{path}?{query[: last.start(1)]}", sig)
