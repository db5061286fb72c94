"""``POST /pfop`` and ``GET /status/get/prefop``: Qiniu's asynchronous job API.

``POST /pfop/`` (and ``/pfop``), a form-encoded body::

    bucket=<bucket>&key=<key>&fops=<chain>[;<chain>...]
        [&notifyURL=<url>][&force=1][&pipeline=<name>][&type=1]

signed with ``Authorization: QBox ...`` or ``Qiniu ...`` (401 otherwise, see
:mod:`dora.gateway.signed`). Every field is checked before the job is
queued (:mod:`dora.gateway.submit`); the answer is Qiniu's
``{"persistentId": "<id>"}``, and the job's ``reqid`` is this request's
``X-Reqid``. A full pipeline is 429 with ``Retry-After``.

``GET /status/get/prefop?id=<id>`` answers the job's status JSON
(:meth:`dora.jobs.Job.status_json`, the body a notify POSTs too); an unknown
id is HTTP 612 ``{"code": 612, "error": "..."}``. Like Qiniu's, it needs no
signature (the SDK sends one anyway; it is ignored): the id is the secret.
Answers are never cached: a status changes.

Both paths are API routes on the same listener as downloads, so they shadow
the object ``get/prefop`` of a bucket named ``status``.
"""

from __future__ import annotations

import json

from aiohttp import web

from dora.errors import BadRequest, ServiceUnavailable, UnknownJob
from dora.gateway.context import GatewayContext
from dora.gateway.errors import request_id
from dora.gateway.signed import parse_form, signed_body
from dora.gateway.submit import JobSubmitter, PfopRequest, parse_flag, parse_type

__all__ = ["PfopApi", "json_answer"]

NO_STORE = {"Cache-Control": "no-store"}
MAX_JOB_ID = 100  # job ids are at most this long (dora.jobs)


def json_answer(body: object, status: int = 200) -> web.Response:
    """A JSON answer that no cache keeps."""
    return web.Response(
        status=status,
        text=json.dumps(body, ensure_ascii=False),
        content_type="application/json",
        headers=NO_STORE,
    )


def _required(form: dict[str, str], name: str) -> str:
    value = form.get(name, "")
    if not value:
        raise BadRequest(f"{name} is required")
    return value


class PfopApi:
    """The pfop and prefop handlers of one gateway (``submitter`` None: jobs are off)."""

    def __init__(self, ctx: GatewayContext, submitter: JobSubmitter | None) -> None:
        self._ctx = ctx
        self._submitter = submitter

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/pfop", self.handle_pfop)
        router.add_post("/pfop/", self.handle_pfop)
        router.add_get("/status/get/prefop", self.handle_prefop)

    def _jobs_on(self) -> JobSubmitter:
        if self._submitter is None:
            raise ServiceUnavailable("asynchronous jobs are not enabled on this gateway")
        return self._submitter

    async def handle_pfop(self, request: web.Request) -> web.Response:
        """``POST /pfop``: check, queue, answer ``{"persistentId"}``."""
        body = await signed_body(request, self._ctx.keyring)
        submitter = self._jobs_on()
        if request.content_type != "application/x-www-form-urlencoded":
            raise BadRequest("want an application/x-www-form-urlencoded body")
        form = parse_form(body)
        if form.get("workflowTemplateID"):
            raise BadRequest("workflowTemplateID is not supported: give fops")
        req = PfopRequest(
            bucket=_required(form, "bucket"),
            key=_required(form, "key"),
            fops=_required(form, "fops"),
            notify_url=form.get("notifyURL", "").strip(),
            force=parse_flag("force", form.get("force", "")),
            pipeline=form.get("pipeline", "").strip(),
            type=parse_type(form.get("type", "")),
            reqid=request_id(request),
        )
        job = await submitter.submit(req)
        return json_answer({"persistentId": job.id})

    async def handle_prefop(self, request: web.Request) -> web.Response:
        """``GET /status/get/prefop?id=``: the job's status JSON, or 612."""
        submitter = self._jobs_on()
        job_id = request.query.get("id", "")
        if not job_id:
            raise BadRequest("id is required")
        if len(job_id) > MAX_JOB_ID:
            raise UnknownJob(f"no such job: {job_id[:MAX_JOB_ID]}...")
        job = await submitter.jobs.get(job_id)
        return json_answer(job.status_json())
