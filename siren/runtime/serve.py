"""`siren serve`: a moderation server for a trained guard (FastAPI + uvicorn).

    siren serve --model train/probes/optuna/smollm2-135m_general [--host 127.0.0.1] [--port 8000]

Endpoints (errors come back as `{"error": {"message", "type", "param", "code"}}`, OpenAI's shape):

    GET  /                 the live demo page (siren/runtime/static/index.html)
    GET  /healthz          {"status": "ok", "model", "threshold", "max_length", "queued", "batches"}
    GET  /v1/models        OpenAI list shape, one entry: the served guard
    POST /v1/moderations   OpenAI moderation shape: {"input": str | [str | {"prompt", "response"} |
                           {"messages"}], "model"?} or {"messages": [chat turns]}
                           -> {"id", "model", "results": [{"flagged", "categories", "category_scores",
                               "category_applied_input_types", "siren"?: {"prompt", "response"}}],
                               "untrained_categories"}: OpenAI's 13 categories (configs/categories.yaml)
                               from the guard's category head, those it has none for
                               (untrained_categories) false / 0.0; plus "harmful", the guard's verdict,
                               which `flagged` repeats
    POST /v1/score         {"text"} | {"prompt", "response"} | {"messages"} | {"items": [those]},
                           "threshold"?
                           -> {"model", "results": [{"score", "is_harmful", "threshold",
                               "prompt"?, "response"?, "categories"?, "category_scores"?}]}
                           A pair gets both verdicts: the prompt's and the answer's (answer head),
                           beside the whole text's; which chat turn is which: `siren.runtime.serve_pairs`.
                           Categories: only those the guard's category head was trained on.
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
configurable; defaults are in `configs/defaults.yaml` (`serve:`). So are the ones against hostile
clients (header/body/idle timeouts, a connection cap, the websocket's start-message timeout,
refusals logged once per interval), applied by `siren/runtime/serve_net.py`. Binds to 127.0.0.1 unless told
otherwise. If `SIREN_API_KEY` is set, every /v1 call needs `Authorization: Bearer <key>`
(checked in constant time); the page and /healthz stay open. Imports no Optuna and no training code.

The modules, imported one way (each only from those after it): this one, the command line;
`serve_app` (`create_app`: the routers and the state they share); `serve_batch` (the worker thread
and the streaming sessions); `serve_requests` (settings, `RequestError`, request parsing, the API
key); `serve_pairs` (prompt/response pairs). The names tests and tools import from here are
re-exported below. Importing this module does not need FastAPI.
"""

import logging
import os

from siren.config import from_args
from siren.config import add_flags as add_config_flags
from siren.errors import SirenError
from siren.runtime.serve_app import (CATEGORY, OPENAI_MODERATION_MODELS, ServeState, create_app,  # noqa: F401
                                     token_pieces)
from siren.runtime.serve_batch import (DynamicBatcher, ServerBusy, StatelessSession, open_session,  # noqa: F401
                                       resolve_batch_tokens)
from siren.runtime.serve_requests import (API_KEY_ENV, RequestError, ServeConfig, check_api_key,  # noqa: F401
                                          check_api_key_setting, chunk_refusal, parse_moderation, parse_score,
                                          parse_threshold, serve_limits, start_message)

log = logging.getLogger("siren.serve")


# ---------------------------------------------------------------- command line

def add_arguments(parser) -> None:
    add_config_flags(parser, "serve", required=("model",))
    parser.add_argument("--no_batching", action="store_true",
                        help="score every request alone (same as --max_batch_size 1 --max_wait_ms 0)")


def check_port_free(host: str, port: int) -> None:
    """SirenError naming the port when it cannot be bound, before the model loads (that takes
    seconds to minutes; uvicorn would only fail after it)."""
    import socket

    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise SirenError(f"--host {host}: cannot resolve it ({err})") from err
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As uvicorn binds: a closed connection's TIME_WAIT from a previous server does not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as err:
            raise SirenError(f"port {port} on {host} is not free ({err.strerror}): stop what uses it "
                             "or choose another with --port") from err


def run(args) -> int:
    cfg = from_args("serve", args)
    if args.no_batching:
        cfg = cfg.replace(max_batch_size=1, max_wait_ms=0.0)
    api_key = os.environ.get(API_KEY_ENV) or None
    check_api_key_setting(api_key)      # before the backbone loads
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log.warning("binding to %s without %s: anyone who can reach this address can use the guard",
                    cfg.host, API_KEY_ENV)
    try:
        import uvicorn
    except ImportError as err:
        raise SirenError("siren serve needs fastapi and uvicorn: pip install -r requirements.txt") from err
    check_port_free(cfg.host, cfg.port)

    from pathlib import Path

    from siren.runtime.loading import open_guard

    if cfg.compile:
        print("[siren serve] loading and compiling the single-text forward (one to two minutes on a 2-core CPU)",
              flush=True)
    folder, guard = open_guard(cfg.model, device=cfg.device, dtype=cfg.dtype,
                               trust_remote_code=cfg.trust_remote_code, compile=cfg.compile)
    name = cfg.model_name or (Path(folder).resolve().name if Path(folder).is_dir() else folder)
    app = create_app(guard, model_name=name, limits=cfg, threshold=cfg.decision_threshold, api_key=api_key,
                     threads=cfg.threads)
    print(f"[siren serve] {name} on http://{cfg.host}:{cfg.port}/  (max_batch_size {cfg.max_batch_size}, "
          f"max_wait_ms {cfg.max_wait_ms:g}, API key {'required' if api_key else 'off'})", flush=True)
    from siren.runtime.serve_net import uvicorn_options

    uvicorn.run(app, **uvicorn_options(cfg, host=cfg.host, port=cfg.port, log_level=cfg.log_level))
    return 0
