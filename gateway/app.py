"""The gateway's aiohttp application: routes, typed state, life cycle.

Routes::

    GET  /health                       liveness, and how many workers are ready
    GET  /metrics                      Prometheus metrics (dora.gateway.metrics)
    POST /                             form upload (dora.gateway.upload)
    POST /mkblk, /bput, /mkfile        resumable upload v1 (dora.gateway.resumable_v1)
    *    /buckets/<b>/objects/<k>/uploads[/...]   resumable upload v2 (dora.gateway.resumable_v2)
    GET  /<bucket>/<key>[?<fops>]      download or processing URL
    HEAD /<bucket>/<key>[?<fops>]
    GET  /<key>[?<fops>]               the same on a bucket domain (Host → bucket)
    POST /pfop, GET /status/get/prefop, /v1/...   async jobs (dora.gateway.jobs_wiring)

State lives under typed :class:`aiohttp.web.AppKey` keys; the caches are
built here from the settings and closed (in-flight work cancelled) on
cleanup. The store and the processor belong to whoever built the context.
:func:`serve_app` runs an app on a TCP listener with an ordered, graceful
shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Final

from aiohttp import web

from dora.config import Settings
from dora.gateway.cache import ResultCache, SourceCache
from dora.gateway.context import GatewayContext, ReportsHealth
from dora.gateway.errors import add_reqid_header, error_middleware
from dora.gateway.jobs_wiring import add_job_routes
from dora.gateway.metrics import add_metrics, observe_middleware
from dora.gateway.objects import serve_object
from dora.gateway.process import ChainRunner, serve_processed
from dora.gateway.resumable_v2 import add_resumable_routes
from dora.gateway.upload import handle_upload
from dora.gateway.urls import full_url, resolve_target
from dora.tokens import verify_download_url

CONTEXT: Final = web.AppKey("dora_context", GatewayContext)
RESULTS: Final = web.AppKey("dora_results", ResultCache)
SOURCES: Final = web.AppKey("dora_sources", SourceCache)
RUNNER: Final = web.AppKey("dora_runner", ChainRunner)
BUCKET_DOMAINS: Final[web.AppKey[Mapping[str, str]]] = web.AppKey("dora_bucket_domains")

log = logging.getLogger("dora.gateway")

# Room for the multipart framing and form fields around the largest file.
MULTIPART_OVERHEAD = 1024 * 1024


async def handle_get(request: web.Request) -> web.StreamResponse:
    """GET/HEAD of an object URL: a download, or a processing URL with fops."""
    app = request.app
    ctx = app[CONTEXT]
    target = resolve_target(request, app[BUCKET_DOMAINS])
    if target.is_signed_download:
        verify_download_url(full_url(request), ctx.keyring)
    if target.fops is None:
        return await serve_object(request, ctx.store, target.bucket, target.key)
    return await serve_processed(request, ctx, app[RUNNER], app[RESULTS], target)


async def handle_post_root(request: web.Request) -> web.StreamResponse:
    return await handle_upload(request, request.app[CONTEXT])


async def handle_health(request: web.Request) -> web.StreamResponse:
    processor = request.app[CONTEXT].processor
    body: dict[str, object] = {"status": "ok"}
    if isinstance(processor, ReportsHealth):
        body["workers"] = len(processor.instances())
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def _close_caches(app: web.Application) -> None:
    await app[RESULTS].close()
    await app[SOURCES].close()


def build_app(ctx: GatewayContext) -> web.Application:
    """The aiohttp application of one gateway around ``ctx``."""
    settings = ctx.settings
    app = web.Application(
        middlewares=[observe_middleware, error_middleware],
        client_max_size=settings.limits.max_upload_bytes + MULTIPART_OVERHEAD,
    )
    sources = SourceCache(settings.source_cache_bytes)
    app[CONTEXT] = ctx
    app[RESULTS] = ResultCache(settings.result_cache_bytes)
    app[SOURCES] = sources
    app[RUNNER] = ChainRunner(ctx, sources)
    app[BUCKET_DOMAINS] = settings.bucket_domain_map()
    app.on_response_prepare.append(add_reqid_header)
    app.on_cleanup.append(_close_caches)
    app.router.add_get("/health", handle_health)
    app.router.add_post("/", handle_post_root)
    add_resumable_routes(app.router, ctx)  # /mkblk, /bput, /mkfile, /buckets/.../uploads
    add_job_routes(app.router, ctx)  # /pfop, /status/get/prefop, /v1/...
    add_metrics(app, ctx, app[RESULTS], sources)  # GET /metrics
    app.router.add_get("/{tail:.+}", handle_get)  # HEAD too (allow_head)
    return app


async def serve_app(
    app: web.Application,
    settings: Settings,
    *,
    stop: asyncio.Event,
    reuse_port: bool = False,
    ready: Callable[[int], None] | None = None,
) -> None:
    """Serve ``app`` on the settings' address until ``stop``, then drain and clean up."""
    runner = web.AppRunner(
        app,
        shutdown_timeout=settings.shutdown_grace,
        handle_signals=False,
        access_log=None,
        # A client that hangs up cancels its handler, hence (through the
        # coalescing in the result cache) work nobody else is waiting for.
        handler_cancellation=True,
    )
    await runner.setup()
    try:
        site = web.TCPSite(
            runner,
            settings.host,
            settings.port,
            reuse_port=reuse_port or None,
        )
        await site.start()
        port = int(runner.addresses[0][1])
        log.info("gateway listening on %s:%d", settings.host, port)
        if ready is not None:
            ready(port)
        await stop.wait()
        log.info("gateway draining (at most %.1fs)", settings.shutdown_grace)
    finally:
        # Stops the listener, waits for handlers up to shutdown_timeout,
        # cancels the rest, then runs the app's cleanup (caches).
        await runner.cleanup()
