"""`siren serve`'s FastAPI app: `create_app` assembles three routers around one `ServeState`
(the guard, its worker, the limits, the API key, the model name), which every route reads
explicitly; the endpoints and the protocols are described in `siren.runtime.serve`.

No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at run
time, and FastAPI itself is imported inside the functions that build the app (so importing
this module does not need it).
"""

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources

from siren.categories import category_fields, moderation_result, untrained_categories
from siren.errors import SirenError
from siren.fileio import jsonable
from siren.runtime.serve_batch import DynamicBatcher, StatelessSession, open_session
from siren.runtime.serve_pairs import moderation_verdicts, stop_threshold, stream_output
from siren.runtime.serve_requests import (RequestError, ServeConfig, _check_object, _check_text, _type_name,
                                          check_api_key, check_api_key_setting, chunk_refusal, parse_moderation,
                                          parse_score, parse_threshold, serve_limits, start_message)

log = logging.getLogger("siren.serve")

# OpenAI's moderation model names: a client written for OpenAI sends one of these, and gets this guard.
OPENAI_MODERATION_MODELS = ("omni-moderation-latest", "omni-moderation-2024-09-26", "text-moderation-latest",
                            "text-moderation-stable", "text-moderation-007")
CATEGORY = "harmful"


def _page() -> str:
    return resources.files("siren.runtime").joinpath("static/index.html").read_text(encoding="utf-8")


def token_pieces(tokenizer, text: str) -> list[str]:
    """The text cut at the backbone's token boundaries: pieces that concatenate back to `text`
    (a fast tokenizer's character offsets; each piece runs from its token's start to the next's)."""
    if not text:
        return []
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = sorted({s for s, e in enc["offset_mapping"] if e > s} | {0})
    bounds = starts + [len(text)]
    return [text[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


# ---------------------------------------------------------------- the state every route reads

@dataclass
class ServeState:
    """What the routes share: one per app, passed to each router (no module globals)."""
    guard: object
    batcher: DynamicBatcher
    limits: ServeConfig
    api_key: str | None
    model_name: str
    default_threshold: float
    created: int = field(default_factory=lambda: int(time.time()))

    def authorize(self, headers) -> None:
        check_api_key(self.api_key, headers.get("authorization"))

    async def read_json(self, request):
        from starlette.requests import ClientDisconnect

        limits = self.limits
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise RequestError(415, f"send the body as JSON with 'Content-Type: application/json' "
                                    f"(got {ctype or 'no content type'!r})", code="unsupported_media_type")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise RequestError(413, f"the body has {int(declared):,} bytes; the limit is {limits.max_body_bytes:,}",
                               code="body_too_large")
        data = bytearray()
        try:
            async for part in request.stream():
                data += part
                if len(data) > limits.max_body_bytes:
                    raise RequestError(413, f"the body is over the limit of {limits.max_body_bytes:,} bytes",
                                       code="body_too_large")
        except ClientDisconnect:  # the client left (or body_timeout_s closed it): nobody reads an answer
            raise RequestError(400, "the client disconnected before sending the whole body",
                               code="client_disconnected") from None
        try:
            return json.loads(data)
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise RequestError(400, f"the body is not valid JSON: {err}", code="invalid_json") from None

    async def call(self, fn):
        """fn() on the worker thread, awaited."""
        return await asyncio.wrap_future(self.batcher.submit_call(fn))

    async def score(self, texts: list[str], threshold: float | None):
        future = self.batcher.submit_score(texts, threshold)
        try:
            return await asyncio.wrap_future(future)
        except SirenError as err:
            raise RequestError(400, str(err)) from None

    async def score_items(self, items: list, thr: float | None):
        """Texts through the dynamic batcher; pairs, when the guard gives both verdicts
        (`score_pairs`), in one call on the worker thread. Results in input order."""
        guard = self.guard
        pairs = [i for i, item in enumerate(items) if item.pair is not None] if hasattr(guard, "score_pairs") else []
        rest = [i for i in range(len(items)) if i not in set(pairs)]
        out = [None] * len(items)
        if pairs:
            use = self.default_threshold if thr is None else thr
            job = self.batcher.submit_call(lambda: guard.score_pairs([items[i].pair for i in pairs], threshold=use))
            try:
                for i, r in zip(pairs, await asyncio.wrap_future(job)):
                    out[i] = r
            except SirenError as err:
                raise RequestError(400, str(err)) from None
        if rest:
            for i, r in zip(rest, await self.score([items[i].text for i in rest], thr)):
                out[i] = r
        return out


# ---------------------------------------------------------------- routers

def info_router(state: ServeState):
    """The page, /healthz, /v1/models and /v1/tokenize."""
    from fastapi import APIRouter, Request
    from fastapi.responses import HTMLResponse

    router = APIRouter()

    @router.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(_page())

    @router.get("/healthz")
    async def healthz():
        return {"status": "ok", "model": state.model_name, "threshold": state.default_threshold,
                "max_length": int(getattr(state.guard, "max_length", 0)), "queued": state.batcher.queued,
                "batches": state.batcher.batches, "api_key_required": bool(state.api_key)}

    @router.get("/v1/models")
    async def models(request: Request):
        state.authorize(request.headers)
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": state.created,
                                            "owned_by": "siren", "threshold": state.default_threshold}]}

    @router.post("/v1/tokenize")
    async def tokenize(request: Request):
        state.authorize(request.headers)
        body = _check_object(await state.read_json(request), 'like {"text": "..."}')
        text = body.get("text")
        if not isinstance(text, str):
            raise RequestError(400, f"'text' must be a string, got a JSON {_type_name(text)}", param="text")
        _check_text(text, "text", state.limits)   # a lone surrogate: 400 here, not a tokenizer error (500)
        pieces = await state.call(lambda: token_pieces(state.guard.backbone.tokenizer, text))
        return {"model": state.model_name, "pieces": pieces}

    return router


def scoring_router(state: ServeState):
    """POST /v1/moderations (OpenAI's shape) and /v1/score."""
    from fastapi import APIRouter, Request

    router = APIRouter()

    @router.post("/v1/moderations")
    async def moderations(request: Request):
        state.authorize(request.headers)
        body = await state.read_json(request)
        items = parse_moderation(body, state.limits)
        wanted, model_name = body.get("model"), state.model_name
        if wanted is not None and wanted != model_name and wanted not in OPENAI_MODERATION_MODELS:
            raise RequestError(404, f"model {wanted!r} is not served here; this server serves {model_name!r} "
                                    f"(or leave 'model' out)", param="model", code="model_not_found")
        results = await state.score_items(items, None)
        return {"id": f"modr-{uuid.uuid4().hex}", "model": model_name,
                "results": [moderation_result(r, CATEGORY) | moderation_verdicts(r) for r in results],
                "untrained_categories": untrained_categories(state.guard)}

    @router.post("/v1/score")
    async def score_endpoint(request: Request):
        state.authorize(request.headers)
        items, thr = parse_score(await state.read_json(request), state.limits)
        results = await state.score_items(items, thr)
        return {"model": state.model_name, "results": [r.to_dict() for r in results]}

    return router


# ---------------------------------------------------------------- the websocket stream

async def _receive(ws, limits: ServeConfig) -> dict:
    """The next client message as a JSON object (RequestError if it is not one)."""
    from starlette.websockets import WebSocketDisconnect

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


async def _open_stream(state: ServeState, ws):
    """Step 1 of the protocol: the start message checked, the session opened, "ready" sent.
    -> (session, characters so far)."""
    guard, limits = state.guard, state.limits
    start = await start_message(_receive(ws, limits), limits.ws_handshake_timeout_s)
    check_api_key(state.api_key, ws.headers.get("authorization") or
                  (f"Bearer {start['api_key']}" if isinstance(start.get("api_key"), str) else None))
    prompt = start.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise RequestError(400, f"'prompt' must be a string, got a JSON {_type_name(prompt)}", param="prompt")
    asked = parse_threshold(start)
    thr = stop_threshold(guard, asked, state.default_threshold)   # the stop decision's
    debounce = start.get("debounce")
    if debounce is not None and (isinstance(debounce, bool) or not isinstance(debounce, int) or debounce < 1):
        raise RequestError(400, f"'debounce' must be an integer >= 1, got {json.dumps(debounce)}",
                           param="debounce")
    chars = len(prompt or "")
    _check_text(prompt or "", "prompt", limits)
    verdicts = state.default_threshold if asked is None else asked   # the whole text's and the prompt's
    session = await state.call(lambda: open_session(guard, prompt, debounce=debounce, threshold=verdicts, stop=thr))
    await ws.send_json({"ready": True, "threshold": thr, "model": state.model_name,
                        "incremental": not isinstance(session, StatelessSession),
                        "answer_head": bool(getattr(guard, "has_answer_head", False))})
    return session, chars


async def _run_stream(state: ServeState, ws) -> None:
    """Steps 1 to 3 of the protocol (see `stream_endpoint`)."""
    limits = state.limits
    session, chars = await _open_stream(state, ws)
    index, flagged_chunk = 0, None
    while True:
        msg = await _receive(ws, limits)
        if msg.get("end"):
            await ws.send_json({"done": True, "chunks": index, "flagged_chunk": flagged_chunk,
                                "flagged_at": jsonable(getattr(session, "flagged_at", None))})
            await ws.close(code=1000)
            return
        chunk = msg.get("chunk")
        if not isinstance(chunk, str):
            raise RequestError(400, f"expected {{\"chunk\": str}} or {{\"end\": true}}, got "
                                    f"'chunk' as a JSON {_type_name(chunk)}", param="chunk")
        refused = chunk_refusal(chunk, index)
        if refused:  # refused alone: the session and the socket go on
            await ws.send_json(refused)
            continue
        chars += len(chunk)
        if chars > limits.max_chars:
            raise RequestError(413, f"the streamed prompt + response reached {chars:,} characters; "
                                    f"the limit is {limits.max_chars:,}", code="text_too_long")
        if index >= limits.max_stream_chunks:
            raise RequestError(413, f"more than {limits.max_stream_chunks} chunks in one session",
                               code="too_many_chunks")
        result = await state.call(lambda c=chunk: session.feed(c))
        flagged_at = getattr(session, "flagged_at", None)
        if flagged_at is not None and flagged_chunk is None:
            flagged_chunk = index
        await ws.send_json({"index": index, "score": float(result.score), "is_harmful": bool(result.is_harmful),
                            "threshold": float(result.threshold), "flagged": flagged_at is not None,
                            "flagged_at": jsonable(flagged_at), "flagged_chunk": flagged_chunk,
                            **category_fields(result)}
                           | stream_output(result, session))
        index += 1


def stream_router(state: ServeState):
    """WS /v1/stream."""
    from fastapi import APIRouter, WebSocket, WebSocketDisconnect

    router = APIRouter()

    @router.websocket("/v1/stream")
    async def stream_endpoint(ws: WebSocket):
        """Protocol (JSON text messages):
        1. client: {"prompt"?: str, "threshold"?: number, "debounce"?: int >= 1, "api_key"?: str}
           (the key may instead come as an Authorization header); server: {"ready": true, "threshold",
           "model", "incremental", "answer_head"}. `threshold` is the stop decision's: the client's, else
           the answer head's, else the server's; debounce left out: the guard's saved stream rule.
        2. client: {"chunk": str}, any number of times; server, after each:
           {"index", "score", "is_harmful", "threshold", "flagged", "flagged_at", "flagged_chunk",
            "prompt", "response", "flagged_by"}, plus "categories" and "category_scores" of the prefix
           so far when the guard has a category head
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

        try:
            await _run_stream(state, ws)
        except WebSocketDisconnect:
            return
        except RequestError as err:
            await fail(err, {401: 1008, 408: 1008, 413: 1009, 503: 1013}.get(err.status, 1007))
        except SirenError as err:
            await fail(RequestError(400, str(err)), 1007)

    return router


# ---------------------------------------------------------------- the app

def _add_error_handlers(app) -> None:
    """Every error in OpenAI's shape: a RequestError's own, a 404/405 naming the route, a 500 that
    names only the exception's type (the traceback goes to the log)."""
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

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


def create_app(guard, *, model_name: str, limits: ServeConfig | None = None, threshold: float | None = None,
               api_key: str | None = None, threads: int | None = None):
    """The FastAPI app around one loaded guard. The worker thread starts and stops with the app
    (its lifespan); `app.state.batcher` is the `DynamicBatcher`. threads: torch threads of the
    worker (default: torch's)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    limits = limits or serve_limits()
    check_api_key_setting(api_key)
    default_threshold = float(guard.default_threshold if threshold is None else threshold)
    batcher = DynamicBatcher(guard, limits, default_threshold=default_threshold, threads=threads)
    state = ServeState(guard, batcher, limits, api_key, model_name, default_threshold)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(batcher.close)

    app = FastAPI(title="SIREN guard", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher
    app.state.serve = state
    _add_error_handlers(app)
    for router in (info_router(state), scoring_router(state), stream_router(state)):
        app.include_router(router)
    return app
