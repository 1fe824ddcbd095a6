"""`siren serve`'s request side, pure functions (no FastAPI): its settings (`serve_limits`), the
client error (`RequestError`, OpenAI's error shape), the checks of request bodies
(`parse_moderation`, `parse_score`, `parse_threshold`), of the API key (`check_api_key`) and of the
websocket's start message and chunks."""

import asyncio
import hmac
import json

from siren.config import config_class, load as load_config
from siren.errors import SirenError, check_unicode
from siren.runtime.serve_pairs import Item, parse_item

API_KEY_ENV = "SIREN_API_KEY"


# ---------------------------------------------------------------- limits

ServeConfig = config_class("serve")


def serve_limits(**overrides) -> ServeConfig:
    """`siren serve`'s settings (`siren.config`'s ServeConfig: dynamic batching, request limits,
    host, port, ...): configs/defaults.yaml's, overridden by each non-None keyword; checked."""
    return load_config("serve", overrides)


class RequestError(Exception):
    """A client error: HTTP status + a message naming the bad thing and the fix."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = {401: "authentication_error", 404: "not_found_error", 413: "request_too_large",
                503: "server_busy"}.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}



# ---------------------------------------------------------------- request parsing (pure functions)

def _type_name(value) -> str:
    return "null" if value is None else {dict: "object", list: "array", bool: "boolean", str: "string"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__)


def _check_text(text: str, where: str, limits: ServeConfig) -> str:
    try:
        check_unicode(text, where)
    except SirenError as err:
        raise RequestError(400, str(err), param=where, code="invalid_text") from None
    if len(text) > limits.max_chars:
        raise RequestError(413, f"{where} has {len(text):,} characters; the limit is {limits.max_chars:,} per text "
                                f"(the guard reads only the first max_length tokens anyway: send a prefix)",
                           param=where, code="text_too_long")
    return text


def _check_count(n: int, where: str, limits: ServeConfig) -> None:
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


def _check_item(item, where: str, limits: ServeConfig):
    _check_text(item.text, where, limits)  # a pair's whole text: prompt + "\n" + response
    return item


def parse_moderation(body, limits: ServeConfig) -> list:
    """OpenAI's `input`: a string, a list of strings, or a list of {"type": "text", "text"} parts;
    also pairs ({"prompt", "response"} or {"messages"} items, or a top-level "messages") -> [Item]."""
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


def parse_score(body, limits: ServeConfig) -> tuple[list, float | None]:
    """{"text"} | {"prompt", "response"} | {"messages"} | {"items": [those]}, with an optional
    "threshold" -> ([Item], threshold)."""
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


def check_api_key_setting(key: str | None) -> None:
    """SirenError unless the server's key is one a standard client can send: HTTP header values
    are ASCII, so a key with other characters (or with spaces at its ends, which are stripped
    from the header) would lock every client out."""
    if key and (not key.isascii() or not key.isprintable() or key != key.strip()):
        bad = next((c for c in key if not (c.isascii() and c.isprintable())), key[0] if key[0].isspace() else key[-1])
        raise SirenError(f"{API_KEY_ENV} holds {bad!r}: HTTP clients send the key in a header, as printable ASCII "
                         f"without spaces at its ends, so no standard client could authenticate; pick another key, e.g. "
                         f"python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")


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



async def start_message(receive, seconds: float) -> dict:
    """The websocket's first message, or a 408 RequestError after `seconds` (a socket that never
    starts, or never authenticates, is not held open)."""
    try:
        return await asyncio.wait_for(receive, timeout=seconds)
    except asyncio.TimeoutError:
        raise RequestError(408, f"no start message within {seconds:g} s of connecting: send {{\"prompt\": ...}} "
                                "(with \"api_key\" when the server needs one) at once", code="handshake_timeout") from None


def chunk_refusal(chunk: str, index: int) -> dict | None:
    """The error body for a chunk that is not text (a lone surrogate: a client that split a text
    inside a surrogate pair), else None."""
    try:
        check_unicode(chunk, f"chunk {index}")
    except SirenError as err:
        return RequestError(400, str(err), param="chunk", code="invalid_text").body()
    return None

