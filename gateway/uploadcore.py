"""What every upload API shares: a put policy's rules, from the key to the answer.

The form upload (:mod:`dora.gateway.upload`) and the resumable uploads
(:mod:`dora.gateway.resumable_v1`, :mod:`dora.gateway.resumable_v2`) differ
only in how the bytes arrive. Once a token is verified they ask the same
questions, answered here by :class:`UploadIntent`:

- the key: the one the client named, else the policy's ``saveKey`` (magic
  variables expanded), else the content's hash; a forced ``saveKey`` wins;
  a ``bucket:key`` scope must be named; a key outside the scope is 403
  ``key doesn't match with scope``;
- overwrite or add: ``bucket:key`` scopes overwrite; bucket scopes, prefix
  scopes and ``insertOnly`` only add (614 ``file exists``, unless the very
  same content is there already, which succeeds: :func:`store_upload`);
- the size limit (``Limits.max_upload_bytes`` and ``fsizeLimit``, 413) and
  ``mimeLimit`` (403);
- the answer: ``{"hash", "key"}`` (+ what the after-upload hook adds, such
  as ``persistentId``) or the policy's ``returnBody`` expanded
  (:func:`finish_upload`).

:func:`store_assembled` runs the whole tail for content that is already on
this host and can be read more than once (the parts of a resumable upload).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from dora.config import Settings
from dora.errors import BadRequest, FileExists, Forbidden, NotFound, PayloadTooLarge, Unauthorized
from dora.etag import EtagHasher
from dora.gateway.context import GatewayContext, UploadedObject
from dora.gateway.errors import request_id
from dora.gateway.magic import (
    CONTENT_VARIABLES,
    Value,
    clock_variables,
    expand_return_body,
    expand_save_key,
    split_fname,
    template_variables,
)
from dora.mime import OCTET_STREAM, SNIFF_BYTES, sniff_mime
from dora.storage.base import ObjectMeta
from dora.tokens import UploadPolicy, verify_upload_token

__all__ = [
    "Assembled",
    "UploadIntent",
    "answer",
    "finish_upload",
    "hash_stream",
    "int_param",
    "mime_allowed",
    "policy_from_header",
    "store_assembled",
    "store_upload",
    "upload_limit",
]

# Opens the content from its start, as many times as needed.
Opener = Callable[[], AsyncGenerator[bytes, None]]


def mime_allowed(mime: str, limit: str) -> bool:
    """Qiniu's ``mimeLimit``: ``image/*;video/mp4`` allows, ``!image/*`` forbids."""
    deny = limit.startswith("!")
    patterns = [p.strip().lower() for p in limit.lstrip("!").split(";") if p.strip()]
    mime = mime.split(";", 1)[0].strip().lower()
    hit = any(
        mime == p or (p.endswith("/*") and mime.startswith(p[:-1])) or p == "*/*" for p in patterns
    )
    return not hit if deny else hit


async def policy_from_header(
    request: web.Request, ctx: GatewayContext, *, vet: bool = True
) -> UploadPolicy:
    """Verify ``Authorization: UpToken <token>`` (401 otherwise) and, with
    ``vet``, run the before-upload hook on its policy (``persistentOps``)."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme != "UpToken" or not token.strip():
        raise Unauthorized("token not specified: want Authorization: UpToken <upload token>")
    policy = verify_upload_token(token.strip(), ctx.keyring)
    if vet and ctx.before_upload is not None:
        await ctx.before_upload(policy)
    return policy


def int_param(text: str, name: str, low: int, high: int) -> int:
    """A decimal integer from a path or query, in ``low..high`` (400 otherwise)."""
    if not (text.isascii() and text.isdigit() and len(text) <= 19) or not low <= int(text) <= high:
        raise BadRequest(f"{name} must be an integer in {low}..{high}, got {text[:32]!r}")
    return int(text)


def upload_limit(settings: Settings, policy: UploadPolicy) -> int:
    """The largest file a policy may upload: ``max_upload_bytes`` and ``fsizeLimit``."""
    limit = settings.limits.max_upload_bytes
    if policy.fsize_limit:
        limit = min(limit, policy.fsize_limit)
    return limit


@dataclasses.dataclass(frozen=True, slots=True)
class UploadIntent:
    """What the client asks to be stored, under a verified policy."""

    ctx: GatewayContext
    policy: UploadPolicy
    requested_key: str | None  # the key the client named, if any
    fname: str  # the original file name ("" if not given)
    custom_vars: Mapping[str, str]  # the x:<name> variables
    declared_mime: str | None  # the MIME type the client declared, as given
    now: float = dataclasses.field(default_factory=time.time)

    def variables(
        self, meta: ObjectMeta | None, *, etag: str | None = None, fsize: int | None = None
    ) -> dict[str, Value]:
        """The magic variables, with what is known so far about the content."""
        fprefix, ext = split_fname(self.fname)
        values: dict[str, Value] = {
            "bucket": self.policy.bucket,
            "fname": self.fname,
            "fprefix": fprefix,
            "ext": ext,
            "endUser": self.policy.end_user,
            **clock_variables(self.now),
            **self.custom_vars,
        }
        if etag is not None:
            values.update(etag=etag, hash=etag)
        if fsize is not None:
            values["fsize"] = fsize
        if meta is not None:
            values.update(key=meta.key, etag=meta.hash, hash=meta.hash, fsize=meta.size,
                          mimeType=meta.mime)  # fmt: skip
        return values

    @property
    def content_mime(self) -> str | None:
        """The declared MIME type to store, unless the policy wants detection
        or the client declared nothing useful (then the content decides)."""
        if self.policy.raw.get("detectMime"):
            return None
        declared = (self.declared_mime or "").strip()
        return declared if declared and declared.lower() != OCTET_STREAM else None

    def _forced_save_key(self) -> bool:
        return bool(self.policy.raw.get("forceSaveKey")) and self.policy.save_key is not None

    def _key_from_client(self) -> str | None:
        """The client's key when it decides (a forced saveKey overrides it)."""
        return None if self._forced_save_key() else self.requested_key

    def _must_name_scope_key(self) -> bool:
        """Qiniu: with a ``bucket:key`` token the client must name that key."""
        p = self.policy
        return (
            p.key is not None
            and not p.is_prefix_scope
            and not self._forced_save_key()
            and self.requested_key is None
        )

    def needs_content_for_key(self) -> bool:
        """Whether the key can be known only after the whole content is read."""
        if self._key_from_client() is not None or self._must_name_scope_key():
            return False
        if self.policy.save_key is None:
            return True  # the hash is the key
        return bool(template_variables(self.policy.save_key) & CONTENT_VARIABLES)

    def precheck_key(self) -> None:
        """Refuse early (403) a key the scope cannot allow, before any data."""
        if self._must_name_scope_key():
            raise Forbidden("key doesn't match with scope")
        key = self._key_from_client()
        if key is not None and not self.policy.allows_key(key):
            raise Forbidden("key doesn't match with scope")

    def resolve_key(self, *, etag: str | None = None, fsize: int | None = None) -> str:
        """The key to store under, checked against the token's scope.

        ``etag`` (and ``fsize``) are the content's, needed when
        :meth:`needs_content_for_key`.
        """
        if self._must_name_scope_key():
            raise Forbidden("key doesn't match with scope")
        key = self._key_from_client()
        if key is None:
            if self.policy.save_key is not None:
                key = expand_save_key(
                    self.policy.save_key, self.variables(None, etag=etag, fsize=fsize)
                )
            else:
                if etag is None:
                    raise RuntimeError("the key is the content's hash: resolve it with the etag")
                key = etag
        if not self.policy.allows_key(key):
            raise Forbidden("key doesn't match with scope")
        return key

    @property
    def insert_only(self) -> bool:
        p = self.policy
        return p.insert_only or p.key is None or p.is_prefix_scope

    @property
    def limit(self) -> int:
        """The largest content this upload may store."""
        return upload_limit(self.ctx.settings, self.policy)

    def check_size(self, size: int) -> None:
        if size > self.limit:
            raise PayloadTooLarge(f"file is larger than the limit of {self.limit} bytes")

    def check_mime(self, mime: str) -> None:
        """``mimeLimit`` refusals are 403."""
        limit = self.policy.mime_limit
        if limit and not mime_allowed(mime, limit):
            raise Forbidden(f"mimeType {mime!r} is not allowed by the upload policy")


async def store_upload(
    intent: UploadIntent,
    key: str,
    data: AsyncIterator[bytes],
    mime: str | None,
    content_etag: Callable[[], Awaitable[str]],
) -> ObjectMeta:
    """Put the object (``mime`` None: the store sniffs it), adding only when
    the policy says so. ``content_etag`` gives the content's hash, wanted only
    when the key exists already (same content there: success)."""
    store = intent.ctx.store
    bucket = intent.policy.bucket
    try:
        return await store.put(bucket, key, data, mime=mime, overwrite=not intent.insert_only,
                               max_bytes=intent.limit)  # fmt: skip
    except FileExists:
        etag = await content_etag()
        try:
            existing = await store.stat(bucket, key)
        except NotFound:
            raise FileExists("file exists") from None
        if existing.hash != etag:
            raise FileExists("file exists") from None
        return existing


def answer(intent: UploadIntent, meta: ObjectMeta, extra: Mapping[str, Any] | None) -> web.Response:
    """Qiniu's answer to a stored upload: ``returnBody`` or ``{"hash", "key"}``."""
    headers = {"Cache-Control": "no-store"}
    if intent.policy.return_body:
        variables = intent.variables(meta)
        persistent_id = (extra or {}).get("persistentId")
        variables["persistentId"] = None if persistent_id is None else str(persistent_id)
        body = expand_return_body(intent.policy.return_body, variables)
    else:
        body = json.dumps({"hash": meta.hash, "key": meta.key, **(extra or {})}, ensure_ascii=False)
    return web.Response(text=body, content_type="application/json", headers=headers)


async def finish_upload(
    request: web.Request, intent: UploadIntent, meta: ObjectMeta
) -> web.Response:
    """Run the after-upload hook (``persistentOps``) and answer."""
    extra = None
    hook = intent.ctx.after_upload
    if hook is not None:
        # Shielded: the object is stored, so its follow-up (a job) must not
        # be lost to a client hanging up now.
        uploaded = UploadedObject(
            meta, intent.policy, intent.custom_vars, intent.fname, request_id(request)
        )
        extra = await asyncio.shield(hook(uploaded))
    return answer(intent, meta, extra)


async def hash_stream(chunks: AsyncIterator[bytes]) -> str:
    """The Qiniu etag of a stream, hashed in a thread chunk by chunk."""
    hasher = EtagHasher()
    async for chunk in chunks:
        await asyncio.to_thread(hasher.update, chunk)
    return hasher.digest()


async def _read_head(chunks: AsyncGenerator[bytes, None], size: int) -> bytes:
    head = bytearray()
    try:
        async for chunk in chunks:
            head += chunk
            if len(head) >= size:
                break
    finally:
        await chunks.aclose()
    return bytes(head[:size])


@dataclasses.dataclass(frozen=True, slots=True)
class Assembled:
    """Content already on this host, readable from the start more than once."""

    size: int
    open: Opener


async def store_assembled(intent: UploadIntent, content: Assembled) -> ObjectMeta:
    """Store assembled content under the intent's rules; the stored object."""
    intent.check_size(content.size)
    etag: str | None = None
    if intent.needs_content_for_key():
        etag = await hash_stream(content.open())
    key = intent.resolve_key(etag=etag, fsize=content.size)
    mime = intent.content_mime
    if mime is None and intent.policy.mime_limit:
        head = await _read_head(content.open(), SNIFF_BYTES)
        mime = sniff_mime(head, intent.requested_key or intent.fname)
    if mime is not None:
        intent.check_mime(mime)

    async def content_etag() -> str:
        return etag if etag is not None else await hash_stream(content.open())

    return await store_upload(intent, key, content.open(), mime, content_etag)
