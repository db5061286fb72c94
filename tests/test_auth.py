"""Qiniu's signature schemes, checked both ways against the official qiniu SDK."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
import qiniu
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from qiniu.auth import QiniuMacRequestsAuth, RequestsAuth

from dora.auth import (
    Credentials,
    KeyRing,
    access_token,
    generate_credentials,
    qbox_authorization,
    qbox_signing_text,
    qiniu_authorization,
    qiniu_signing_text,
    sign,
    sign_with_data,
    verify_authorization,
    verify_qbox,
    verify_qiniu,
)
from dora.b64 import encode_entry, urlsafe_b64encode
from dora.errors import BadRequest, Unauthorized
from dora.tokens import (
    UploadPolicy,
    make_upload_token,
    sign_download_url,
    sign_saveas_url,
    verify_download_url,
    verify_saveas_sign,
    verify_upload_token,
)

CREDS = Credentials("MY_ACCESS_KEY", "MY_SECRET_KEY")
OTHER = Credentials("OTHER_ACCESS_KEY", "OTHER_SECRET_KEY")
RING = KeyRing([CREDS])
SDK = qiniu.Auth(CREDS.access_key, CREDS.secret_key)
SDK_MAC = qiniu.QiniuMacAuth(CREDS.access_key, CREDS.secret_key)
FORM = "application/x-www-form-urlencoded"


def path_and_query(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def on_the_wire(
    prepared: requests.PreparedRequest,
) -> tuple[str, str, str, dict[str, str], bytes | None]:
    """What a server sees of a prepared request: Authorization, raw path and
    query, Content-Type, headers (as text) and body (as bytes)."""
    headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in prepared.headers.items()}
    body = prepared.body
    assert body is None or isinstance(body, str | bytes)
    raw_body = body.encode() if isinstance(body, str) else body
    path = prepared.path_url
    return headers["Authorization"], path, headers["Content-Type"], headers, raw_body


# ------------------------------------------------------------ keys, signing


def test_api_md_vector() -> None:
    text = qbox_signing_text(
        "/move/bmV3ZG9jczpmaW5kX21hbi50eHQ=/bmV3ZG9jczpmaW5kLm1hbi50eHQ=", None, None
    )
    assert text == b"/move/bmV3ZG9jczpmaW5kX21hbi50eHQ=/bmV3ZG9jczpmaW5kLm1hbi50eHQ=\n"
    assert sign("MY_SECRET_KEY", text) == "FXsYh0wKHYPEsIAgdPD9OfjkeEM="
    assert access_token(CREDS, text) == "MY_ACCESS_KEY:FXsYh0wKHYPEsIAgdPD9OfjkeEM="


def test_sign_helpers_match_the_sdk() -> None:
    assert access_token(CREDS, "some data") == SDK.token("some data")
    assert sign_with_data(CREDS, '{"a":1}') == SDK.token_with_data('{"a":1}')
    assert sign(b"MY_SECRET_KEY", b"x") == sign("MY_SECRET_KEY", "x")


def test_credentials_hide_the_secret_and_validate() -> None:
    assert "MY_SECRET_KEY" not in repr(CREDS)
    for bad_ak in ("", "a:b", "a b"):
        with pytest.raises(BadRequest):
            Credentials(bad_ak, "sk")
    with pytest.raises(BadRequest):
        Credentials("ak", "")


def test_generate_credentials() -> None:
    pairs = [generate_credentials() for _ in range(20)]
    alphabet = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
    for creds in pairs:
        for key in (creds.access_key, creds.secret_key):
            assert len(key) == 40
            assert set(key) <= alphabet
            assert key[0] != "-"
    assert len({c.access_key for c in pairs} | {c.secret_key for c in pairs}) == 40


def test_keyring_is_an_immutable_mapping() -> None:
    ring = KeyRing({"ak1": "sk1", "ak2": "sk2"})
    assert ring.secret_for("ak1") == "sk1"
    assert ring.secret_for("nope") is None
    assert dict(ring) == {"ak1": "sk1", "ak2": "sk2"}
    assert len(KeyRing()) == 0
    assert "sk1" not in repr(ring)
    with pytest.raises(TypeError):
        ring["ak3"] = "sk3"  # type: ignore[index]


# ------------------------------------------------------------------- QBox


def test_qbox_sdk_token_of_request_verifies() -> None:
    url = "http://api.example.com/pfop/?a=1&b=%2F"
    body = "bucket=photos&key=cat.jpg&fops=imageView2%2F2%2Fw%2F300"
    header = "QBox " + SDK.token_of_request(url, body, FORM)
    pq = path_and_query(url)
    assert verify_qbox(header, pq, body.encode(), FORM, RING) == "MY_ACCESS_KEY"
    assert verify_authorization(header, "POST", pq, "h", FORM, {}, body.encode(), RING) == (
        "MY_ACCESS_KEY"
    )
    with pytest.raises(Unauthorized, match="signature mismatch"):
        verify_qbox(header, pq, body.encode() + b"&force=1", FORM, RING)
    with pytest.raises(Unauthorized, match="signature mismatch"):
        verify_qbox(header, "/pfop/?a=1", body.encode(), FORM, RING)


def test_qbox_body_is_signed_only_when_form_encoded() -> None:
    header = "QBox " + SDK.token_of_request("http://h/x", '{"a":1}', "application/json")
    assert verify_qbox(header, "/x", b'{"b":2}', "application/json", RING) == "MY_ACCESS_KEY"


def test_qbox_requests_auth_on_a_real_prepared_request() -> None:
    prepared = requests.Request(
        "POST",
        "http://127.0.0.1:9/pfop/?q=%E4%B8%83",
        data={"bucket": "b", "fops": "imageView2/2/w/100|saveas/" + encode_entry("b", "k")},
        auth=RequestsAuth(SDK),
    ).prepare()
    header, path, content_type, headers, body = on_the_wire(prepared)
    assert path == "/pfop/?q=%E4%B8%83"
    ak = verify_authorization(
        header, "POST", path, "127.0.0.1:9", content_type, headers, body, RING
    )
    assert ak == "MY_ACCESS_KEY"


def test_sdk_accepts_our_qbox_header() -> None:
    body = b"bucket=b&key=k"
    header = qbox_authorization(CREDS, "/pfop/?x=1", body, FORM)
    assert SDK.verify_callback(header, "http://host/pfop/?x=1", body.decode(), FORM)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.text("abc/=%-_~.", min_size=1, max_size=8), max_size=4),
    st.text("abc=&%+", max_size=30),
    st.dictionaries(st.text("abcxyz", min_size=1, max_size=5), st.text(max_size=20), max_size=4),
)
def test_qbox_round_trips_with_the_sdk(
    segments: list[str], query: str, form: dict[str, str]
) -> None:
    url = "http://h/" + "/".join(segments) + (f"?{query}" if query else "")
    body = urlencode(form)
    header = "QBox " + SDK.token_of_request(url, body, FORM)
    assert header == qbox_authorization(CREDS, path_and_query(url), body.encode(), FORM)
    assert verify_qbox(header, path_and_query(url), body.encode(), FORM, RING) == CREDS.access_key


# ------------------------------------------------------------------ Qiniu


def test_qiniu_sdk_token_of_request_verifies() -> None:
    url = "http://api.example.com:8080/pfop?notify=1"
    qheaders = {"X-Qiniu-Meta-B": "2", "X-Qiniu-Meta-A": "1"}
    body = b'{"fops": "avinfo"}'
    token = SDK_MAC.token_of_request(
        "POST",
        "api.example.com:8080",
        url,
        SDK_MAC.qiniu_headers(qheaders),
        "application/json",
        body,
    )
    # Headers arrive in any case and order; the server canonicalises them.
    wire = {"x-qiniu-meta-a": "1", "Content-Length": "18", "X-QINIU-META-B": "2"}
    args = ("POST", "/pfop?notify=1", "api.example.com:8080", "application/json", wire)
    assert verify_qiniu("Qiniu " + token, *args, body, RING) == "MY_ACCESS_KEY"
    assert verify_authorization("Qiniu " + token, *args, body, RING) == "MY_ACCESS_KEY"
    with pytest.raises(Unauthorized, match="signature mismatch"):
        verify_qiniu("Qiniu " + token, *args, b'{"fops": "exif"}', RING)
    tampered = {**wire, "x-qiniu-meta-a": "3"}
    with pytest.raises(Unauthorized, match="signature mismatch"):
        verify_qiniu("Qiniu " + token, *args[:4], tampered, body, RING)
    with pytest.raises(Unauthorized, match="signature mismatch"):
        verify_qiniu("Qiniu " + token, "GET", *args[1:], body, RING)


def test_qiniu_signing_text_layout() -> None:
    text = qiniu_signing_text(
        "POST", "/p?q", "h", "application/json", {"x-qiniu-b": "2", "X-Qiniu-A": "1"}, b"{}"
    )
    assert (
        text
        == b"POST /p?q\nHost: h\nContent-Type: application/json\nX-Qiniu-A: 1\nX-Qiniu-B: 2\n\n{}"
    )
    assert qiniu_signing_text("GET", "/p", "h", None, {"X-Qiniu-": "x"}, b"ignored") == (
        b"GET /p\nHost: h\n\n"
    )
    octets = qiniu_signing_text("PUT", "/p", "h", "application/octet-stream", {}, b"\x00")
    assert octets == b"PUT /p\nHost: h\nContent-Type: application/octet-stream\n\n"


def test_qiniu_requests_auth_with_x_qiniu_date() -> None:
    prepared = requests.Request(
        "POST",
        "http://127.0.0.1:9/pfop/",
        data={"bucket": "b", "key": "k", "fops": "avinfo"},
        headers={"X-Qiniu-Meta-Owner": "me"},
        auth=QiniuMacRequestsAuth(SDK_MAC),
    ).prepare()
    header, path, content_type, headers, body = on_the_wire(prepared)
    assert "X-Qiniu-Date" in headers
    assert header.startswith("Qiniu ")
    args = ("POST", path, "127.0.0.1:9", content_type, headers, body, RING)
    assert verify_authorization(header, *args) == "MY_ACCESS_KEY"
    # The signed date bounds replays: the same request an hour later is refused.
    with pytest.raises(Unauthorized, match="X-Qiniu-Date"):
        verify_authorization(header, *args, now=time.time() + 3600)
    assert verify_qiniu(header, *args, now=time.time() + 3600, max_clock_skew=None)


def test_qiniu_malformed_date_is_refused() -> None:
    headers = {"X-Qiniu-Date": "yesterday"}
    header = qiniu_authorization(CREDS, "GET", "/x", "h", None, headers, None)
    with pytest.raises(Unauthorized, match="malformed X-Qiniu-Date"):
        verify_qiniu(header, "GET", "/x", "h", None, headers, None, RING)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    headers = {"X-Qiniu-Date": stamp}
    header = qiniu_authorization(CREDS, "GET", "/x", "h", None, headers, None)
    assert verify_qiniu(header, "GET", "/x", "h", None, headers, None, RING) == "MY_ACCESS_KEY"


def test_sdk_accepts_our_qiniu_header() -> None:
    headers = {"Host": "up.example.com", "X-Qiniu-Meta-A": "1"}
    body = "a=1&b=2"
    header = qiniu_authorization(
        CREDS, "POST", "/cb?x=1", "up.example.com", FORM, headers, body.encode()
    )
    mac = qiniu.QiniuMacAuth(CREDS.access_key, CREDS.secret_key)
    assert mac.verify_callback(header, "http://up.example.com/cb?x=1", body, FORM, "POST", headers)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing Authorization"),
        ("", "missing Authorization"),
        ("Bearer abc", "unsupported Authorization scheme"),
        ("QBox", "unsupported Authorization scheme"),
        ("QBox MY_ACCESS_KEY", "malformed Authorization header"),
        ("QBox :sig", "malformed Authorization header"),
        ("QBox MY_ACCESS_KEY:", "malformed Authorization header"),
        ("QBox MY_ACCESS_KEY:a:b", "malformed Authorization header"),
        ("Qiniu nocolon", "malformed Authorization header"),
        ("QBox NOBODY:FXsYh0wKHYPEsIAgdPD9OfjkeEM=", "unknown access key"),
        ("QBox MY_ACCESS_KEY:FXsYh0wKHYPEsIAgdPD9OfjkeEM=", "signature mismatch"),
        ("QBox MY_ACCESS_KEY:é", "signature mismatch"),
    ],
)
def test_verify_authorization_failures(header: str | None, message: str) -> None:
    with pytest.raises(Unauthorized, match=message) as info:
        verify_authorization(header, "POST", "/pfop/", "h", FORM, {}, b"a=1", RING)
    assert info.value.status == 401


def test_other_accounts_signature_does_not_pass() -> None:
    header = qbox_authorization(OTHER, "/pfop/", None, None)
    forged = header.replace(OTHER.access_key, CREDS.access_key)
    with pytest.raises(Unauthorized, match="signature mismatch"):
        verify_qbox(forged, "/pfop/", None, None, KeyRing([CREDS, OTHER]))
    assert verify_qbox(header, "/pfop/", None, None, KeyRing([CREDS, OTHER])) == OTHER.access_key


# ----------------------------------------------------------- upload tokens


def test_sdk_upload_token_verifies() -> None:
    policy = {
        "returnBody": '{"key":"$(key)"}',
        "persistentOps": "avthumb/mp4",
        "persistentNotifyUrl": "http://notify.example.com/",
        "persistentPipeline": "video",
        "fsizeLimit": 1024,
        "mimeLimit": "image/*",
        "insertOnly": 1,
        "saveKey": "$(etag)",
        "endUser": "u1",
        "callbackUrl": "http://cb.example.com/",
        "callbackBody": "key=$(key)",
        "returnUrl": "http://r.example.com/",
    }
    token = SDK.upload_token("photos", "cat.jpg", 3600, policy)
    got = verify_upload_token(token, RING)
    assert isinstance(got, UploadPolicy)
    assert (got.access_key, got.scope, got.bucket, got.key) == (
        "MY_ACCESS_KEY",
        "photos:cat.jpg",
        "photos",
        "cat.jpg",
    )
    assert got.deadline == pytest.approx(time.time() + 3600, abs=5)
    assert got.insert_only and not got.is_prefix_scope
    assert got.return_body == '{"key":"$(key)"}'
    assert got.return_url == "http://r.example.com/"
    assert (got.callback_url, got.callback_body) == ("http://cb.example.com/", "key=$(key)")
    assert got.persistent_ops == "avthumb/mp4"
    assert got.persistent_notify_url == "http://notify.example.com/"
    assert got.persistent_pipeline == "video"
    assert (got.fsize_limit, got.mime_limit) == (1024, "image/*")
    assert (got.save_key, got.end_user) == ("$(etag)", "u1")
    assert got.raw == {"scope": "photos:cat.jpg", "deadline": got.deadline, **policy}
    assert got.allows_key("cat.jpg") and not got.allows_key("dog.jpg")
    hash(got)  # frozen and hashable despite the raw dict


def test_bucket_and_prefix_scopes() -> None:
    bucket_only = verify_upload_token(SDK.upload_token("photos"), RING)
    assert (bucket_only.bucket, bucket_only.key, bucket_only.insert_only) == ("photos", None, False)
    assert bucket_only.allows_key("anything/at/all")
    prefix = verify_upload_token(
        SDK.upload_token("photos", "users/1/", policy={"isPrefixalScope": 1}), RING
    )
    assert prefix.is_prefix_scope
    assert prefix.allows_key("users/1/a.jpg")
    assert not prefix.allows_key("users/2/a.jpg")
    with_colon = verify_upload_token(SDK.upload_token("photos", "a:b:c"), RING)
    assert (with_colon.bucket, with_colon.key) == ("photos", "a:b:c")


def test_our_upload_token_is_the_sdks() -> None:
    sdk_token = SDK.upload_token("photos", "k", 600, {"persistentOps": "exif"})
    _, _, policy = qiniu.Auth.up_token_decode(sdk_token)
    assert make_upload_token(CREDS, policy) == sdk_token
    assert qiniu.Auth.get_bucket_name(make_upload_token(CREDS, policy)) == "photos"


def test_upload_token_deadline() -> None:
    token = make_upload_token(CREDS, {"scope": "b", "deadline": 1_000})
    assert verify_upload_token(token, RING, now=1_000).deadline == 1_000
    with pytest.raises(Unauthorized, match="expired token"):
        verify_upload_token(token, RING, now=1_001)
    with pytest.raises(Unauthorized, match="expired token"):
        verify_upload_token(token, RING)


def signed_policy(payload: bytes) -> str:
    """A correctly signed token around an arbitrary (maybe malformed) policy."""
    encoded = urlsafe_b64encode(payload)
    return f"{CREDS.access_key}:{sign(CREDS.secret_key, encoded)}:{encoded}"


def policy_bytes(**fields: Any) -> bytes:
    return json.dumps({"scope": "b", "deadline": 2**40, **fields}).encode()


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "missing upload token"),
        ("x" * 70_000, "too long"),
        ("ak:sig", "want <AccessKey>:<Sign>:<EncodedPutPolicy>"),
        ("ak:sig:data:more", "want <AccessKey>:<Sign>:<EncodedPutPolicy>"),
        ("ak::data", "want <AccessKey>:<Sign>:<EncodedPutPolicy>"),
        (signed_policy(b"not json"), "not base64 JSON"),
        (signed_policy(b"\xff\xfe"), "not base64 JSON"),
        (signed_policy(b"[1, 2]"), "not a JSON object"),
        (signed_policy(b'{"deadline": 99999999999}'), "needs a scope"),
        (signed_policy(policy_bytes(scope=":k")), "needs a scope"),
        (signed_policy(policy_bytes(scope=7)), "needs a scope"),
        (signed_policy(b'{"scope": "b"}'), "needs a deadline"),
        (signed_policy(policy_bytes(deadline=True)), "'deadline' must be an integer"),
        (signed_policy(policy_bytes(deadline="soon")), "'deadline' must be an integer"),
        (signed_policy(policy_bytes(fsizeLimit="1k")), "'fsizeLimit' must be an integer"),
        (signed_policy(policy_bytes(fsizeLimit=-1)), "'fsizeLimit' must not be negative"),
        (signed_policy(policy_bytes(returnBody=["x"])), "'returnBody' must be a string"),
    ],
)
def test_malformed_upload_tokens(token: str, message: str) -> None:
    with pytest.raises(Unauthorized, match=message):
        verify_upload_token(token, RING)


def test_tampered_and_foreign_upload_tokens() -> None:
    token = SDK.upload_token("photos", "cat.jpg")
    ak, sig, _ = token.split(":")
    forged = f"{ak}:{sig}:{urlsafe_b64encode(policy_bytes(scope='photos'))}"
    with pytest.raises(Unauthorized, match="signature mismatch"):
        verify_upload_token(forged, RING)
    with pytest.raises(Unauthorized, match="unknown access key"):
        verify_upload_token(token, KeyRing([OTHER]))


# ----------------------------------------------------- private download URLs


@pytest.mark.parametrize(
    "url",
    [
        "http://cdn.example.com/photos/cat.jpg",
        "https://cdn.example.com:8443/cat.jpg?imageView2/2/w/300|imageMogr2/blur/3x5",
        "http://h/k?attname=a.jpg",
    ],
)
def test_sdk_private_download_url_verifies(url: str) -> None:
    signed = SDK.private_download_url(url, expires=3600)
    assert verify_download_url(signed, RING) == "MY_ACCESS_KEY"
    deadline = int(signed.split("e=")[-1].split("&")[0])
    assert sign_download_url(CREDS, url, deadline) == signed
    with pytest.raises(Unauthorized, match="expired token"):
        verify_download_url(signed, RING, now=deadline + 1)
    assert verify_download_url(signed, RING, now=deadline) == "MY_ACCESS_KEY"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda u: u.replace("cat.jpg", "dog.jpg"), "signature mismatch"),
        (lambda u: u.replace("http://", "https://"), "signature mismatch"),
        (lambda u: u.replace("e=", "e=1"), "signature mismatch"),
        (lambda u: u + "&x=1", "token must be the last"),
        (lambda u: u.split("&token=")[0], "missing download token"),
        (lambda u: u.replace("&token=MY_ACCESS_KEY:", "&token=NOBODY:"), "unknown access key"),
        (lambda u: u.replace("&token=MY_ACCESS_KEY:", "&token=MY_ACCESS_KEY"), "malformed"),
        (lambda u: u.replace("?e=", "?x=1&e=").replace("&token", "&y=2&token"), "want e="),
    ],
)
def test_bad_download_urls(mutate: Any, message: str) -> None:
    signed = sign_download_url(CREDS, "http://h/cat.jpg", int(time.time()) + 600)
    with pytest.raises(Unauthorized, match=message):
        verify_download_url(mutate(signed), RING)


def test_download_token_tolerates_percent_encoded_padding() -> None:
    signed = sign_download_url(CREDS, "http://h/cat.jpg", int(time.time()) + 600)
    assert signed.endswith("=")
    assert verify_download_url(signed[:-1] + "%3D", RING) == "MY_ACCESS_KEY"


# ------------------------------------------------------- synchronous saveas


def test_saveas_sign_round_trip_and_sdk_agreement() -> None:
    host, path = "img.example.com:8080", "/photos/cat.jpg"
    query = "imageView2/2/w/100|saveas/" + encode_entry("photos", "cat-100.jpg")
    signed_query = sign_saveas_url(CREDS, host, path, query)
    # The appended token is the SDK's own token of "<host><path>?<query>".
    assert signed_query == f"{query}/sign/{SDK.token(f'{host}{path}?{query}')}"
    verify_saveas_sign(host, path, signed_query, RING)
    # A download token after it (private bucket) does not disturb it.
    verify_saveas_sign(host, path, signed_query + "&e=123&token=x:y", RING)
    with pytest.raises(Unauthorized, match="signature mismatch"):
        verify_saveas_sign("evil.example.com", path, signed_query, RING)
    with pytest.raises(Unauthorized, match="signature mismatch"):
        verify_saveas_sign(host, "/photos/dog.jpg", signed_query, RING)
    with pytest.raises(Unauthorized, match="signature mismatch"):
        verify_saveas_sign(host, path, signed_query.replace("w/100", "w/101"), RING)
    retargeted = signed_query.replace(
        encode_entry("photos", "cat-100.jpg"), encode_entry("photos", "index.html")
    )
    with pytest.raises(Unauthorized, match="signature mismatch"):
        verify_saveas_sign(host, path, retargeted, RING)
    with pytest.raises(Unauthorized, match="unknown access key"):
        verify_saveas_sign(host, path, signed_query, KeyRing([OTHER]))


@pytest.mark.parametrize(
    "query",
    [
        "imageView2/2/w/100|saveas/cGhvdG9zOmsuanBn",
        "imageView2/2/w/100|saveas/cGhvdG9zOmsuanBn/sign/",
        "imageView2/2/w/100|saveas/cGhvdG9zOmsuanBn/sign/MY_ACCESS_KEY",
        "imageView2/2/w/100|saveas/cGhvdG9zOmsuanBn/sign/MY_ACCESS_KEY:abc/extra",
    ],
)
def test_unsigned_or_malformed_saveas(query: str) -> None:
    with pytest.raises(Unauthorized, match="saveas needs a signature"):
        verify_saveas_sign("h", "/k", query, RING)
