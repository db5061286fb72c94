"""The management API of asynchronous jobs: pipelines and jobs, over signed REST.

Every call is signed like pfop (``Authorization: QBox ...`` or ``Qiniu ...``
over the raw path and query, see :mod:`dora.gateway.signed`); any access
key of the installation may manage. Bodies are form-encoded or JSON
objects; a QBox signature does not cover a JSON body, so JSON needs the
Qiniu scheme. Answers are JSON, never cached; errors are Qiniu's
``{"code", "error"}``.

Pipelines (``<name>``: 1-64 of ``A-Z a-z 0-9 _ -``; ``default`` always
exists and cannot be deleted)::

    POST   /v1/pipelines                 name, concurrency?, maxQueued?  → pipeline
    GET    /v1/pipelines                 → {"items": [pipeline, ...]}
    GET    /v1/pipelines/<name>          → pipeline
    PATCH  /v1/pipelines/<name>          concurrency?, maxQueued?        → pipeline
    POST   /v1/pipelines/<name>/pause    stop leasing its jobs (it still accepts new ones)
    POST   /v1/pipelines/<name>/resume
    DELETE /v1/pipelines/<name>          → {"name", "deleted": true}; 409 while it holds
                                           queued or running jobs

A pipeline is ``{"name", "concurrency", "maxQueued", "paused", "created",
"jobs": {"queued", "running", "done", "failed"}}``. Creating a taken name
is 409; an unknown one is 404.

Jobs (newest first; ``state`` is queued, running, done or failed)::

    GET    /v1/jobs?state=&pipeline=&limit=&marker=  → {"items": [job, ...], "marker"}
    GET    /v1/jobs/<id>                 → job
    POST   /v1/jobs/<id>/cancel          a queued job fails at once ("cancelled"); a
                                         running one is asked to stop → job
    POST   /v1/jobs/<id>/retry           only a failed job (code 3; else 409) → job

``marker`` pages on: pass the answer's back until it is ``""``. A job is its
prefop status JSON plus ``state``, ``fops``, ``notifyURL``, ``force``,
``type``, ``attempts``, ``error``, ``cancelRequested``, ``notifyState``,
``notifyAttempts``, ``created``, ``updated`` and ``finished`` (Unix
seconds). An unknown job id is 612.

The ``GET`` paths shadow the keys ``pipelines…`` and ``jobs…`` of a bucket
named ``v1`` on path-style download URLs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from dora.errors import BadRequest, ServiceUnavailable
from dora.gateway.context import GatewayContext
from dora.gateway.pfop import json_answer
from dora.gateway.signed import parse_fields, signed_body
from dora.jobs import Job, JobState, Pipeline
from dora.jobstore import JobStore

__all__ = ["ManagementApi", "job_json", "pipeline_json"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_NO_COUNTS = {state.value: 0 for state in JobState}


def pipeline_json(pipeline: Pipeline, counts: Mapping[str, int] | None = None) -> dict[str, Any]:
    """A pipeline as the management API shows it."""
    return {
        "name": pipeline.name,
        "concurrency": pipeline.concurrency,
        "maxQueued": pipeline.max_queued,
        "paused": pipeline.paused,
        "created": pipeline.created,
        "jobs": dict(counts or _NO_COUNTS),
    }


def job_json(job: Job) -> dict[str, Any]:
    """A job as the management API shows it: its prefop status and its bookkeeping."""
    out = job.status_json()
    out.update(
        state=job.state.value,
        fops=job.fops,
        notifyURL=job.notify_url,
        force=int(job.force),
        type=job.type,
        attempts=job.attempts,
        error=job.error,
        cancelRequested=job.cancel_requested,
        notifyState=job.notify_state.value,
        notifyAttempts=job.notify_attempts,
        created=job.created,
        updated=job.updated,
        finished=job.finished,
    )
    return out


def _optional_int(fields: Mapping[str, Any], name: str) -> int | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 12:
        return int(value.strip())
    raise BadRequest(f"{name} must be a positive integer, not {value!r}")


def _state(text: str) -> JobState | None:
    if not text:
        return None
    try:
        return JobState(text)
    except ValueError:
        states = ", ".join(state.value for state in JobState)
        raise BadRequest(f"invalid state {text!r}: one of {states}") from None


class ManagementApi:
    """The ``/v1`` handlers of one gateway (``jobs`` None: jobs are off, 503)."""

    def __init__(
        self,
        ctx: GatewayContext,
        jobs: JobStore | None,
        *,
        wake: Callable[[], object] | None = None,
    ) -> None:
        self._ctx = ctx
        self._wake = wake  # tells the dispatcher a retried job is queued again
        self._jobs = jobs

    def add_routes(self, router: web.UrlDispatcher) -> None:
        routes: list[tuple[str, str, Handler]] = [
            ("POST", "/v1/pipelines", self.create_pipeline),
            ("GET", "/v1/pipelines", self.list_pipelines),
            ("GET", "/v1/pipelines/{name}", self.get_pipeline),
            ("PATCH", "/v1/pipelines/{name}", self.update_pipeline),
            ("DELETE", "/v1/pipelines/{name}", self.delete_pipeline),
            ("POST", "/v1/pipelines/{name}/pause", self.pause_pipeline),
            ("POST", "/v1/pipelines/{name}/resume", self.resume_pipeline),
            ("GET", "/v1/jobs", self.list_jobs),
            ("GET", "/v1/jobs/{id}", self.get_job),
            ("POST", "/v1/jobs/{id}/cancel", self.cancel_job),
            ("POST", "/v1/jobs/{id}/retry", self.retry_job),
        ]
        for method, path, handler in routes:
            router.add_route(method, path, handler)

    async def _signed(self, request: web.Request) -> tuple[JobStore, Mapping[str, Any]]:
        """Verify the request; the store and the body's fields."""
        body = await signed_body(request, self._ctx.keyring)
        if self._jobs is None:
            raise ServiceUnavailable("asynchronous jobs are not enabled on this gateway")
        return self._jobs, parse_fields(request, body)

    async def _pipeline_answer(self, jobs: JobStore, pipeline: Pipeline) -> web.Response:
        counts = await jobs.counts()
        return json_answer(pipeline_json(pipeline, counts.get(pipeline.name)))

    # -- pipelines ------------------------------------------------------------

    async def create_pipeline(self, request: web.Request) -> web.Response:
        jobs, fields = await self._signed(request)
        name = fields.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest("name is required")
        pipeline = await jobs.create_pipeline(
            name, _optional_int(fields, "concurrency"), _optional_int(fields, "maxQueued")
        )
        return await self._pipeline_answer(jobs, pipeline)

    async def list_pipelines(self, request: web.Request) -> web.Response:
        jobs, _ = await self._signed(request)
        pipelines = await jobs.list_pipelines()
        counts = await jobs.counts()
        return json_answer({"items": [pipeline_json(p, counts.get(p.name)) for p in pipelines]})

    async def get_pipeline(self, request: web.Request) -> web.Response:
        jobs, _ = await self._signed(request)
        return await self._pipeline_answer(
            jobs, await jobs.get_pipeline(request.match_info["name"])
        )

    async def update_pipeline(self, request: web.Request) -> web.Response:
        jobs, fields = await self._signed(request)
        concurrency = _optional_int(fields, "concurrency")
        max_queued = _optional_int(fields, "maxQueued")
        if concurrency is None and max_queued is None:
            raise BadRequest("give concurrency, maxQueued or both")
        pipeline = await jobs.update_pipeline(
            request.match_info["name"], concurrency=concurrency, max_queued=max_queued
        )
        return await self._pipeline_answer(jobs, pipeline)

    async def delete_pipeline(self, request: web.Request) -> web.Response:
        jobs, _ = await self._signed(request)
        name = request.match_info["name"]
        await jobs.delete_pipeline(name)
        return json_answer({"name": name, "deleted": True})

    async def pause_pipeline(self, request: web.Request) -> web.Response:
        jobs, _ = await self._signed(request)
        return await self._pipeline_answer(jobs, await jobs.pause(request.match_info["name"]))

    async def resume_pipeline(self, request: web.Request) -> web.Response:
        jobs, _ = await self._signed(request)
        return await self._pipeline_answer(jobs, await jobs.resume(request.match_info["name"]))

    # -- jobs -----------------------------------------------------------------

    async def list_jobs(self, request: web.Request) -> web.Response:
        jobs, _ = await self._signed(request)
        query = request.query
        limit = _optional_int(query, "limit")
        page = await jobs.list(
            state=_state(query.get("state", "")),
            pipeline=query.get("pipeline") or None,
            limit=100 if limit is None else limit,
            marker=query.get("marker") or None,
        )
        return json_answer({"items": [job_json(job) for job in page.jobs], "marker": page.marker})

    async def get_job(self, request: web.Request) -> web.Response:
        jobs, _ = await self._signed(request)
        return json_answer(job_json(await jobs.get(request.match_info["id"])))

    async def cancel_job(self, request: web.Request) -> web.Response:
        jobs, _ = await self._signed(request)
        return json_answer(job_json(await jobs.cancel(request.match_info["id"])))

    async def retry_job(self, request: web.Request) -> web.Response:
        jobs, _ = await self._signed(request)
        job = await jobs.retry(request.match_info["id"])
        if self._wake is not None:  # queued again: leased now, not at the next poll
            self._wake()
        return json_answer(job_json(job))
