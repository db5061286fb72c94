"""The job commands of the ``dora`` CLI: pfop, prefop, pipeline, job.

They talk HTTP to a running gateway (``--url``, else the running ``dora
serve`` of the data directory, as ``dora put`` finds it), signing every
request but ``prefop`` with the installation's first key pair (``dora
keys``) in the ``Qiniu`` scheme, with ``X-Qiniu-Date`` so a captured request
cannot be replayed for long::

    dora pfop <bucket> <key> <fops> [--notify-url U] [--pipeline P] [--force] [--type 1]
    dora prefop <id> [--wait [--interval S] [--timeout S]]
    dora pipeline create <name> [--concurrency N] [--max-queued N]
    dora pipeline list | get <name> | pause <name> | resume <name> | delete <name>
    dora pipeline update <name> [--concurrency N] [--max-queued N]
    dora job list [--state S] [--pipeline P] [--limit N] [--marker M] | get|cancel|retry <id>

``pfop`` prints the persistentId; ``prefop`` the status JSON (with
``--wait`` it polls until the job leaves codes 1 and 2, and exits 0 only
for code 0); the others print the gateway's JSON answer (``list``: a table,
or JSON with ``--json``). A gateway error is printed as ``dora <command>:
<message>`` with exit status 1. Standard library only: no aiohttp import.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from dora.auth import FORM_CONTENT_TYPE, QINIU_DATE_FORMAT, Credentials, qiniu_authorization
from dora.errors import DoraError, ServiceUnavailable, error_from_status

__all__ = ["GatewayClient", "add_job_commands"]

REQUEST_TIMEOUT = 30.0
MAX_ANSWER_BYTES = 16 * 1024 * 1024
RUNNING_CODES = (1, 2)  # prefop: waiting, processing

Common = Callable[[argparse.ArgumentParser], None]


class GatewayClient:
    """Signed JSON calls to a gateway's job API (blocking, bounded in time and size)."""

    def __init__(
        self, url: str, creds: Credentials | None, timeout: float = REQUEST_TIMEOUT
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise DoraError(f"gateway URL {url!r}: want http(s)://host[:port]")
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._host = parts.netloc
        self._prefix = parts.path.rstrip("/")
        self._creds = creds
        self._timeout = timeout
        # Loopback gateways must not be sent through an environment's proxy.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
    ) -> Any:
        """``method path?query`` with a form body; the answer's JSON, or the gateway's error."""
        target = self._prefix + path
        if query:
            target += "?" + urlencode(query)
        body = None if method == "GET" else urlencode(form or {}).encode()
        headers = {"Host": self._host}
        if body is not None:
            headers["Content-Type"] = FORM_CONTENT_TYPE
        if self._creds is not None:
            headers["X-Qiniu-Date"] = time.strftime(QINIU_DATE_FORMAT, time.gmtime())
            headers["Authorization"] = qiniu_authorization(
                self._creds,
                method,
                target,
                self._host,
                headers.get("Content-Type"),
                headers,
                body,
            )
        request = urllib.request.Request(
            self._origin + target, data=body, headers=headers, method=method
        )
        try:
            with self._opener.open(request, timeout=self._timeout) as resp:
                return json.loads(resp.read(MAX_ANSWER_BYTES) or b"null")
        except urllib.error.HTTPError as exc:
            raise _gateway_error(exc) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServiceUnavailable(
                f"cannot reach the gateway at {self._origin}: {reason}"
            ) from exc
        except ValueError as exc:
            raise DoraError(f"the gateway answered something that is not JSON: {exc}") from exc


def _gateway_error(exc: urllib.error.HTTPError) -> DoraError:
    text = exc.read(64 * 1024).decode("utf-8", "replace")
    try:
        message = str(json.loads(text)["error"])
    except (ValueError, KeyError, TypeError):
        message = text.strip() or exc.reason
    return error_from_status(exc.code, message)


def _client(args: argparse.Namespace, *, signed: bool = True) -> GatewayClient:
    from dora.cli import _gateway_url, _settings  # noqa: PLC0415 - cli imports this module
    from dora.keys import ensure_keys  # noqa: PLC0415

    settings = _settings(args)
    creds = ensure_keys(settings.data_dir) if signed else None
    return GatewayClient(_gateway_url(args, settings), creds)


def _print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2))


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


# -- pfop / prefop ------------------------------------------------------------


def cmd_pfop(args: argparse.Namespace) -> int:
    form = {"bucket": args.bucket, "key": args.key, "fops": args.fops}
    if args.notify_url:
        form["notifyURL"] = args.notify_url
    if args.pipeline:
        form["pipeline"] = args.pipeline
    if args.force:
        form["force"] = "1"
    if args.type:
        form["type"] = str(args.type)
    answer = _client(args).call("POST", "/pfop/", form=form)
    print(answer["persistentId"])
    return 0


def cmd_prefop(args: argparse.Namespace) -> int:
    client = _client(args, signed=False)
    deadline = time.monotonic() + args.timeout
    while True:
        status = client.call("GET", "/status/get/prefop", query={"id": args.id})
        if not args.wait or status.get("code") not in RUNNING_CODES:
            break
        if time.monotonic() + args.interval > deadline:
            _print_json(status)
            print(f"dora prefop: still running after {args.timeout:g}s", file=sys.stderr)
            return 1
        time.sleep(args.interval)
    _print_json(status)
    return 0 if not args.wait or status.get("code") == 0 else 1


# -- pipelines ----------------------------------------------------------------


def _sizes(args: argparse.Namespace) -> dict[str, str]:
    form: dict[str, str] = {}
    if args.concurrency is not None:
        form["concurrency"] = str(args.concurrency)
    if args.max_queued is not None:
        form["maxQueued"] = str(args.max_queued)
    return form


def cmd_pipeline(args: argparse.Namespace) -> int:
    client = _client(args)
    action = args.action
    path = "" if action in ("list", "create") else f"/v1/pipelines/{quote(args.name, safe='')}"
    if action == "create":
        answer = client.call("POST", "/v1/pipelines", form={"name": args.name, **_sizes(args)})
    elif action == "list":
        answer = client.call("GET", "/v1/pipelines")
        if not args.json:
            rows = [["NAME", "CONCURRENCY", "MAX_QUEUED", "PAUSED", "QUEUED", "RUNNING"]]
            rows += [
                [p["name"], str(p["concurrency"]), str(p["maxQueued"]),
                 "yes" if p["paused"] else "no", str(p["jobs"].get("queued", 0)),
                 str(p["jobs"].get("running", 0))]
                for p in answer["items"]
            ]  # fmt: skip
            _table(rows)
            return 0
    elif action == "get":
        answer = client.call("GET", path)
    elif action == "update":
        answer = client.call("PATCH", path, form=_sizes(args))
    elif action == "delete":
        answer = client.call("DELETE", path)
    else:  # pause, resume
        answer = client.call("POST", f"{path}/{action}")
    _print_json(answer)
    return 0


# -- jobs -----------------------------------------------------------------------


def cmd_job(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.action != "list":
        suffix = "" if args.action == "get" else f"/{args.action}"
        method = "GET" if args.action == "get" else "POST"
        _print_json(client.call(method, f"/v1/jobs/{quote(args.id, safe='')}{suffix}"))
        return 0
    query = {"limit": str(args.limit)}
    for name in ("state", "pipeline", "marker"):
        if getattr(args, name):
            query[name] = getattr(args, name)
    answer = client.call("GET", "/v1/jobs", query=query)
    if args.json:
        _print_json(answer)
        return 0
    rows = [["ID", "PIPELINE", "STATE", "CODE", "SOURCE", "CREATED"]]
    rows += [
        [job["id"], job["pipeline"], job["state"], str(job["code"]),
         f"{job['inputBucket']}:{job['inputKey']}",
         time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job["created"]))]
        for job in answer["items"]
    ]  # fmt: skip
    _table(rows)
    if answer.get("marker"):
        print(f"more: --marker {answer['marker']}", file=sys.stderr)
    return 0


# -- the parser -------------------------------------------------------------------


def add_job_commands(sub: Any, common: Common) -> None:
    """Add ``pfop``, ``prefop``, ``pipeline`` and ``job`` to ``dora``'s subparsers."""

    def base(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        common(p)
        p.add_argument("--url", help="gateway URL (default: the running serve)")
        return p

    p = base(sub.add_parser("pfop", help="start an asynchronous job; prints its persistentId"))
    p.add_argument("bucket")
    p.add_argument("key")
    p.add_argument("fops", help="fop chains separated by ';', e.g. 'avthumb/mp4|saveas/...'")
    p.add_argument("--notify-url", help="URL that receives the status JSON when done")
    p.add_argument("--pipeline", help="pipeline (queue) name (default: the shared one)")
    p.add_argument("--force", action="store_true", help="overwrite existing saveas targets")
    p.add_argument("--type", type=int, choices=(0, 1), default=0, help="1: an idle-time job")
    p.set_defaults(func=cmd_pfop)

    p = base(sub.add_parser("prefop", help="print a job's status JSON"))
    p.add_argument("id", help="the persistentId")
    p.add_argument("--wait", action="store_true", help="poll until the job has finished")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    p.add_argument("--timeout", type=float, default=3600.0, help="give up after this long")
    p.set_defaults(func=cmd_prefop)

    pipeline = sub.add_parser("pipeline", help="manage pipelines (job queues)")
    actions = pipeline.add_subparsers(dest="action", required=True)
    for action, text in (
        ("create", "create a pipeline"),
        ("update", "change a pipeline's concurrency or queue bound"),
    ):
        p = base(actions.add_parser(action, help=text))
        p.add_argument("name")
        p.add_argument("--concurrency", type=int, help="jobs running at once")
        p.add_argument("--max-queued", type=int, help="waiting jobs it holds at most")
    p = base(actions.add_parser("list", help="list pipelines"))
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    for action, text in (
        ("get", "show a pipeline"),
        ("pause", "stop starting its jobs"),
        ("resume", "start its jobs again"),
        ("delete", "delete an idle pipeline"),
    ):
        base(actions.add_parser(action, help=text)).add_argument("name")
    pipeline.set_defaults(func=cmd_pipeline)

    job = sub.add_parser("job", help="list, show, cancel and retry jobs")
    actions = job.add_subparsers(dest="action", required=True)
    p = base(actions.add_parser("list", help="list jobs, newest first"))
    p.add_argument("--state", choices=("queued", "running", "done", "failed"))
    p.add_argument("--pipeline")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--marker", help="continue after a previous page")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    for action, text in (
        ("get", "show a job"),
        ("cancel", "cancel a queued or running job"),
        ("retry", "queue a failed job again"),
    ):
        base(actions.add_parser(action, help=text)).add_argument("id")
    job.set_defaults(func=cmd_job)
