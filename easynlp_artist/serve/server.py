"""``easynlp --app_name=text2image_artist --mode=serve``: an OpenAI-compatible images API.

FastAPI + uvicorn around the continuous-batching :class:`~easynlp_artist.serve.engine.Engine`:

* ``POST /v1/images/generations`` — the OpenAI images shape (``prompt``, ``n``, ``size``,
  ``response_format``, ``model``, ``user``) plus ``seed``, ``negative_prompt``, ``guidance_scale``,
  ``top_k``, ``top_p``, ``temperature``; ``stream: true`` with ``partial_images`` gives the OpenAI
  server-sent events ``image_generation.partial_image`` and ``image_generation.completed``;
* ``POST /v1/entities`` (``{"triples": [[head, relation, tail], ...]}``) teaches the model new
  entities from their facts, ``DELETE /v1/entities/{name}`` forgets one (:mod:`..knowledge.extend`);
  both only with the admin key (``admin_key``), which is separate from the API key;
* ``GET /v1/models``, ``/health`` (alive), ``/ready`` (model loaded), ``/metrics`` (Prometheus);
* ``GET /`` — the web page (``page.py``).

The model loads in the background after the port is open (``/ready`` then says so; generation
answers 503 until it is). SIGTERM drains: uvicorn stops accepting, running requests finish, the
engine stops, the process exits 0. Errors are OpenAI-shaped: ``{"error": {"message", "type",
"param", "code"}}``. The server keeps no state between requests, so replicas behind a load
balancer need nothing shared.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field

from easynlp_artist.serve.engine import (
    Cancelled,
    Engine,
    EngineClosed,
    EngineConfig,
    ImageRequest,
    QueueFull,
    RequestTimeout,
)
from easynlp_artist.serve.page import PAGE

logger = logging.getLogger(__name__)

API_KEY_ENV = "ARTIST_API_KEY"
ADMIN_KEY_ENV = "ARTIST_ADMIN_KEY"
MAX_TRIPLES = 1000  # facts one POST /v1/entities may carry


@dataclass
class ServerSettings:
    """What the server needs besides the model (from ``ServeParams``, parsed once in the app)."""

    api_key: str | None = None
    admin_key: str | None = None  # editing knowledge over HTTP; None: off
    max_queue: int = 64
    max_batch_rows: int = 32
    request_timeout: float = 300.0
    max_body_bytes: int = 64 * 1024
    max_prompt_chars: int = 512
    decode_processes: bool | None = None  # EngineConfig.decode_processes

    def __repr__(self) -> str:  # the key never reaches a log line
        shown = {k: ("***" if k.endswith("_key") and v else v) for k, v in self.__dict__.items()}
        return f"ServerSettings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


class GenerationBody(BaseModel):
    """The request body; unknown fields are refused (422 naming them)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    n: int = Field(1, ge=1, le=10)
    size: str | None = None
    response_format: Literal["b64_json"] | None = None
    model: str | None = None
    user: str | None = None
    stream: bool = False
    partial_images: int = Field(0, ge=0, le=3)
    output_format: Literal["png"] | None = None
    # extensions
    seed: int | None = Field(None, ge=0, lt=2**63)
    negative_prompt: str | None = None
    guidance_scale: float | None = Field(None, ge=0.0)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    temperature: float | None = Field(None, gt=0.0)


class EntitiesBody(BaseModel):
    """New entities as their facts: each ``[head, relation, tail]`` links one new entity to known
    entities (or to another new one of the same request) by a known relation."""

    model_config = ConfigDict(extra="forbid")

    triples: list[tuple[str, str, str]] = Field(min_length=1, max_length=MAX_TRIPLES)


def error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
          headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JSONResponse(body, status_code=status, headers=headers)


class Metrics:
    def __init__(self, state: ServerState) -> None:
        self.registry = r = CollectorRegistry()

        def stat(name: str) -> Callable[[], float]:
            return lambda: float(state.engine.stats()[name]) if state.engine is not None else 0.0

        for metric, key, help_ in (
            ("artist_queue_depth", "queued", "requests waiting to join the batch"),
            ("artist_running_requests", "running_requests", "requests in the running batch"),
            ("artist_running_rows", "running_rows", "rows in the running batch (a guided image is two)"),
            ("artist_decoding_requests", "decoding", "requests drawn and waiting for the image decoder"),
            ("artist_batch_rows_peak", "peak_rows", "most rows ever decoded in one step"),
            ("artist_batch_requests_peak", "peak_requests", "most requests ever in the batch at once"),
            ("artist_images_per_second", "images_per_second", "images finished per second over the last minute"),
            ("artist_steps", "steps", "batch steps since the start (one code for every running row)"),
            ("artist_step_rows", "step_rows", "running rows summed over the steps (/ artist_steps: mean batch rows)"),
        ):
            Gauge(metric, help_, registry=r).set_function(stat(key))
        self.images = Counter("artist_images", "images generated", registry=r)
        self.requests = Counter("artist_requests", "generation requests answered", ["status"], registry=r)
        self.rejected = Counter("artist_rejected_requests", "requests refused", ["reason"], registry=r)
        self.latency = Histogram("artist_request_latency_seconds", "generation request latency", registry=r,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300))


class ServerState:
    def __init__(self, settings: ServerSettings, size: str | None, model_name: str) -> None:
        self.settings = settings
        self.size = size
        self.model_name = model_name
        self.engine: Engine | None = None
        self.defaults = None  # the model's SamplingConfig
        self.load_error: str | None = None
        self.metrics = Metrics(self)


def create_app(load: Callable[[], Any], settings: ServerSettings, model_name: str) -> FastAPI:
    """The ASGI app. ``load()`` returns the pipeline (called in a background thread at startup);
    its ``sampling`` are the defaults of every request."""
    state = ServerState(settings, None, model_name)

    def load_model() -> None:
        try:
            pipe = load()
            res = pipe.model.config.vqgan.resolution
            state.size = f"{res}x{res}"
            state.defaults = pipe.sampling
            state.engine = Engine(pipe, EngineConfig(max_batch_rows=settings.max_batch_rows, max_queue=settings.max_queue,
                                                     decode_processes=settings.decode_processes))
            logger.info("model %s loaded: %s images, %s", model_name, state.size, settings)
        except Exception as exc:  # noqa: BLE001 - reported by /ready and the log; the process stays up
            state.load_error = f"{type(exc).__name__}: {exc}"
            logger.exception("loading the model failed")

    async def lifespan(app: FastAPI):
        threading.Thread(target=load_model, name="artist-load", daemon=True).start()
        yield
        if state.engine is not None:  # uvicorn has let running requests finish: stop the engine
            state.engine.close(drain=True, timeout=settings.request_timeout)
            logger.info("engine stopped")

    app = FastAPI(title="easynlp-artist", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.artist = state

    def limit_body(method: str, length: str | None) -> JSONResponse | None:
        if method == "POST" and (length is None or not length.isdigit()):
            return error(411, "a Content-Length header is required", kind="invalid_request_error")
        if length is not None and length.isdigit() and int(length) > settings.max_body_bytes:
            state.metrics.rejected.labels("body_too_large").inc()
            return error(413, f"request body of {length} bytes exceeds max_body_bytes={settings.max_body_bytes}")
        return None

    app.add_middleware(RefuseBeforeBody, check=limit_body)

    def unauthorized(request: Request, key: str | None = settings.api_key, what: str = "API key") -> JSONResponse | None:
        if not key:
            return None
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), key.encode()):
            state.metrics.rejected.labels("unauthorized").inc()
            return error(401, f"missing or wrong {what} (Authorization: Bearer <key>)", kind="authentication_error",
                         headers={"WWW-Authenticate": "Bearer"})
        return None

    def not_admin(request: Request) -> JSONResponse | None:
        if not settings.admin_key:
            return error(403, "editing knowledge is off on this server: start it with admin_key=... "
                              f"(or ${ADMIN_KEY_ENV})", kind="permission_error")
        return unauthorized(request, settings.admin_key, "admin key")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        field = ".".join(loc) or "body"
        state.metrics.rejected.labels("invalid").inc()
        return error(422, f"{field}: {first.get('msg', 'invalid')}", param=field)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        if state.engine is None:
            return JSONResponse({"ready": False, "error": state.load_error}, status_code=503)
        return JSONResponse({"ready": True, "model": model_name, "size": state.size})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE

    @app.get("/v1/models")
    async def models(request: Request):
        if (denied := unauthorized(request)) is not None:
            return denied
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "easynlp-artist"}]}

    def edit_knowledge(request: Request, edit: Callable[[Any], Any]) -> Any:
        if (denied := not_admin(request)) is not None:
            return denied
        if state.engine is None:
            return error(503, "no model loaded yet", kind="server_error", headers={"Retry-After": "5"})
        pipe = state.engine.pipe
        if pipe.lattice is None:
            return error(400, "this model has no knowledge part: it cannot learn entities", kind="invalid_request_error")
        try:
            return edit(pipe)
        except KeyError as exc:
            return error(404, str(exc.args[0]), "name", kind="not_found_error")
        except ValueError as exc:  # a triple that names an unknown relation or neighbour, a known name, ...
            return error(422, str(exc), "triples")

    @app.post("/v1/entities")
    async def add_entities(body: EntitiesBody, request: Request):
        def add(pipe) -> dict:
            added = pipe.add_entities([tuple(t) for t in body.triples])
            logger.info("added %d entities over HTTP: %s", len(added), ", ".join(added[:10]))
            return {"object": "list", "added": added, "entities": len(pipe.entities)}

        return await asyncio.to_thread(edit_knowledge, request, add)

    @app.delete("/v1/entities/{name}")
    async def remove_entity(name: str, request: Request):
        def remove(pipe) -> dict:
            pipe.remove_entities([name])
            logger.info("removed entity %s over HTTP", name)
            return {"object": "entity", "name": name, "deleted": True, "entities": len(pipe.entities)}

        return await asyncio.to_thread(edit_knowledge, request, remove)

    def check(body: GenerationBody) -> JSONResponse | ImageRequest:
        if state.engine is None:
            why = f" ({state.load_error})" if state.load_error else " yet"
            return error(503, f"no model loaded{why}", kind="server_error", headers={"Retry-After": "5"})
        if body.model is not None and body.model != model_name:
            return error(400, f"model {body.model!r} is not served here; this server serves {model_name!r}", "model")
        if body.size is not None and body.size not in (state.size, "auto"):
            return error(400, f"size {body.size!r} is not supported; this model makes {state.size} images", "size")
        for name in ("prompt", "negative_prompt"):
            text = getattr(body, name)
            if text is not None and len(text) > settings.max_prompt_chars:
                return error(422, f"{name}: {len(text)} characters, more than max_prompt_chars="
                                  f"{settings.max_prompt_chars}", name)
        try:
            sampling = state.defaults.updated(guidance_scale=body.guidance_scale, top_k=body.top_k,
                                              top_p=body.top_p, temperature=body.temperature)
        except ValueError as exc:
            return error(422, str(exc))
        return ImageRequest(body.prompt, n=body.n, sampling=sampling, seed=body.seed,
                            negative_prompt=body.negative_prompt, timeout=settings.request_timeout,
                            partial_images=body.partial_images if body.stream else 0)

    def submit(image_request: ImageRequest):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def listener(*event) -> None:  # scheduler thread → this request's event loop
            loop.call_soon_threadsafe(events.put_nowait, event)

        try:
            return state.engine.submit(image_request, listener), events
        except QueueFull as exc:
            state.metrics.rejected.labels("queue_full").inc()
            return error(429, f"server busy: {exc}", kind="rate_limit_error", headers={"Retry-After": "1"}), None
        except EngineClosed as exc:
            state.metrics.rejected.labels("shutting_down").inc()
            return error(503, str(exc), kind="server_error"), None
        except ValueError as exc:
            return error(400, str(exc), "n"), None

    def failure(job, exc: BaseException) -> JSONResponse:
        if isinstance(exc, RequestTimeout):
            state.metrics.requests.labels("timeout").inc()
            return error(504, str(exc), kind="timeout_error")
        state.metrics.requests.labels("error").inc()
        logger.error("request %s failed: %s: %s", job.id, type(exc).__name__, exc)
        return error(500, f"the request failed (id {job.id}; see the server log)", kind="server_error")

    def done(job, images: list[bytes]) -> None:
        state.metrics.images.inc(len(images))
        state.metrics.requests.labels("ok").inc()
        state.metrics.latency.observe(time.monotonic() - job.submitted)

    @app.post("/v1/images/generations")
    async def generations(body: GenerationBody, request: Request):
        if (denied := unauthorized(request)) is not None:
            return denied
        checked = check(body)
        if isinstance(checked, JSONResponse):
            return checked
        job, events = submit(checked)
        if events is None:
            return job
        if body.stream:  # StreamingResponse ends the stream (and so cancels the job) when the client goes
            return StreamingResponse(stream(job, events, checked), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Request-Id": job.id})
        gone = asyncio.ensure_future(disconnected(request))
        try:
            while True:
                event = asyncio.ensure_future(events.get())
                await asyncio.wait((event, gone), return_when=asyncio.FIRST_COMPLETED)
                if not event.done():
                    event.cancel()
                    job.cancel()  # the engine frees its rows at the next step boundary
                    state.metrics.requests.labels("disconnected").inc()
                    return Response(status_code=499)
                kind, *payload = event.result()
                if kind == "done":
                    done(job, payload[0])
                    return {"created": int(time.time()),
                            "data": [{"b64_json": base64.b64encode(png).decode()} for png in payload[0]]}
                if kind == "error":
                    if isinstance(payload[0], Cancelled):
                        return Response(status_code=499)
                    return failure(job, payload[0])
        finally:
            gone.cancel()
            if not job.finished.is_set():
                job.cancel()

    def event(kind: str, png: bytes, **extra) -> str:
        data = {"type": f"image_generation.{kind}", "b64_json": base64.b64encode(png).decode(),
                "created_at": int(time.time()), "size": state.size, "quality": "auto",
                "background": "opaque", "output_format": "png", **extra}
        return f"event: image_generation.{kind}\ndata: {json.dumps(data)}\n\n"

    async def stream(job, events: asyncio.Queue, image_request: ImageRequest):
        try:
            while True:
                kind, *payload = await events.get()
                if kind == "partial":
                    for png in payload[1]:
                        yield event("partial_image", png, partial_image_index=payload[0])
                elif kind == "done":
                    done(job, payload[0])
                    usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
                             "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}}
                    for png in payload[0]:
                        yield event("completed", png, usage=usage)
                    return
                else:
                    exc = payload[0]
                    message = str(exc) if isinstance(exc, RequestTimeout) else \
                        f"the request failed (id {job.id}; see the server log)"
                    if not isinstance(exc, (Cancelled, RequestTimeout)):
                        logger.error("request %s failed: %s: %s", job.id, type(exc).__name__, exc)
                    yield f"event: error\ndata: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"
                    return
        finally:  # a client that went away: its rows leave the batch at the next step
            if not job.finished.is_set():
                job.cancel()

    return app


def _draining_server(config):
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """SIGTERM/SIGINT drain (uvicorn's graceful shutdown) and end the run normally: uvicorn would
        raise the signal again after shutting down, which the easynlp command reports as killed."""

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

    return DrainingServer(config)


class RefuseBeforeBody:
    """ASGI middleware: ``check(method, content_length)`` may answer an HTTP request before its body
    is read. Plain ASGI, not ``BaseHTTPMiddleware``: the app keeps the server's own ``receive``, so
    waiting for a client's disconnect costs nothing while its request runs."""

    def __init__(self, app, check: Callable[[str, str | None], Response | None]) -> None:
        self.app = app
        self.check = check

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            length = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"content-length"), None)
            if (refused := self.check(scope["method"], length)) is not None:
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def disconnected(request: Request) -> None:
    """Returns when the client has gone. The body is read by then, so the server's next ASGI
    message is ``http.disconnect`` (uvicorn sends it when the connection closes)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def serve(load: Callable[[], Any], settings: ServerSettings, model_name: str, host: str, port: int) -> None:
    """Run until SIGINT/SIGTERM (which drain: stop accepting, finish running requests, return)."""
    import uvicorn

    app = create_app(load, settings, model_name)
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        logger.warning("serving on %s without an API key: anyone who can reach the port can generate", host)
    config = uvicorn.Config(app, host=host, port=port, log_level="info", access_log=False,
                            timeout_graceful_shutdown=int(settings.request_timeout) + 5)
    _draining_server(config).run()
    logger.info("server stopped")


def api_key_from(value: str | None, env: str = API_KEY_ENV) -> str | None:
    """A key: the given one, else the environment variable ``env`` (None: none)."""
    return value or os.environ.get(env) or None
