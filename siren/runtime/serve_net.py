"""The network side of `siren serve`: what a hostile client can hold, and for how long.

uvicorn alone lets a socket that sends nothing, or a header line every few seconds, stay open
forever (its keep-alive timer runs only after a response), so about 20,000 such sockets used
to exhaust the file descriptors: good requests then timed out and every refused accept logged
a traceback. Here (all limits in `configs/defaults.yaml`, `serve:`):

- `header_timeout_s`: a request's headers must be complete this long after the connection
  opens (or after its first byte, for a later request on a kept-alive connection);
- `body_timeout_s`: its body must be complete this long after the headers;
- `idle_timeout_s`: a kept-alive connection with no new request is closed (uvicorn's
  `timeout_keep_alive`);
- `max_connections`: above it, a new connection first evicts the oldest one still waiting for
  its headers (so a flood of idle sockets cannot lock out a client that sends a request at
  once), else it is answered 503 and closed; kept below the file-descriptor limit;
- `max_header_bytes`: the request line + headers (h11's incomplete-event limit);
- refusals and time-outs are logged once per `refusal_log_interval_s` with a count, never
  once per connection (`OncePerInterval`), and so are asyncio's accept errors.

The websocket's own limit (`ws_handshake_timeout_s`: the start message, with the API key when
one is set, must come within that time) is applied in `serve_app`'s websocket route.
"""

from __future__ import annotations

import logging
import resource
import threading
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("siren.serve")

_BUSY_BODY = (b'{"error": {"message": "too many open connections (max_connections); retry shortly", '
              b'"type": "server_busy", "param": null, "code": "too_many_connections"}}')
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
         b"content-length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))


class OncePerInterval(logging.Filter):
    """Lets the first record of each kind through, then one per `interval` seconds, which says
    how many were held back since. A kind: the logger and the message template."""

    def __init__(self, interval: float):
        super().__init__()
        self.interval = float(interval)
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._held[key] = self._held.get(key, 0) + 1
                return False
            self._last[key] = now
            held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like this in the last {self.interval:g} s, not logged)"
        if record.name == "asyncio" and record.exc_info:
            # asyncio's accept error: the one line says it; the traceback is the same every time.
            record.msg = f"{record.getMessage()}: {record.exc_info[1]!r}"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


def install_log_filter(interval: float) -> OncePerInterval:
    """One filter on every logger that can log per connection."""
    flt = OncePerInterval(interval)
    for name in ("siren.serve", "uvicorn.error", "asyncio"):
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, OncePerInterval)]:
            logger.removeFilter(old)
        logger.addFilter(flt)
    return flt


def fd_headroom(max_connections: int, reserve: int = 128) -> int:
    """max_connections, lowered to what the file-descriptor limit allows (raising the soft limit
    to the hard one first), so the cap is hit before accept() fails."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + reserve
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < want:
        lowered = max(1, soft - reserve)
        log.warning("max_connections %d lowered to %d: the open-file limit is %d (raise it with ulimit -n)",
                    max_connections, lowered, soft)
        return lowered
    return max_connections


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with header/body deadlines and a connection cap (class attributes,
    set per server by `protocol_class`)."""

    # Set per server by `protocol_class` from the serve config (configs/defaults.yaml's `serve:`).
    header_timeout: float
    body_timeout: float
    max_connections: int

    def connection_made(self, transport):
        self._deadline, self._phase = None, None
        super().connection_made(transport)
        # Connections waiting for a request, oldest first (a dict keeps insertion order), shared
        # by the server's connections: eviction takes the first, in O(1), however many are held.
        if not hasattr(self.server_state, "siren_waiting"):
            self.server_state.siren_waiting = {}
        self._waiting_set = self.server_state.siren_waiting
        if len(self.connections) > self.max_connections and not self._evict_oldest_waiting():
            log.warning("connection refused: %d connections are open (max_connections)", len(self.connections) - 1)
            transport.write(_BUSY)
            transport.close()
            self.connections.discard(self)
            return
        self._arm()

    def _evict_oldest_waiting(self) -> bool:
        """Close the oldest other connection that has not sent a whole request header."""
        for other in self._waiting_set:
            if other is not self:
                log.warning("max_connections reached: closed the oldest connection still waiting for a request")
                other._drop()
                return True
        return False

    def _arm(self) -> None:
        """Start the deadline of the phase the peer is in, once per phase (a byte every few
        seconds does not extend it)."""
        state = self.conn.their_state
        phase = state if state in (h11.IDLE, h11.SEND_BODY) else None
        if phase == h11.IDLE and (self.cycle is None or self.cycle.response_complete):
            self._waiting_set.setdefault(self, None)     # nothing is lost by closing it
        else:
            self._waiting_set.pop(self, None)
        if phase == self._phase:
            return
        self._disarm()
        self._phase = phase
        if phase is not None:
            timeout = self.header_timeout if phase == h11.IDLE else self.body_timeout
            self._deadline = self.loop.call_later(timeout, self._expired, phase)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, phase) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.warning("closed a connection whose request %s did not arrive in time (header_timeout_s / "
                        "body_timeout_s)", "headers" if phase == h11.IDLE else "body")
            self._drop()

    def _drop(self) -> None:
        self._disarm()
        self._phase = None
        self._waiting_set.pop(self, None)
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.transport.is_closing() and self.transport.get_protocol() is self:
            self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Between requests uvicorn's keep-alive timer runs; the next request's first byte
        # (data_received) starts its header deadline.
        self._disarm()
        self._phase = None
        if not self.transport.is_closing() and self.conn.their_state == h11.IDLE:
            self._waiting_set.pop(self, None)
            self._waiting_set[self] = None               # idle again: the newest waiting one

    def handle_websocket_upgrade(self, event) -> None:
        self._disarm()
        self._phase = None
        self._waiting_set.pop(self, None)
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc) -> None:
        self._disarm()
        self._waiting_set.pop(self, None)
        super().connection_lost(exc)


def protocol_class(limits) -> type:
    """`GuardedH11Protocol` with the deadlines and the cap of `limits`."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {
        "header_timeout": float(limits.header_timeout_s), "body_timeout": float(limits.body_timeout_s),
        "max_connections": int(limits.max_connections)})


def uvicorn_options(limits, *, host: str, port: int, log_level: str) -> dict:
    """Keyword arguments of `uvicorn.run` / `uvicorn.Config` for these limits."""
    import dataclasses

    limits = dataclasses.replace(limits, max_connections=fd_headroom(limits.max_connections))
    install_log_filter(limits.refusal_log_interval_s)
    return dict(host=host, port=port, log_level=log_level, http=protocol_class(limits),
                timeout_keep_alive=max(1, round(limits.idle_timeout_s)),
                h11_max_incomplete_event_size=int(limits.max_header_bytes))
