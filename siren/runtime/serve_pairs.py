"""Two verdicts over HTTP: the request parsing and output shapes `siren serve` uses for
prompt/response pairs. Pure functions (no FastAPI), so they are tested without a server.

A moderation product asks two questions: is the request harmful (the prompt's verdict), and is
this answer harmful, given its request (the answer's verdict). `/v1/score` and
`/v1/moderations` take a pair as

- `{"prompt": str, "response": str}` (either may be left out), or
- `{"messages": [{"role", "content"}, ...]}`, OpenAI chat turns: the **response** is the last
  `assistant` turn, the **prompt** the last `user` turn before it (or the last `user` turn
  when the conversation ends with the user: then there is no response). `system` / `tool`
  turns are context that neither verdict reads. `content` is a string or a list of
  `{"type": "text", "text"}` parts (joined with no separator).

and return, beside the whole-text fields (`score`, `is_harmful`, `threshold`: the verdict on
prompt + "\\n" + response, as before), `prompt` and `response` objects (`{"score",
"is_harmful", "threshold"}`; `response` only when the guard has an answer head). In
`/v1/moderations` they go in an extra field of each result, `"siren": {"prompt": ...,
"response": ...}`, so OpenAI clients keep reading `flagged` / `categories` as before.
The stop decision of a stream uses the answer's verdict; `flagged_by` says which one stopped it.
"""

from dataclasses import dataclass

# The field of a /v1/moderations result that carries the two verdicts.
MODERATION_VERDICTS_FIELD = "siren"


@dataclass(frozen=True)
class Item:
    """One thing to score: `text` (the whole text) and, for a pair, its parts."""

    text: str
    pair: tuple[str | None, str | None] | None = None


def _content(value, where: str, error) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for i, part in enumerate(value):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise error(f"{where}.content[{i}] must be a {{\"type\": \"text\", \"text\": str}} part")
            parts.append(part["text"])
        return "".join(parts)
    if value is None:
        return ""
    raise error(f"{where}.content must be a string or a list of text parts")


def messages_pair(messages, where: str, error) -> tuple[str | None, str | None]:
    """(prompt, response) of OpenAI-style chat turns: the last assistant turn and the user turn before it."""
    if not isinstance(messages, list) or not messages:
        raise error(f"{where}.messages must be a non-empty list of {{\"role\", \"content\"}} turns")
    turns = []
    for i, m in enumerate(messages):
        at = f"{where}.messages[{i}]"
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise error(f"{at} must be an object with a \"role\" and a \"content\"")
        turns.append((m["role"], _content(m.get("content"), at, error)))
    last_assistant = max((i for i, (role, _) in enumerate(turns) if role == "assistant"), default=None)
    if last_assistant is not None and any(role == "user" for role, _ in turns[last_assistant + 1:]):
        last_assistant = None  # the conversation ends with a new request: score that request alone
    end = len(turns) if last_assistant is None else last_assistant
    prompt = next((text for role, text in reversed(turns[:end]) if role == "user"), None)
    response = None if last_assistant is None else turns[last_assistant][1]
    if prompt is None and response is None:
        raise error(f"{where}.messages has no user or assistant turn to score")
    return prompt, response


def parse_item(item, at: str, error, type_name) -> Item:
    """{"text"} | {"prompt", "response"} | {"messages"} -> Item."""
    from siren.features import join_prompt_response

    if not isinstance(item, dict):
        raise error(f"{at} must be an object with \"text\", \"prompt\"/\"response\" or \"messages\", "
                    f"got a JSON {type_name(item)}")
    kinds = [k for k, present in (("text", "text" in item), ("prompt/response", "prompt" in item or "response" in item),
                                  ("messages", "messages" in item)) if present]
    if len(kinds) > 1:
        raise error(f"{at}: give one of \"text\", \"prompt\"/\"response\" or \"messages\", not both "
                    f"{' and '.join(kinds[:2])}")
    if not kinds:
        raise error(f"{at} has no \"text\", \"prompt\", \"response\" or \"messages\" field")
    if kinds[0] == "messages":
        prompt, response = messages_pair(item["messages"], at, error)
        return Item(join_prompt_response(prompt, response), (prompt, response))
    keys = ["text"] if kinds[0] == "text" else [k for k in ("prompt", "response") if k in item]
    for k in keys:
        if item[k] is None and k == "prompt":
            continue        # no prompt: the response alone is scored
        if not isinstance(item[k], str):  # a null text or response is a 400, never an empty text
            raise error(f"{at}: field {k!r} must be a string, got a JSON {type_name(item[k])}", param=f"{at}.{k}")
    if kinds[0] == "text":
        return Item(item["text"])
    prompt, response = item.get("prompt"), item.get("response")
    return Item(join_prompt_response(prompt, response), (prompt, response))


def moderation_verdicts(result) -> dict:
    """The extra field of one /v1/moderations result: {"siren": {"prompt", "response"}} where the
    guard gave those verdicts, else {} (so a plain text's result keeps OpenAI's shape exactly)."""
    verdicts = {k: getattr(result, k).to_dict() for k in ("prompt", "response") if getattr(result, k, None) is not None}
    return {MODERATION_VERDICTS_FIELD: verdicts} if verdicts else {}


def stream_output(result, session) -> dict:
    """The per-chunk fields a stream adds for the two verdicts: `prompt`, `response` (None when
    absent) and `flagged_by` ("response": the answer's verdict stopped it; "text": the whole
    text's, for a guard without an answer head; None while not flagged)."""
    verdict = {k: (None if getattr(result, k, None) is None else getattr(result, k).to_dict())
               for k in ("prompt", "response")}
    flagged = getattr(session, "flagged_at", None) is not None
    by = getattr(session, "flagged_by", None) or "text"
    return verdict | {"flagged_by": by if flagged else None}


def saved_stream_rule(guard) -> dict:
    """The stream rule saved with the guard's answer head ({} without one)."""
    config = getattr(guard, "config", None) or {}
    head = (config.get("siren") or {}).get("answer_head") or {}
    return dict(head.get("stream") or {})


def stop_threshold(guard, asked: float | None, default_threshold: float) -> float:
    """The threshold a stream's stop decision uses: the client's, else the answer head's (the
    answer's verdict decides), else the server's."""
    if asked is not None:
        return float(asked)
    if getattr(guard, "has_answer_head", False) and getattr(guard, "stream_threshold", None) is not None:
        return float(guard.stream_threshold)
    return float(default_threshold)


def session_rule(guard, threshold: float, debounce: int | None):
    """The StreamRule of a served session: the given threshold and debounce, the rest (and the
    debounce when not given) as saved with the guard."""
    from siren.runtime.stream_rules import StreamRule

    saved = saved_stream_rule(guard)
    return StreamRule(float(threshold), debounce if debounce is not None else saved.get("debounce"),
                      saved.get("min_answer_tokens"), saved.get("ema"))  # None: configs/defaults.yaml's
