"""HTTP steps on Litestar.

Bodies are read raw and decoded here, not by Litestar's parser, because the
stock path answers 500 to invalid UTF-8 and to deeply nested JSON and accepts
JSON sent as ``text/plain`` (which a browser can send cross-site without a
preflight). Every rejection is a 4xx naming what is wrong, and nothing is
written to Redis for a rejected request.

One module because the edge is one path: parsing, the depth gate, uploads and the answer
shapes share ``Reject`` and the same 4xx rules; split, each piece would re-import the rest.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import msgspec
import redis
from litestar import Litestar, MediaType, Request, Response, route
from litestar.exceptions import HTTPException, InternalServerException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.types import ExceptionHandlersMap, Method
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from iii_console.adapters.downloads import BadAnswer, NotFound, download_response, progress_response
from iii_console.adapters.queue.errors import PayloadTooLarge
from iii_console.core import ids, spans
from iii_console.core.answers import ProgressStream, is_answer
from iii_console.core.blobs import BlobError, BlobNotFound, BlobTooLarge
from iii_console.core.context import HttpRequest
from iii_console.core.discovery import emit_step_error
from iii_console.core.errors import redis_is_full, redis_refuses_writes, user_traceback
from iii_console.core.events import loads_finite
from iii_console.core.services import Services
from iii_console.core.steps import HttpTrigger, InvalidInput, JsonSchema, Step, validate_input

log = logging.getLogger(__name__)


class AsyncClients(Protocol):
    """The async clients a runner keeps on the server's loop; the server reads their Redis client."""

    @property
    def client(self) -> Any: ...

    @property
    def producer(self) -> Any: ...


class Runner(Protocol):
    """What the server needs of the step runner (:class:`iii_console.runtime.runner.StepRunner`).

    The server is an adapter: it states what it calls instead of importing the runtime
    that builds it.
    """

    services: Services

    @property
    def async_side(self) -> AsyncClients: ...

    @property
    def has_async_side(self) -> bool: ...

    def open_async_side(self) -> None: ...

    async def close_async_side(self) -> None: ...

    def queue_names(self, topic: str) -> list[str]: ...

    async def call_async(self, step: Step, input: Any, *, atomic: bool = False, **ctx_kw: Any) -> Any: ...

    def runs_in_unit(self, step: Step) -> bool: ...


JSON_TYPES = ("application/json",)
BODY_METHODS = ("POST", "PUT", "PATCH")


class Reject(Exception):
    def __init__(self, status: int, error: str, **detail: Any):
        self.status, self.error, self.detail = status, error, detail


#: An ``Idempotency-Key`` header value ctx.idempotency_key accepts (it becomes part of a Redis key).
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def _problem(status: int, error: str, headers: dict[str, str] | None = None, **detail: Any) -> Response[Any]:
    return Response({"error": error, **detail}, status_code=status, headers=headers)


def parse_json_body(raw: bytes, content_type: str, schema: type[BaseModel] | JsonSchema | None) -> Any:
    """Decode and validate a request body; raises :class:`Reject` with a 4xx."""
    media = content_type.split(";", 1)[0].strip().lower()
    if not (media in JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))):
        raise Reject(415, "unsupported media type", detail=f"send Content-Type: application/json, not {media or 'nothing'!r}")
    if not raw.strip():
        if schema is None:
            return None
        raise Reject(400, "request body is required")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Reject(400, "request body is not valid UTF-8", position=exc.start) from None
    try:
        data = loads_finite(text)  # NaN, Infinity and 1e999 are no JSON numbers: events must stay strict JSON
    except RecursionError:
        raise Reject(400, "request body is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise Reject(400, "request body is not valid JSON", detail=exc.msg, line=exc.lineno, column=exc.colno) from None
    except ValueError as exc:
        # Python refuses integers of more than 4,300 digits (a CPU guard against
        # quadratic parsing), and loads_finite non-finite numbers; that is the client's body, not our failure.
        raise Reject(400, "request body is not valid JSON", detail=str(exc)) from None
    if schema is None:
        return data
    try:
        return validate_input(schema, data)
    except ValidationError as exc:
        fields = [
            {"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise Reject(400, "invalid request body", fields=fields) from None
    except InvalidInput as exc:
        raise Reject(400, "invalid request body", fields=exc.fields) from None
    except RecursionError:
        raise Reject(400, "request body is nested too deeply") from None


def _litestar_path(path: str) -> str:
    import re

    return re.sub(r"{([A-Za-z_][A-Za-z0-9_]*)}", r"{\1:str}", path)


class DepthGate:
    """Back-pressure: is any topic an HTTP step enqueues to over ``limit`` waiting messages?

    Depths are refreshed by one background task every ``interval`` seconds (one
    pipelined ``LLEN`` round), never per request, so the check costs a request nothing.
    Requests let through since the last refresh count as waiting too: on a busy loop
    a refresh can lag by a second, and a flood would otherwise overshoot the limit
    by everything it sent in that time.
    """

    def __init__(self, runner: Runner, topics: set[str], limit: int, interval: float = 0.1):
        self.runner, self.limit, self.interval = runner, limit, interval
        keys = runner.services.keys
        self.queues = {t: [keys.queue(q) for q in runner.queue_names(t)] for t in topics}
        self.depth: dict[str, int] = {}
        #: topic -> requests let through since the depths were last read
        self.admitted: dict[str, int] = {}
        self._task: Any = None
        self._closed = False

    def over(self, topics: list[str]) -> str | None:
        if not self.limit:
            return None
        if self._task is None and not self._closed:  # a request still on a retired app must not restart it
            import asyncio

            self._task = asyncio.get_running_loop().create_task(self._refresh())
        full = next((t for t in topics if self.depth.get(t, 0) + self.admitted.get(t, 0) > self.limit), None)
        if full is None:
            for t in topics:
                self.admitted[t] = self.admitted.get(t, 0) + 1
        return full

    async def aclose(self) -> None:
        """Stop the refresh task (before the Redis client it uses is closed).

        A cancellation that lands inside a redis-py call can be absorbed by its
        connection cleanup, so the loop also checks ``_closed`` and the cancel is
        repeated until the task has ended.
        """
        import asyncio

        self._closed = True
        task, self._task = self._task, None
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.debug("queue depth refresher ended with %r", task.exception())

    async def _refresh(self) -> None:
        import asyncio

        while not self._closed:
            try:
                counted = dict(self.admitted)  # what the reads below will include (or nearly)
                # A broker other than Redis (RabbitMQ) counts its own queues.
                depths = getattr(self.runner.async_side.producer, "depths", None)
                if depths is not None:
                    self.depth.update(await depths(list(self.queues)))
                else:
                    await self._read_redis_depths()
                for t in self.queues:
                    self.admitted[t] = self.admitted.get(t, 0) - counted.get(t, 0)
            except (redis.RedisError, OSError):
                pass  # Redis away: requests will get 503 from the handler path anyway
            except Exception:
                log.exception("queue depth refresh failed; retrying")
            await asyncio.sleep(self.interval)

    async def _read_redis_depths(self) -> None:
        async with self.runner.async_side.client.pipeline(transaction=False) as pipe:
            for qs in self.queues.values():
                for q in qs:
                    pipe.llen(q)
            lens = await pipe.execute()
        i = 0
        for t, qs in self.queues.items():
            self.depth[t] = sum(lens[i : i + len(qs)])
            i += len(qs)


class HttpSteps:
    """Builds the Litestar app for a set of HTTP steps."""

    def __init__(self, runner: Runner, steps: list[Step], *, max_body_bytes: int):
        self.runner = runner
        self.steps = steps
        self.max_body_bytes = max_body_bytes
        limit = runner.services.config.server.max_queue_depth
        self.gate = DepthGate(runner, {t for s in steps for t in s.enqueues}, limit)

    def _endpoint(self, step: Step, trig: HttpTrigger) -> Any:
        runner = self.runner
        emitter = runner.services.emitter

        gate = self.gate
        tracing = runner.services.tracing

        async def endpoint(request: Request[Any, Any, Any]) -> Response[Any]:
            # A handler run in a unit of work: this request's events (``http.received``, its logs)
            # ride along with the unit's one script call, ahead of the writes they led to.
            with emitter.holding(runner.runs_in_unit(step)):
                return await traced(request)

        async def traced(request: Request[Any, Any, Any]) -> Response[Any]:
            if tracing is None:
                return await handle(request, ids.trace_id())
            # Traced: the request's span is current while it runs (its enqueues carry it), and an
            # incoming W3C traceparent gives the request its trace id.
            run = tracing.http_run(
                step=step.name,
                method=request.method,
                route=trig.path,
                path=request.url.path,
                traceparent=request.headers.get("traceparent"),
            ).enter()
            try:
                response = await handle(request, run.trace_id)
            except HTTPException as exc:  # the framework's 4xx (a body over the limit) is the client's, not ours
                run.answered(exc.status_code)
                run.end(exc if exc.status_code >= 500 else None)
                raise
            except BaseException as exc:
                run.end(exc)
                raise
            run.answered(response.status_code)
            run.end()
            return response

        async def handle(request: Request[Any, Any, Any], trace_id: str) -> Response[Any]:
            full = gate.over(step.enqueues)
            if full is not None:
                return _problem(
                    429, f"topic {full!r} has more than {gate.limit} waiting messages; slow down", headers={"Retry-After": "1"}
                )
            try:
                body = None
                if trig.accept:
                    body = await receive_blob(
                        request, trig, lambda: runner.services.blobs, trig.max_body_bytes or self.max_body_bytes
                    )
                elif (
                    trig.method in BODY_METHODS
                    or trig.body_schema is not None
                    or (
                        trig.method == "DELETE"
                        and (request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers)
                    )
                ):
                    raw = await request.body()
                    body = parse_json_body(raw, request.headers.get("content-type", ""), trig.body_schema)
            except Reject as rej:
                return _problem(rej.status, rej.error, **rej.detail)
            idem = request.headers.get("idempotency-key")
            if idem is not None and not _IDEMPOTENCY_KEY.fullmatch(idem):
                return _problem(
                    400,
                    "invalid Idempotency-Key header: 1 to 255 visible ASCII characters",
                    errors=[{"field": "headers.Idempotency-Key", "message": "1 to 255 visible ASCII characters"}],
                )
            req = HttpRequest(
                body=body,
                path_params=dict(request.path_params),
                query=dict(request.query_params),
                headers={k: v for k, v in request.headers.items()},
                method=request.method,
                path=request.url.path,
            )
            emitter.emit(
                "http.received",
                trace_id=trace_id,
                step=step.name,
                data={
                    "method": req.method,
                    "path": req.path,
                    "body": body.model_dump(mode="json") if isinstance(body, BaseModel) else body,
                },
            )
            try:
                out = await runner.call_async(
                    step,
                    req,
                    atomic=True,
                    trace_id=trace_id,
                    trigger={"type": "http", "method": trig.method, "path": trig.path},
                    idempotency_key=idem,
                )
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("step %s: storage unavailable (answering 503): %s", step.name, exc)
                return _problem(503, "storage unavailable, try again shortly", headers={"Retry-After": "1"}, trace_id=trace_id)
            except PayloadTooLarge as exc:
                return _problem(
                    413,
                    str(exc),
                    topic=exc.topic,
                    size=exc.size,
                    limit=exc.limit,
                    trace_id=trace_id,
                    fields=[{"field": "body", "message": f"over queues.{exc.topic}.max_payload_bytes ({exc.limit})"}],
                )
            except BlobNotFound as exc:
                return _problem(404, str(exc), trace_id=trace_id)
            except BlobError as exc:
                return _problem(400, str(exc), trace_id=trace_id)
            except Exception as exc:
                if redis_refuses_writes(exc):  # full (maxmemory with noeviction), read-only, busy, failing to save
                    log.warning("step %s: Redis refuses writes: %s", step.name, exc)
                    what = "storage full" if redis_is_full(exc) else "storage refuses writes"
                    return _problem(503, f"{what}, try again shortly", headers={"Retry-After": "1"}, trace_id=trace_id)
                spans.fail(exc)
                emit_step_error(
                    emitter,
                    f"{type(exc).__name__}: {exc}",
                    step=step.name,
                    file=step.file,
                    trace_id=trace_id,
                    traceback=user_traceback(exc)[-8000:],
                )
                return _problem(500, "handler failed", trace_id=trace_id)
            try:
                streamed = _streamed(out)
                if streamed is not None:
                    status, headers, answer = streamed
                    headers = {**headers, "X-Trace-Id": trace_id}
                    if isinstance(answer, ProgressStream):
                        return progress_response(answer, runner.async_side.client, runner.services.keys, headers)
                    try:
                        return download_response(
                            answer,
                            runner.services.blobs,
                            status=status,
                            headers=headers,
                            range_header=request.headers.get("range"),
                        )
                    except NotFound as exc:
                        return _problem(404, str(exc), trace_id=trace_id)
                return _to_response(out, trace_id)
            except (BadReturn, BadAnswer) as exc:
                spans.fail(exc)
                emit_step_error(emitter, f"handler returned {exc}", step=step.name, file=step.file, trace_id=trace_id)
                return _problem(500, "handler failed", trace_id=trace_id)

        endpoint.__name__ = f"{step.name}_{trig.method.lower()}"
        # status_code: Litestar's default for DELETE is 204, which refuses the handler's answer body.
        return route(
            _litestar_path(trig.path),
            http_method=[cast(Method, trig.method)],
            name=f"{step.name}:{trig.method}:{trig.path}",
            status_code=200,
            request_max_body_size=(trig.max_body_bytes or self.max_body_bytes) if trig.accept else self.max_body_bytes,
        )(endpoint)

    def app(
        self, *, on_startup: list[Any] | None = None, on_shutdown: list[Any] | None = None, extra: list[Any] | None = None
    ) -> Litestar:
        handlers = [self._endpoint(s, t) for s in self.steps for t in s.of(HttpTrigger)] + list(extra or [])
        return Litestar(
            route_handlers=handlers,
            on_startup=on_startup or [],
            on_shutdown=on_shutdown or [],
            exception_handlers=_EXC_HANDLERS,
            request_max_body_size=self.max_body_bytes,
            openapi_config=None,
            # The process owns its logging (cli/run.py, runtime/worker.py): Litestar's default
            # would set the root logger to INFO with a stderr handler, so every library's INFO
            # lines (pika's channel opens, ...) reached the terminal, and the console's screen.
            logging_config=None,
            debug=False,
        )


class BadReturn(Exception):
    """A handler's return value that cannot become an HTTP answer."""


_FILENAME = re.compile(r"""(?:^|;)\s*filename\s*=\s*(?:"((?:[^"\\]|\\.){1,255})"|([^;\s"]{1,255}))""", re.I)
#: RFC 6266's ``filename*=UTF-8''%E2%82%AC.txt`` (RFC 8187: a charset, a language, a percent-encoded value).
_FILENAME_EXT = re.compile(r"""(?:^|;)\s*filename\*\s*=\s*([\w!#$&+.^`|~-]+)'[^']*'([^;\s]{1,765})""", re.I)


def upload_name(header: str) -> str | None:
    """The file name a request's ``Content-Disposition`` gives, as the client meant it, without its folders.

    ``filename*=`` (percent-encoded, with its charset) wins over ``filename=``; a quoted name's
    ``\\"`` escapes are undone; raw UTF-8 in ``filename="…"`` (what browsers send; the header
    arrives decoded as Latin-1) is read as UTF-8; a Windows path keeps its last part as a POSIX
    one does. ``None`` when there is none, or nothing printable is left.
    """
    from urllib.parse import unquote

    name: str | None = None
    ext = _FILENAME_EXT.search(header)
    if ext is not None:
        try:
            name = unquote(ext.group(2), encoding=ext.group(1), errors="strict")
        except (LookupError, UnicodeDecodeError):
            name = None
    if name is None:
        m = _FILENAME.search(header)
        if m is None:
            return None
        # Only the escapes clients write (\" and \\): an old browser's C:\Users\... path keeps its separators.
        name = re.sub(r'\\(["\\])', r"\1", m.group(1)) if m.group(1) is not None else m.group(2)
        try:
            name = name.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass  # not UTF-8 bytes: the Latin-1 reading stands
    name = "".join(c for c in re.split(r"[/\\]", name)[-1] if c.isprintable()).strip()
    return name[:255] or None


async def receive_blob(request: Request[Any, Any, Any], trig: HttpTrigger, blobs: Callable[[], Any], limit: int) -> Any:
    """Stream a raw request body of a declared type into the blob store; its ref, or :class:`Reject`.

    The name comes from a ``Content-Disposition: ...; filename="x.png"`` request header, if sent.
    Nothing is kept of a body that is refused or cut short. ``blobs()`` is the store, which
    makes its folders on first use: a folder it cannot make is the store unavailable (503).
    """
    import asyncio

    ctype = request.headers.get("content-type", "")
    if not trig.accepts(ctype):
        media = ctype.split(";", 1)[0].strip() or "nothing"
        raise Reject(
            415,
            "unsupported media type",
            detail=f"this route takes {', '.join(trig.accept)}, not {media!r}",
            accept=list(trig.accept),
            fields=[{"field": "headers.Content-Type", "message": f"one of {', '.join(trig.accept)}"}],
        )
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise Reject(413, "request body too large", limit=limit, fields=[{"field": "body", "message": f"at most {limit} bytes"}])
    name = upload_name(request.headers.get("content-disposition", ""))
    writer = None
    try:
        writer = await asyncio.to_thread(lambda: blobs().writer(limit))
        async for chunk in request.stream():
            if chunk:
                await asyncio.to_thread(writer.write, chunk)
        return await asyncio.to_thread(writer.commit, ctype.split(";", 1)[0].strip().lower(), name)
    except (RequestEntityTooLarge, BlobTooLarge):
        _abort(writer)
        raise Reject(
            413, "request body too large", limit=limit, fields=[{"field": "body", "message": f"at most {limit} bytes"}]
        ) from None
    except InternalServerException:  # the client went away mid-body
        _abort(writer)
        raise Reject(400, "request body cut short") from None
    except OSError as exc:  # the store's disk is full or gone: the client may retry later
        _abort(writer)
        log.warning("upload to %s failed: %s", trig.path, exc)
        raise Reject(503, "blob store unavailable, try again shortly", detail=exc.strerror or type(exc).__name__) from None
    except BaseException:
        _abort(writer)
        raise


def _abort(writer: Any) -> None:
    if writer is not None:
        writer.abort()


#: A header name (RFC 9110 ``token``).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _headers(extra: Any) -> dict[str, str]:
    """A handler's ``headers``, checked: a name that is not a token, or a value with a line break,
    a NUL or a character HTTP/1.1 cannot carry (outside Latin-1), is a :class:`BadReturn` (a 500
    with ``step.error``), not an answer the server fails to write after the handler ran."""
    if not isinstance(extra, dict):
        raise BadReturn(f"headers of type {type(extra).__name__}: not a dict")
    out: dict[str, str] = {}
    for k, v in extra.items():
        name, value = str(k), str(v)
        if not _HEADER_NAME.fullmatch(name):
            raise BadReturn(f"header name {name[:100]!r}: not a valid HTTP header name")
        if any(c in value for c in "\r\n\0") or (not value.isascii() and not _latin1(value)):
            raise BadReturn(f"header {name!r}: a value with a line break, a NUL or a character outside Latin-1")
        out[name] = value
    return out


def _latin1(value: str) -> bool:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _streamed(out: Any) -> tuple[int, dict[str, str], Any] | None:
    """``(status, headers, answer)`` when a handler answers with a file or a progress stream."""
    status, body = 200, out
    given: Any = {}  # the handler's headers, checked once it is a file or a stream
    if isinstance(out, dict) and "status" in out and set(out) <= {"status", "body", "headers"}:
        status, body, given = out["status"], out.get("body"), out.get("headers") or {}
    if not is_answer(body):
        return None
    headers = _headers(given)
    if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 299:
        raise BadReturn(f"status {status!r} with a file or stream body: use a 2xx status")
    return status, headers, body


def _to_response(out: Any, trace_id: str) -> Response[Any]:
    """``{"status", "body", "headers"}`` or a bare body (200) as a response.

    The body is turned into plain JSON values here (pydantic models, dataclasses, dates
    and UUIDs included), not when Litestar sends it: a value that cannot be sent then
    becomes a 500 after the handler ran, with no trace id and no ``step.error``.
    """
    headers = {"X-Trace-Id": trace_id}
    status, body = 200, out
    if isinstance(out, dict) and "status" in out and set(out) <= {"status", "body", "headers"}:
        status, body = out["status"], out.get("body")
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise BadReturn(f"status {status!r}: not an HTTP status code")
        headers.update(_headers(out.get("headers") or {}))
    if status < 200 or status in (204, 304):
        return Response(None, status_code=status, headers=headers)  # answers that carry no body
    try:
        # Encoded here, as Litestar would when sending it: text that is not valid Unicode (a lone
        # surrogate read from a request), nesting past the encoders' depth, are found now.
        encoded = msgspec.json.encode(to_jsonable_python(body))
    except (PydanticSerializationError, ValueError, TypeError, RecursionError) as exc:
        raise BadReturn(f"a body that cannot be sent as JSON: {exc}") from None
    return Response(encoded, status_code=status, headers=headers, media_type=MediaType.JSON)


def _http_exc(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    msg = {404: "no such route", 405: "method not allowed", 413: "request body too large"}.get(exc.status_code, exc.detail)
    return _problem(exc.status_code, msg, path=request.url.path, method=request.method, headers=getattr(exc, "headers", None))


_EXC_HANDLERS: ExceptionHandlersMap = {HTTPException: _http_exc}


@dataclass
class ServedApp:
    """An app the ``server`` role serves and what it holds that the role must stop with it.

    The runner (and its async clients) belongs to whoever built it; the depth gate
    is built here, so :meth:`aclose` stops it.
    """

    asgi: Any
    gate: DepthGate

    async def aclose(self) -> None:
        await self.gate.aclose()


def _broker_check(cfg: Any) -> tuple[str, Callable[[], None]] | None:
    """``/health``'s check of the broker when it is not Redis (Redis is checked anyway)."""
    if cfg.broker != "rabbitmq":
        return None
    from iii_console.adapters.queue.rmq_watch import RabbitHealth

    return "rabbitmq", RabbitHealth(cfg.rabbitmq.url, prefix=cfg.rabbitmq.prefix).check


def create_app(runner: Runner, steps: list[Step], *, max_body_bytes: int) -> ServedApp:
    """The app the ``server`` role serves. ``runner`` must have its async clients, built on the server's loop."""
    from iii_console.adapters.observability import routes

    cfg = runner.services.config
    taken = {t.path for s in steps for t in s.of(HttpTrigger)}
    extra = routes(
        runner.services.client,
        runner.services.keys,
        metrics_path="" if cfg.server.metrics_path in taken else cfg.server.metrics_path,
        health_path="" if cfg.server.health_path in taken else cfg.server.health_path,
        heartbeat_timeout=cfg.workers.heartbeat_timeout,
        broker_check=_broker_check(cfg),
    )
    if cfg.server.openapi_path and cfg.server.openapi_path not in taken:
        from litestar import get

        from iii_console.adapters.openapi import document

        doc = document(steps)

        @get(cfg.server.openapi_path, name="iii:openapi", include_in_schema=False)
        async def openapi() -> dict[str, Any]:
            return doc

        extra.append(openapi)

    http = HttpSteps(runner, steps, max_body_bytes=max_body_bytes)
    app = http.app(extra=extra)
    from iii_console.adapters.guard import guard

    guarded = guard(
        app,
        allowed_hosts=cfg.server.hosts,
        token=cfg.server.auth_token,
        # The built-in health check answers without the token; a step that took its path over does not.
        open_paths=(cfg.server.health_path,) if cfg.server.health_path and cfg.server.health_path not in taken else (),
    )
    return ServedApp(guarded, http.gate)
