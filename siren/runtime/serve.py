"""`siren serve`: a moderation server for a trained guard (FastAPI + uvicorn).

    siren serve --model train/probes/optuna/smollm2-135m_general [--host 127.0.0.1] [--port 8000]

Endpoints (errors come back as `{"error": {"message", "type", "param", "code"}}`, OpenAI's shape):

    GET  /                 the live demo page (siren/runtime/static/index.html)
    GET  /healthz          {"status": "ok", "model", "threshold", "max_length", "queued", "batches"}
    GET  /v1/models        OpenAI list shape, one entry: the served guard
    POST /v1/moderations   OpenAI moderation shape: {"input": str | [str | {"prompt", "response"} |
                           {"messages"}], "model"?} or {"messages": [chat turns]}
                           -> {"id", "model", "results": [{"flagged", "categories": {"harmful"},
                               "category_scores": {"harmful"}, "siren"?: {"prompt", "response"}}]}
    POST /v1/score         {"text"} | {"prompt", "response"} | {"messages"} | {"items": [those]},
                           "threshold"?
                           -> {"model", "results": [{"score", "is_harmful", "threshold",
                               "prompt"?, "response"?}]}
                           A pair gets both verdicts: the prompt's and the answer's (answer head),
                           beside the whole text's; which chat turn is which: `siren.runtime.serve_pairs`.
    POST /v1/tokenize      {"text"} -> {"pieces": [str]}: the backbone's tokens as text pieces that
                           concatenate back to the text (the demo page feeds them one by one)
    WS   /v1/stream        a streaming session, see `stream_endpoint`

One worker thread owns the guard, so there is one backbone in memory whatever the number of
clients, and torch is only ever called from that thread. Scoring requests go to it through a
queue; it takes the first, keeps collecting for up to `max_wait_ms` or until `max_batch_size`
texts, and scores them all in one length-bucketed `SirenGuard.score_batch` call (dynamic
batching). A request is never split across batches. Streaming feeds run on the same thread,
between batches.

Streaming uses the guard's incremental session (`guard.stream(prompt=..., debounce=...,
threshold=...)` returning an object with `.feed(chunk)` and `.flagged_at`) when the guard has
one; otherwise `StatelessSession`, which rescores prompt + response-so-far after each chunk.

Limits (texts per request, characters per text, body bytes, queued requests, stream chunks) are
configurable; defaults are in `configs/defaults.yaml` (`serve:`). Binds to 127.0.0.1 unless told
otherwise. If `SIREN_API_KEY` is set, every /v1 call needs `Authorization: Bearer <key>`
(checked in constant time); the page and /healthz stay open. Imports no Optuna and no training code.

No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at run
time, and `Request` / `WebSocket` are imported inside `create_app` (so importing this module
does not need FastAPI).
"""

import asyncio
import hmac
import inspect
import json
import logging
import os
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, fields
from importlib import resources
from typing import Any, Callable, Sequence

from siren.errors import SirenError
from siren.fileio import jsonable
from siren.runtime.serve_pairs import moderation_verdicts, stop_threshold, stream_output

log = logging.getLogger("siren.serve")

API_KEY_ENV = "SIREN_API_KEY"
# OpenAI's moderation model names: a client written for OpenAI sends one of these, and gets this guard.
OPENAI_MODERATION_MODELS = ("omni-moderation-latest", "omni-moderation-2024-09-26", "text-moderation-latest",
                            "text-moderation-stable", "text-moderation-007")
CATEGORY = "harmful"


# ---------------------------------------------------------------- limits

@dataclass(frozen=True)
class ServeLimits:
    """Server settings. Defaults: `configs/defaults.yaml`, key `serve` (see `from_defaults`)."""

    max_batch_size: int = 32        # texts per score_batch call at most (1: no dynamic batching)
    max_wait_ms: float = 5.0        # how long the worker keeps collecting after the first request
    max_items: int = 64             # texts per request
    max_chars: int = 32768          # characters per text (a streamed prompt + response counts as one)
    max_body_bytes: int = 1 << 20   # request body
    max_queue: int = 1024           # requests waiting for the worker; beyond: 503
    max_stream_chunks: int = 8192   # chunks per streaming session
    batch_tokens: int | None = None  # padded tokens per forward inside score_batch; None: 2048 on CPU, 16384 on GPU

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "batch_tokens" and value is None:
                continue
            if f.name == "max_wait_ms":
                if not value >= 0:
                    raise SirenError(f"serve limit max_wait_ms must be >= 0, got {value}")
            elif not (isinstance(value, int) and value >= 1):
                raise SirenError(f"serve limit {f.name} must be an integer >= 1, got {value!r}")

    @classmethod
    def from_defaults(cls, **overrides) -> "ServeLimits":
        """configs/defaults.yaml's `serve` section, overridden by every non-None keyword."""
        from siren.config import defaults

        base = dict(defaults().get("serve") or {})
        unknown = set(base) - {f.name for f in fields(cls)}
        if unknown:
            raise SirenError(f"configs/defaults.yaml: unknown serve settings {sorted(unknown)}")
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


class RequestError(Exception):
    """A client error: HTTP status + a message naming the bad thing and the fix."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = {401: "authentication_error", 404: "not_found_error", 413: "request_too_large",
                503: "server_busy"}.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def resolve_batch_tokens(limits: ServeLimits, guard) -> int:
    """limits.batch_tokens, else the rule of configs/defaults.yaml's batch_tokens: small batches
    on CPU (activations that stay in cache), large ones on GPU."""
    if limits.batch_tokens is not None:
        return limits.batch_tokens
    return 16384 if str(getattr(guard, "device", "cpu")).startswith("cuda") else 2048


class ServerBusy(RequestError):
    def __init__(self, limit: int):
        super().__init__(503, f"the server has {limit} requests waiting (max_queue); retry shortly",
                         code="queue_full")


# ---------------------------------------------------------------- the worker thread

@dataclass
class _ScoreJob:
    texts: list[str]
    threshold: float | None
    future: Future


@dataclass
class _CallJob:
    fn: Callable[[], Any]
    future: Future


_STOP = object()


class DynamicBatcher:
    """One thread that owns the guard and runs every call to it.

    `submit_score(texts, threshold)` -> Future[list[ScoreResult]]; requests that arrive within
    `max_wait_ms` of the first one (up to `max_batch_size` texts) share one `score_batch` call.
    `submit_call(fn)` -> Future[fn()]: anything else that touches the guard (streaming feeds),
    run in arrival order between batches.
    """

    def __init__(self, guard, limits: ServeLimits, *, default_threshold: float, threads: int | None = None):
        self.guard = guard
        self.threads = threads
        self.batch_tokens = resolve_batch_tokens(limits, guard)
        self.limits = limits
        self.default_threshold = float(default_threshold)
        self._queue: queue.Queue = queue.Queue(maxsize=limits.max_queue)
        self._thread = threading.Thread(target=self._loop, name="siren-guard-worker", daemon=True)
        self._closed = False
        self.batches = 0        # score_batch calls made
        self.batched_texts = 0  # texts scored through them

    def start(self) -> "DynamicBatcher":
        self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        self._closed = True
        if self._thread.is_alive():
            self._queue.put(_STOP)  # blocking put: the stop waits behind queued work, never dropped
            self._thread.join(timeout)

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def _put(self, job) -> Future:
        if self._closed:
            raise RuntimeError("the guard worker has been stopped")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise ServerBusy(self.limits.max_queue) from None
        return job.future

    def submit_score(self, texts: Sequence[str], threshold: float | None = None) -> Future:
        return self._put(_ScoreJob(list(texts), threshold, Future()))

    def submit_call(self, fn: Callable[[], Any]) -> Future:
        return self._put(_CallJob(fn, Future()))

    # The loop: a job left over from the previous round (one that did not fit, or a call that
    # arrived while collecting) is handled before the queue is read again, so order is kept.
    def _loop(self) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        held = None
        while True:
            job = held if held is not None else self._queue.get()
            held = None
            if job is _STOP:
                return
            if isinstance(job, _CallJob):
                self._run_call(job)
                continue
            batch, n = [job], len(job.texts)
            deadline = time.monotonic() + self.limits.max_wait_ms / 1000.0
            while n < self.limits.max_batch_size:
                remaining = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP or isinstance(nxt, _CallJob) or n + len(nxt.texts) > self.limits.max_batch_size:
                    held = nxt
                    break
                batch.append(nxt)
                n += len(nxt.texts)
            self._run_batch(batch)

    @staticmethod
    def _run_call(job: _CallJob) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.fn())
        except BaseException as err:  # handed to the waiting request; the worker carries on
            job.future.set_exception(err)

    def _run_batch(self, batch: list[_ScoreJob]) -> None:
        from siren.runtime.results import ScoreResult

        batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not batch:
            return
        texts = [t for job in batch for t in job.texts]
        try:
            results = self.guard.score_batch(texts, batch_size=len(texts), batch_tokens=self.batch_tokens)
            self.batches += 1
            self.batched_texts += len(texts)
        except BaseException as err:
            for job in batch:
                job.future.set_exception(err)
            return
        start = 0
        for job in batch:
            thr = self.default_threshold if job.threshold is None else job.threshold
            mine = results[start:start + len(job.texts)]
            start += len(job.texts)
            job.future.set_result([ScoreResult(r.score, bool(r.score >= thr), thr) for r in mine])


# ---------------------------------------------------------------- streaming sessions

class StatelessSession:
    """The streaming session's interface over the stateless form: after each chunk, score
    prompt + "\\n" + the response so far with `guard.score_streaming` (a full forward each time).

    `flagged_at`: None until `debounce` consecutive chunks scored harmful, then
    {"chunk": index of the chunk that completed the run, "char": response length at that point}.
    """

    def __init__(self, guard, prompt: str | None = None, *, debounce: int = 1, threshold: float | None = None):
        self.guard, self.prompt, self.debounce, self.threshold = guard, prompt, int(debounce), threshold
        self.response = ""
        self.chunks = 0
        self._run = 0
        self.flagged_at: dict | None = None

    def feed(self, chunk: str):
        from siren.features import join_prompt_response

        self.response += chunk
        result = self.guard.score_streaming(join_prompt_response(self.prompt, self.response), threshold=self.threshold)
        self._run = self._run + 1 if result.is_harmful else 0
        if self.flagged_at is None and self._run >= self.debounce:
            self.flagged_at = {"chunk": self.chunks, "char": len(self.response)}
        self.chunks += 1
        return result


def open_session(guard, prompt: str | None = None, *, debounce: int | None = 1, threshold: float | None = None):
    """The guard's incremental session if it has one (`guard.stream(prompt=, rule=)`, or the older
    `guard.stream(prompt=, debounce=, threshold=)`, returning an object with `.feed`), else a
    `StatelessSession`. debounce None: the guard's saved stream rule (else 1)."""
    from siren.runtime.serve_pairs import session_rule

    stream = getattr(guard, "stream", None)
    try:
        takes_rule = stream is not None and "rule" in inspect.signature(stream).parameters
    except (TypeError, ValueError):
        takes_rule = False
    if takes_rule:  # the two-verdict runtime: the rule decides on the answer's verdict
        thr = stop_threshold(guard, threshold, getattr(guard, "default_threshold", 0.5))
        session = stream(prompt=prompt, rule=session_rule(guard, thr, debounce))
        if hasattr(session, "feed"):
            return session
    debounce = 1 if debounce is None else debounce
    if stream is not None and not takes_rule:
        try:
            inspect.signature(stream).bind(prompt=prompt, debounce=debounce, threshold=threshold)
        except TypeError:
            pass  # the iterator form stream(chunks, *, prompt, threshold): no session API
        else:
            session = stream(prompt=prompt, debounce=debounce, threshold=threshold)
            if hasattr(session, "feed"):
                return session
    return StatelessSession(guard, prompt, debounce=debounce, threshold=threshold)


# ---------------------------------------------------------------- request parsing (pure functions)

def _type_name(value) -> str:
    return "null" if value is None else {dict: "object", list: "array", bool: "boolean", str: "string"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__)


def _check_text(text: str, where: str, limits: ServeLimits) -> str:
    if len(text) > limits.max_chars:
        raise RequestError(413, f"{where} has {len(text):,} characters; the limit is {limits.max_chars:,} per text "
                                f"(the guard reads only the first max_length tokens anyway: send a prefix)",
                           param=where, code="text_too_long")
    return text


def _check_count(n: int, where: str, limits: ServeLimits) -> None:
    if n == 0:
        raise RequestError(400, f"{where} is an empty list: give at least one text", param=where, code="empty_input")
    if n > limits.max_items:
        raise RequestError(413, f"{where} has {n} items; the limit is {limits.max_items} per request: "
                                f"split it into several requests", param=where, code="too_many_items")


def _check_object(body, what: str) -> dict:
    if not isinstance(body, dict):
        raise RequestError(400, f"the request body must be a JSON object {what}, got a JSON {_type_name(body)}")
    return body


def parse_threshold(body: dict) -> float | None:
    value = body.get("threshold")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise RequestError(400, f"'threshold' must be a number between 0 and 1, got {json.dumps(value)}",
                           param="threshold")
    return float(value)


def _pair_error(message: str, param: str | None = None) -> RequestError:
    return RequestError(400, message, param=param)


def _check_item(item, where: str, limits: ServeLimits):
    _check_text(item.text, where, limits)  # a pair's whole text: prompt + "\n" + response
    return item


def parse_moderation(body, limits: ServeLimits) -> list:
    """OpenAI's `input`: a string, a list of strings, or a list of {"type": "text", "text"} parts;
    also pairs ({"prompt", "response"} or {"messages"} items, or a top-level "messages") -> [Item]."""
    from siren.runtime.serve_pairs import Item, parse_item

    body = _check_object(body, 'like {"input": "some text"}')
    if "messages" in body and "input" not in body:
        return [_check_item(parse_item({"messages": body["messages"]}, "the body", _pair_error, _type_name),
                            "messages", limits)]
    if "input" not in body:
        raise RequestError(400, "missing field 'input': a string or a list of strings", param="input")
    raw = body["input"]
    if isinstance(raw, str):
        return [Item(_check_text(raw, "input", limits))]
    if not isinstance(raw, list):
        raise RequestError(400, f"'input' must be a string or a list of strings, got a JSON {_type_name(raw)}",
                           param="input")
    _check_count(len(raw), "input", limits)
    texts = []
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        if isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
            item = item["text"]
        elif isinstance(item, dict) and item.get("type") == "image_url":
            raise RequestError(400, f"{where} is an image: this guard scores text only", param=where)
        elif isinstance(item, dict) and ({"prompt", "response", "messages"} & set(item)):
            texts.append(_check_item(parse_item(item, where, _pair_error, _type_name), where, limits))
            continue
        if not isinstance(item, str):
            raise RequestError(400, f"{where} must be a string, got a JSON {_type_name(item)}", param=where)
        texts.append(Item(_check_text(item, where, limits)))
    return texts


def parse_score(body, limits: ServeLimits) -> tuple[list, float | None]:
    """{"text"} | {"prompt", "response"} | {"messages"} | {"items": [those]}, with an optional
    "threshold" -> ([Item], threshold)."""
    from siren.runtime.serve_pairs import parse_item

    body = _check_object(body, 'like {"text": "..."} or {"prompt": "...", "response": "..."}')
    threshold = parse_threshold(body)
    if "items" in body:
        items = body["items"]
        if not isinstance(items, list):
            raise RequestError(400, f"'items' must be a list of objects, got a JSON {_type_name(items)}", param="items")
        _check_count(len(items), "items", limits)
        where = [f"items[{i}]" for i in range(len(items))]
    else:
        items, where = [body], ["the body"]
    out = []
    for item, at in zip(items, where):
        out.append(_check_item(parse_item(item, at, _pair_error, _type_name), at, limits))
    return out, threshold


def check_api_key(expected: str | None, authorization: str | None) -> None:
    """401 unless `authorization` is "Bearer <expected>" (constant-time compare); no key set: open."""
    if not expected:
        return
    given = ""
    if authorization and authorization[:7].lower() == "bearer ":
        given = authorization[7:].strip()
    if not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
        raise RequestError(401, "missing or wrong API key: send 'Authorization: Bearer <key>' "
                                f"(the key the server was started with in {API_KEY_ENV})", code="invalid_api_key")


# ---------------------------------------------------------------- the app

def _page() -> str:
    return resources.files("siren.runtime").joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(guard, *, model_name: str, limits: ServeLimits | None = None, threshold: float | None = None,
               api_key: str | None = None, threads: int | None = None):
    """The FastAPI app around one loaded guard. The worker thread starts and stops with the app
    (its lifespan); `app.state.batcher` is the `DynamicBatcher`. threads: torch threads of the
    worker (default: torch's)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    limits = limits or ServeLimits()
    default_threshold = float(guard.default_threshold if threshold is None else threshold)
    batcher = DynamicBatcher(guard, limits, default_threshold=default_threshold, threads=threads)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(batcher.close)

    app = FastAPI(title="SIREN guard", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher

    @app.exception_handler(RequestError)
    async def _request_error(_request, err: RequestError):
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, err):
        message = (f"no route {request.method} {request.url.path}" if err.status_code == 404 else
                   f"{request.method} is not allowed on {request.url.path}" if err.status_code == 405 else str(err.detail))
        return JSONResponse(RequestError(err.status_code, message).body(), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def _internal_error(_request, err):
        log.exception("internal error")
        return JSONResponse({"error": {"message": f"internal error ({type(err).__name__}); see the server log",
                                       "type": "server_error", "param": None, "code": None}}, status_code=500)

    def authorize(request: Request) -> None:
        check_api_key(api_key, request.headers.get("authorization"))

    async def read_json(request: Request):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise RequestError(415, f"send the body as JSON with 'Content-Type: application/json' "
                                    f"(got {ctype or 'no content type'!r})", code="unsupported_media_type")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise RequestError(413, f"the body has {int(declared):,} bytes; the limit is {limits.max_body_bytes:,}",
                               code="body_too_large")
        data = bytearray()
        async for part in request.stream():
            data += part
            if len(data) > limits.max_body_bytes:
                raise RequestError(413, f"the body is over the limit of {limits.max_body_bytes:,} bytes",
                                   code="body_too_large")
        try:
            return json.loads(data)
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise RequestError(400, f"the body is not valid JSON: {err}", code="invalid_json") from None

    async def score(texts: list[str], thr: float | None):
        future = batcher.submit_score(texts, thr)
        try:
            return await asyncio.wrap_future(future)
        except SirenError as err:
            raise RequestError(400, str(err)) from None

    async def score_items(items: list, thr: float | None):
        """Texts through the dynamic batcher; pairs, when the guard gives both verdicts
        (`score_pairs`), in one call on the worker thread. Results in input order."""
        pairs = [i for i, item in enumerate(items) if item.pair is not None] if hasattr(guard, "score_pairs") else []
        rest = [i for i in range(len(items)) if i not in set(pairs)]
        out = [None] * len(items)
        if pairs:
            use = default_threshold if thr is None else thr
            job = batcher.submit_call(lambda: guard.score_pairs([items[i].pair for i in pairs], threshold=use))
            try:
                for i, r in zip(pairs, await asyncio.wrap_future(job)):
                    out[i] = r
            except SirenError as err:
                raise RequestError(400, str(err)) from None
        if rest:
            for i, r in zip(rest, await score([items[i].text for i in rest], thr)):
                out[i] = r
        return out

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(_page())

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "model": model_name, "threshold": default_threshold,
                "max_length": int(getattr(guard, "max_length", 0)), "queued": batcher.queued,
                "batches": batcher.batches, "api_key_required": bool(api_key)}

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "siren", "threshold": default_threshold}]}

    @app.post("/v1/moderations")
    async def moderations(request: Request):
        authorize(request)
        body = await read_json(request)
        items = parse_moderation(body, limits)
        wanted = body.get("model")
        if wanted is not None and wanted != model_name and wanted not in OPENAI_MODERATION_MODELS:
            raise RequestError(404, f"model {wanted!r} is not served here; this server serves {model_name!r} "
                                    f"(or leave 'model' out)", param="model", code="model_not_found")
        results = await score_items(items, None)
        return {"id": f"modr-{uuid.uuid4().hex}", "model": model_name,
                "results": [{"flagged": r.is_harmful, "categories": {CATEGORY: r.is_harmful},
                             "category_scores": {CATEGORY: r.score},
                             "category_applied_input_types": {CATEGORY: ["text"]}} | moderation_verdicts(r)
                            for r in results]}

    @app.post("/v1/score")
    async def score_endpoint(request: Request):
        authorize(request)
        items, thr = parse_score(await read_json(request), limits)
        results = await score_items(items, thr)
        return {"model": model_name, "results": [r.to_dict() for r in results]}

    @app.post("/v1/tokenize")
    async def tokenize(request: Request):
        authorize(request)
        body = _check_object(await read_json(request), 'like {"text": "..."}')
        text = body.get("text")
        if not isinstance(text, str):
            raise RequestError(400, f"'text' must be a string, got a JSON {_type_name(text)}", param="text")
        _check_text(text, "text", limits)
        pieces = await asyncio.wrap_future(batcher.submit_call(lambda: token_pieces(guard.backbone.tokenizer, text)))
        return {"model": model_name, "pieces": pieces}

    @app.websocket("/v1/stream")
    async def stream_endpoint(ws: WebSocket):
        """Protocol (JSON text messages):
        1. client: {"prompt"?: str, "threshold"?: number, "debounce"?: int >= 1, "api_key"?: str}
           (the key may instead come as an Authorization header); server: {"ready": true, "threshold",
           "model", "incremental", "answer_head"}. `threshold` is the stop decision's: the client's, else
           the answer head's, else the server's; debounce left out: the guard's saved stream rule.
        2. client: {"chunk": str}, any number of times; server, after each:
           {"index", "score", "is_harmful", "threshold", "flagged", "flagged_at", "flagged_chunk",
            "prompt", "response", "flagged_by"}
           (`score`...: the whole text's verdict; `prompt` / `response`: the request's and the answer's
           verdicts, null when absent; `flagged_by`: "response" or "text", which verdict stopped the
           stream, null while not flagged; `flagged_chunk`: index of the chunk after which the session
           first reported a flag)
        3. client: {"end": true}; server: {"done": true, "chunks", "flagged_chunk", "flagged_at"}, then closes.
        A bad message gets {"error": {...}} and the socket is closed (1008 auth, 1009 too big, 1007 otherwise).
        """
        await ws.accept()

        async def fail(err: RequestError, code: int):
            await ws.send_json(err.body())
            await ws.close(code=code)

        async def receive() -> dict:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            text = message.get("text")
            if text is None:
                raise RequestError(400, "send JSON text messages, not binary ones")
            if len(text) > limits.max_body_bytes:
                raise RequestError(413, f"a message is over the limit of {limits.max_body_bytes:,} bytes")
            try:
                obj = json.loads(text)
            except (ValueError, RecursionError) as err:
                raise RequestError(400, f"a message is not valid JSON: {err}") from None
            return _check_object(obj, "")

        try:
            start = await receive()
            check_api_key(api_key, ws.headers.get("authorization") or
                          (f"Bearer {start['api_key']}" if isinstance(start.get("api_key"), str) else None))
            prompt = start.get("prompt")
            if prompt is not None and not isinstance(prompt, str):
                raise RequestError(400, f"'prompt' must be a string, got a JSON {_type_name(prompt)}", param="prompt")
            thr = stop_threshold(guard, parse_threshold(start), default_threshold)
            debounce = start.get("debounce")
            if debounce is not None and (isinstance(debounce, bool) or not isinstance(debounce, int) or debounce < 1):
                raise RequestError(400, f"'debounce' must be an integer >= 1, got {json.dumps(debounce)}",
                                   param="debounce")
            chars = len(prompt or "")
            _check_text(prompt or "", "prompt", limits)
            session = await asyncio.wrap_future(batcher.submit_call(
                lambda: open_session(guard, prompt, debounce=debounce, threshold=thr)))
            await ws.send_json({"ready": True, "threshold": thr, "model": model_name,
                                "incremental": not isinstance(session, StatelessSession),
                                "answer_head": bool(getattr(guard, "has_answer_head", False))})
            index, flagged_chunk = 0, None
            while True:
                msg = await receive()
                if msg.get("end"):
                    await ws.send_json({"done": True, "chunks": index, "flagged_chunk": flagged_chunk,
                                        "flagged_at": jsonable(getattr(session, "flagged_at", None))})
                    await ws.close(code=1000)
                    return
                chunk = msg.get("chunk")
                if not isinstance(chunk, str):
                    raise RequestError(400, f"expected {{\"chunk\": str}} or {{\"end\": true}}, got "
                                            f"'chunk' as a JSON {_type_name(chunk)}", param="chunk")
                chars += len(chunk)
                if chars > limits.max_chars:
                    raise RequestError(413, f"the streamed prompt + response reached {chars:,} characters; "
                                            f"the limit is {limits.max_chars:,}", code="text_too_long")
                if index >= limits.max_stream_chunks:
                    raise RequestError(413, f"more than {limits.max_stream_chunks} chunks in one session",
                                       code="too_many_chunks")
                result = await asyncio.wrap_future(batcher.submit_call(lambda c=chunk: session.feed(c)))
                flagged_at = getattr(session, "flagged_at", None)
                if flagged_at is not None and flagged_chunk is None:
                    flagged_chunk = index
                await ws.send_json({"index": index, "score": float(result.score), "is_harmful": bool(result.is_harmful),
                                    "threshold": float(result.threshold), "flagged": flagged_at is not None,
                                    "flagged_at": jsonable(flagged_at), "flagged_chunk": flagged_chunk}
                                   | stream_output(result, session))
                index += 1
        except WebSocketDisconnect:
            return
        except RequestError as err:
            await fail(err, {401: 1008, 413: 1009, 503: 1013}.get(err.status, 1007))
        except SirenError as err:
            await fail(RequestError(400, str(err)), 1007)

    return app


def token_pieces(tokenizer, text: str) -> list[str]:
    """The text cut at the backbone's token boundaries: pieces that concatenate back to `text`
    (a fast tokenizer's character offsets; each piece runs from its token's start to the next's)."""
    if not text:
        return []
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = sorted({s for s, e in enc["offset_mapping"] if e > s} | {0})
    bounds = starts + [len(text)]
    return [text[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


# ---------------------------------------------------------------- command line

def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True,
                        help="guard folder, backbone name (train/probes/optuna/<M>_general) or Hub id")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model_name", help="the model id clients see (default: the guard folder's name)")
    parser.add_argument("--threshold", type=float, help="decision threshold (default: the guard's)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", help="backbone dtype (default: the one the guard was trained with)")
    parser.add_argument("--trust_remote_code", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="score lone requests through a torch.compile'd forward: faster one text at a time, "
                             "scores equal to float rounding; compiles at start-up (one to two minutes on a 2-core CPU; "
                             "a C++ compiler is needed on CPU)")
    for f in fields(ServeLimits):
        parser.add_argument(f"--{f.name}", type=float if f.name == "max_wait_ms" else int,
                            help=f"(default: configs/defaults.yaml serve.{f.name})")
    parser.add_argument("--threads", type=int,
                        help="torch threads for scoring (default: torch's, one per core). On a busy machine "
                             "fewer threads than cores can lower latency: the event loop needs a core too")
    parser.add_argument("--no_batching", action="store_true",
                        help="score every request alone (same as --max_batch_size 1 --max_wait_ms 0)")
    parser.add_argument("--log_level", default="info", help="uvicorn log level")


def run(args) -> int:
    overrides = {f.name: getattr(args, f.name) for f in fields(ServeLimits)}
    if args.no_batching:
        overrides.update(max_batch_size=1, max_wait_ms=0.0)
    limits = ServeLimits.from_defaults(**overrides)
    if not 0 < args.port < 65536:
        raise SirenError(f"--port must be between 1 and 65535, got {args.port}")
    if args.threads is not None and args.threads < 1:
        raise SirenError(f"--threads must be >= 1, got {args.threads}")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise SirenError(f"--threshold must be between 0 and 1, got {args.threshold}")
    api_key = os.environ.get(API_KEY_ENV) or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log.warning("binding to %s without %s: anyone who can reach this address can use the guard",
                    args.host, API_KEY_ENV)
    try:
        import uvicorn
    except ImportError as err:
        raise SirenError("siren serve needs fastapi and uvicorn: pip install -r requirements.txt") from err

    from pathlib import Path

    from siren.runtime.guard import SirenGuard
    from siren.runtime.score_cli import resolve_guard

    folder = resolve_guard(args.model)
    if args.compile:
        print("[siren serve] loading and compiling the single-text forward (one to two minutes on a 2-core CPU)",
              flush=True)
    guard = SirenGuard.from_pretrained(folder, device=args.device, dtype=args.dtype,
                                       trust_remote_code=args.trust_remote_code, compile=args.compile)
    name = args.model_name or (Path(folder).resolve().name if Path(folder).is_dir() else folder)
    app = create_app(guard, model_name=name, limits=limits, threshold=args.threshold, api_key=api_key,
                     threads=args.threads)
    print(f"[siren serve] {name} on http://{args.host}:{args.port}/  (max_batch_size {limits.max_batch_size}, "
          f"max_wait_ms {limits.max_wait_ms:g}, API key {'required' if api_key else 'off'})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
