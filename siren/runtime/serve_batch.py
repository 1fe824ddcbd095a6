"""`siren serve`'s worker: the one thread that owns the guard (`DynamicBatcher`: dynamic batching
of scoring requests, and every other call to the guard in arrival order) and the streaming
sessions it runs (`open_session`: the guard's incremental session, else `StatelessSession`)."""

import dataclasses
import inspect
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from siren.config import load as load_config
from siren.errors import SirenError, check_unicode
from siren.features import default_batch_tokens, join_prompt_response
from siren.runtime.serve_pairs import session_rule, stop_threshold
from siren.runtime.serve_requests import RequestError, ServeConfig


def resolve_batch_tokens(limits: ServeConfig, guard) -> int:
    """limits.batch_tokens, else the rule of a null batch_tokens: small batches on CPU
    (activations that stay in cache), large ones on GPU."""
    return limits.batch_tokens or default_batch_tokens(getattr(guard, "device", "cpu"))


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

    def __init__(self, guard, limits: ServeConfig, *, default_threshold: float, threads: int | None = None):
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
            threshold = self.default_threshold if job.threshold is None else job.threshold
            mine = results[start:start + len(job.texts)]
            start += len(job.texts)
            # only the verdict moves with a request's own threshold; categories have their own
            job.future.set_result([dataclasses.replace(r, is_harmful=bool(r.score >= threshold), threshold=threshold)
                                   for r in mine])


# ---------------------------------------------------------------- streaming sessions

class StatelessSession:
    """The streaming session's interface over the stateless form: after each chunk, score
    prompt + "\\n" + the response so far with `guard.score_streaming` (a full forward each time).

    `flagged_at`: None until `debounce` consecutive chunks scored harmful, then
    {"chunk": index of the chunk that completed the run, "char": response length at that point}.
    """

    def __init__(self, guard, prompt: str | None = None, *, debounce: int | None = None,
                 threshold: float | None = None):
        self.guard, self.prompt, self.threshold = guard, prompt, threshold
        self.debounce = int(load_config("serve").debounce if debounce is None else debounce)
        self.response = ""
        self.chunks = 0
        self._run = 0
        self.flagged_at: dict | None = None

    def feed(self, chunk: str):
        if not isinstance(chunk, str):  # checked before the session changes: a refused chunk leaves it as it was
            raise SirenError(f"feed() takes a string chunk of the response, got a {type(chunk).__name__}")
        check_unicode(chunk, "the chunk")
        self.response += chunk
        result = self.guard.score_streaming(join_prompt_response(self.prompt, self.response), threshold=self.threshold)
        self._run = self._run + 1 if result.is_harmful else 0
        if self.flagged_at is None and self._run >= self.debounce:
            self.flagged_at = {"chunk": self.chunks, "char": len(self.response)}
        self.chunks += 1
        return result


def open_session(guard, prompt: str | None = None, *, debounce: int | None = None, threshold: float | None = None,
                 stop: float | None = None):
    """The guard's incremental session if it has one (`guard.stream(prompt=, rule=)`, or the older
    `guard.stream(prompt=, debounce=, threshold=)`, returning an object with `.feed`), else a
    `StatelessSession`. debounce None: the guard's saved stream rule (else the config's).
    threshold: the whole text's and the prompt's verdicts; stop: the stop rule's (None: the
    answer head's with one, else `threshold`)."""
    stream = getattr(guard, "stream", None)
    try:
        takes_rule = stream is not None and "rule" in inspect.signature(stream).parameters
    except (TypeError, ValueError):
        takes_rule = False
    if takes_rule:  # the two-verdict runtime: the rule decides on the answer's verdict
        thr = stop if stop is not None else stop_threshold(guard, threshold, guard.default_threshold)
        # threshold: the whole text's (and the prompt's) verdict; the rule's: the stop decision
        session = stream(prompt=prompt, rule=session_rule(guard, thr, debounce), threshold=threshold)
        if hasattr(session, "feed"):
            return session
    debounce = load_config("serve").debounce if debounce is None else debounce
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

