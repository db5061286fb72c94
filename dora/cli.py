"""The ``dora`` command line: serve, status, keys, put, get.

Heavy imports (aiohttp, the scheduler) happen inside the commands, so
``dora keys`` is instant and the core stays free of them at import time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from dora.cli_jobs import add_job_commands
from dora.cli_status import add_status_command
from dora.config import Settings, load_settings
from dora.errors import DoraError

DEFAULT_URL = "http://127.0.0.1:9000"


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    config = Path(args.config) if getattr(args, "config", None) else None
    return load_settings(config, data_dir=Path(args.data_dir) if args.data_dir else None, **extra)


def _gateway_url(args: argparse.Namespace, settings: Settings) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    from dora.scheduler.supervisor import read_state  # noqa: PLC0415

    state = read_state(settings.data_dir)
    if state and "url" in state:
        return state["url"]
    return f"http://{settings.host}:{settings.port}"


def cmd_serve(args: argparse.Namespace) -> int:
    from dora.logs import setup_logging  # noqa: PLC0415
    from dora.metrics import use_metrics_dir  # noqa: PLC0415

    settings = _settings(
        args, port=args.port, host=args.host, workers=args.workers, gateways=args.gateways
    )
    setup_logging("serve")  # DORA_LOG_LEVEL, DORA_LOG_FORMAT=text|json
    # Before prometheus-client is first imported (with the supervisor), which
    # is when it decides to keep its values in the shared files.
    use_metrics_dir(settings.data_dir)
    from dora.scheduler.supervisor import serve  # noqa: PLC0415

    try:
        import uvloop  # noqa: PLC0415

        uvloop.run(serve(settings))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from dora.keys import ensure_keys  # noqa: PLC0415

    settings = _settings(args)
    creds = ensure_keys(settings.data_dir)
    if args.json:
        print(json.dumps({"access_key": creds.access_key, "secret_key": creds.secret_key}))
    else:
        print(f"access_key: {creds.access_key}\nsecret_key: {creds.secret_key}")
    return 0


async def _put(url: str, token: str, path: Path, key: str) -> tuple[int, str]:
    import aiohttp  # noqa: PLC0415

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        with path.open("rb") as fh:
            form = aiohttp.FormData()
            form.add_field("token", token)
            form.add_field("key", key)
            form.add_field("file", fh, filename=path.name, content_type="application/octet-stream")
            async with session.post(url + "/", data=form) as resp:
                return resp.status, await resp.text()


def cmd_put(args: argparse.Namespace) -> int:
    from dora.keys import ensure_keys  # noqa: PLC0415
    from dora.tokens import make_upload_token  # noqa: PLC0415

    settings = _settings(args)
    path = Path(args.file)
    if not path.is_file():
        print(f"dora put: no such file: {path}", file=sys.stderr)
        return 2
    key = args.key or path.name
    creds = ensure_keys(settings.data_dir)
    policy = {"scope": f"{args.bucket}:{key}", "deadline": int(time.time()) + 3600}
    token = make_upload_token(creds, policy)
    status, body = asyncio.run(_put(_gateway_url(args, settings), token, path, key))
    print(body)
    return 0 if status == 200 else 1


async def _get(url: str) -> tuple[int, bytes, str]:
    import aiohttp  # noqa: PLC0415

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
        return resp.status, await resp.read(), resp.headers.get("Content-Type", "")


def cmd_get(args: argparse.Namespace) -> int:
    url = str(args.url)
    if url.startswith("/"):
        url = DEFAULT_URL + url
    status, body, ctype = asyncio.run(_get(url))
    if status >= 400:
        sys.stderr.write(body.decode(errors="replace") + "\n")
        return 1
    if args.output:
        Path(args.output).write_bytes(body)
        print(f"{len(body)} bytes, {ctype} -> {args.output}", file=sys.stderr)
    else:
        sys.stdout.buffer.write(body)
        sys.stdout.buffer.flush()
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from dora.doctor import run_doctor  # noqa: PLC0415

    return run_doctor(_settings(args), json_output=args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dora", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", help="data directory (default ./dora-data, or DORA_DATA_DIR)")
        p.add_argument("--config", help="a TOML settings file (default <data-dir>/dora.toml)")

    p = sub.add_parser("serve", help="run the whole platform on this machine")
    common(p)
    p.add_argument("--port", type=int, help="gateway port (default 9000)")
    p.add_argument("--host", help="gateway address (default 127.0.0.1)")
    p.add_argument("--workers", type=int, help="builtin worker processes (default: one per core)")
    p.add_argument("--gateways", type=int, help="gateway processes sharing the port (default 1)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("keys", help="print this installation's access key pair")
    common(p)
    p.add_argument("--json", action="store_true", help="print JSON with access_key, secret_key")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("put", help="upload a file into a bucket")
    common(p)
    p.add_argument("--url", help=f"gateway URL (default: the running serve, or {DEFAULT_URL})")
    p.add_argument("bucket")
    p.add_argument("file")
    p.add_argument("key", nargs="?", help="object key (default: the file's name)")
    p.set_defaults(func=cmd_put)

    p = sub.add_parser("get", help="fetch an object or a processing URL")
    p.add_argument("url", help="e.g. http://127.0.0.1:9000/photos/cat.jpg?imageView2/2/w/300")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("doctor", help="check codecs, formats, ffmpeg, fonts and the data directory")
    common(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_doctor)

    add_job_commands(sub, common)  # pfop, prefop, pipeline, job
    add_status_command(sub, common)  # status
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DoraError as exc:
        print(f"dora {args.command}: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
