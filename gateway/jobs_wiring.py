"""Wiring the asynchronous job API into a gateway.

``run_gateway`` opens the installation's job store (:func:`dora.layout.job_store_path`,
one SQLite file under the data directory, shared with the scheduler's
dispatcher and the other gateway processes) and gives the gateway context
the store and the ``persistentOps`` upload hook (:func:`with_jobs`);
``build_app`` adds the routes of :mod:`dora.gateway.pfop` and
:mod:`dora.gateway.manage` (:func:`add_job_routes`) ahead of the catch-all
download route. Without a store the routes answer 503.

Notify URLs are checked at submit time by the SSRF guard
(:mod:`dora.ssrf`, allow list from ``DORA_SSRF_ALLOW``) so that a job that
can never notify is refused at once; the dispatcher checks again at delivery.
"""

from __future__ import annotations

import asyncio
import dataclasses

from aiohttp import web

from dora.errors import BadRequest
from dora.gateway.context import GatewayContext
from dora.gateway.manage import ManagementApi
from dora.gateway.pfop import PfopApi
from dora.gateway.submit import (
    JobSubmitter,
    UrlGuard,
    persistent_ops_check,
    persistent_ops_hook,
)
from dora.jobstore import JobStore
from dora.layout import dispatch_socket_path
from dora.ssrf import IPNetwork, allow_list, resolve_checked
from dora.wakeup import Waker

__all__ = ["add_job_routes", "ssrf_guard", "with_jobs"]

RESOLVE_TIMEOUT = 5.0  # seconds to resolve a notify URL's host at submit time


def ssrf_guard(allow: tuple[IPNetwork, ...] | None = None) -> UrlGuard:
    """A notify-URL check: every address of its host may be reached (``allow`` from env)."""
    networks = allow_list() if allow is None else allow

    async def guard(url: str) -> None:
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                await resolve_checked(url, networks)
        except TimeoutError:
            raise BadRequest(
                f"notifyURL: its host did not resolve within {RESOLVE_TIMEOUT:g}s"
            ) from None

    return guard


def _submitter(ctx: GatewayContext) -> JobSubmitter | None:
    if ctx.jobs is None:
        return None
    return JobSubmitter(
        ctx.jobs,
        ctx.store,
        ctx.catalog,
        ctx.settings.limits,
        url_guard=ssrf_guard(),
        wake=_waker(ctx),
    )


def _waker(ctx: GatewayContext) -> Waker:
    """Tells the dispatcher a job was queued, so that it leases it at once."""
    return Waker(dispatch_socket_path(ctx.settings))


def with_jobs(ctx: GatewayContext, jobs: JobStore) -> GatewayContext:
    """``ctx`` with the job store and the ``persistentOps`` upload hook."""
    ctx = dataclasses.replace(ctx, jobs=jobs)
    submitter = _submitter(ctx)
    assert submitter is not None
    return dataclasses.replace(
        ctx,
        before_upload=persistent_ops_check(submitter),
        after_upload=persistent_ops_hook(submitter),
    )


def add_job_routes(router: web.UrlDispatcher, ctx: GatewayContext) -> None:
    """Add ``/pfop``, ``/status/get/prefop`` and ``/v1/...``; before the catch-all."""
    PfopApi(ctx, _submitter(ctx)).add_routes(router)
    ManagementApi(ctx, ctx.jobs, wake=_waker(ctx)).add_routes(router)
