"""The gunicorn worker var_keeper is served by: gthread, with threads that never wait for a client.

Why (issue 13): gevent workers cannot be starved by slow clients, but their latency tail was
4-10x gthread's for the same code (64 connections: p99 400-900 ms against 60-170 ms with 2
workers x 8 threads; a plain Flask app shows the same). gunicorn's own gthread worker waits up
to 5 s for a connection's first bytes in a thread, then reads the rest of the request there,
blocking: a client that sends half a header and stalls holds that thread for good, and 50 of
them starved a 2x4-thread server.

``BufferedThreadWorker`` is gthread whose threads only read what has arrived (non-blocking,
once the poller saw the connection readable) and serve a request once its head (up to the blank
line) is in and, for a ``Content-Length`` body of at most ``MAX_BUFFERED_BODY``, its body too;
until then the connection goes back to the poller. The poller does no more than gthread's:
a version that read in the poller served 0.65-0.8x the POSTs a second (its one thread waits
for the GIL after each read). What it guarantees:

- a client that sends its head or a small body slowly costs a buffer, and a thread only for
  the moment it reads what has arrived;
  a connection that sends nothing is closed after gunicorn's ``keepalive`` (as under gevent),
  one whose request is not ready ``REQUEST_TIMEOUT`` after its first byte is closed, and one
  whose head outgrows gunicorn's limits is answered 431 (or, from the bytes already there, by
  gunicorn's own 400/414);
- a thread reads and writes the client with a timeout of ``CLIENT_IO_TIMEOUT`` per call: only
  a larger, chunked or ``Expect: 100-continue`` body is read by the thread, and a client that
  stalls it frees the thread after that long;
- kept-alive and pipelined connections go back to the poller after each request, their next
  request buffered the same way (bytes read ahead stay with it, in order).

TLS, PROXY protocol, uwsgi and HTTP/2 with prior knowledge are served as by gthread.
"""

from __future__ import annotations

import bisect
import errno
import os
import re
import selectors
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from functools import partial

from gunicorn import util
from gunicorn.http import get_parser
from gunicorn.http.message import DEFAULT_MAX_HEADERFIELD_SIZE, MAX_HEADERS, MAX_REQUEST_LINE
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn, ThreadWorker

# From a request's first byte to its whole head (and small body). Until its first byte, a
# connection, new or kept alive, is idle: closed after gunicorn's `keepalive` (as under gevent).
REQUEST_TIMEOUT = 30.0
# The largest Content-Length body collected (without waiting) before the request is served.
MAX_BUFFERED_BODY = 64 * 1024
# How long one read or write of a thread may wait on the client.
CLIENT_IO_TIMEOUT = 10.0
RECV_SIZE = 64 * 1024
# Long-polls (``?wait=``) and event streams (``/events``) wait for changes, up to minutes: they
# are served by threads of their own, made as needed up to this many per worker, so that open
# watchers never take the threads other requests need (an idle one costs about 36 KiB).
WATCH_THREADS = int(os.environ.get("GUNICORN_WATCH_THREADS", "1000"))
_WATCH_REQUEST = re.compile(rb"GET (?:/events[/? ]|[^ ]*[?&]wait=)")

_BARE_LF = re.compile(rb"(?<!\r)\n")
_MORE = object()  # handle(): the request has not all arrived
_WATCH = object()  # handle(): a watcher's request, for the watchers' threads


def body_to_buffer(head: bytes) -> int:
    """How many body bytes to collect after ``head`` before serving: all of a Content-Length
    body up to ``MAX_BUFFERED_BODY``, else none (gunicorn's parser judges what is malformed)."""
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name in (b"transfer-encoding", b"expect"):
            return 0
        if name == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return 0
    return length if 0 <= length <= MAX_BUFFERED_BODY else 0


def _line_start(received: bytearray) -> int:
    return 2 if received.startswith(b"\r\n") else 0  # gunicorn skips one empty line


class BufferedConn(TConn):
    """A plain HTTP/1 connection whose request bytes are collected in ``received``."""

    def __init__(self, cfg, sock, client, server) -> None:
        super().__init__(cfg, sock, client, server)
        self.parser = get_parser(cfg, sock, client)
        self.initialized = True  # so that ThreadWorker.handle neither waits nor makes a parser
        self.data_ready = True
        self.received = bytearray()
        self.needed: int | None = None  # bytes that make the request, once its head is in
        self.scanned = 0  # where the search for the head's end goes on
        self.waiting_in: deque | None = None  # the poller's queue it waits in, if any
        self.watching = False  # its request is a watcher's, served by the watchers' threads

    def init(self) -> None:
        """In the thread, once ThreadWorker.handle made the socket blocking."""
        self.sock.settimeout(CLIENT_IO_TIMEOUT)

    def receive(self) -> bool:
        """Read what has arrived, without waiting (the socket is non-blocking); False: EOF."""
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if data and not self.received:  # a request begins
            self.timeout = time.monotonic() + REQUEST_TIMEOUT
        self.received += data
        return bool(data)

    def ready(self, line_limit: int, head_limit: int) -> bool | None:
        """Whether a thread can serve the request from ``received``; None: refuse it."""
        if self.needed is None:
            end = self.received.find(b"\r\n\r\n", self.scanned)
            if end < 0:
                start, self.scanned = self.scanned, max(0, len(self.received) - 3)
                skip = 2 if self.received.startswith(b"\r\n") else 0  # gunicorn skips one
                line_end = self.received.find(b"\r\n", skip)
                line = (line_end if line_end >= 0 else len(self.received) - 2) - skip
                if line > line_limit or _BARE_LF.search(self.received, start):
                    return True  # gunicorn answers 414 or 400 from these bytes alone
                return None if len(self.received) > head_limit else False
            self.needed = end + 4 + body_to_buffer(bytes(self.received[:end]))
        return len(self.received) >= self.needed

    def hand_to_parser(self) -> None:
        self.parser.unreader.unread(bytes(self.received))
        self.received, self.needed, self.scanned = bytearray(), None, 0


class BufferedThreadWorker(ThreadWorker):
    """gthread whose threads serve a request only once it is there (see the module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.cfg
        plain_http = getattr(cfg, "protocol", "http") == "http" and cfg.proxy_protocol == "off"
        self.buffering = plain_http and not cfg.is_ssl
        limit = cfg.limit_request_line
        self.line_limit = min(limit, MAX_REQUEST_LINE) if limit > 0 else 1 << 20
        fields = cfg.limit_request_fields
        fields = fields if 0 < fields <= MAX_HEADERS else MAX_HEADERS
        field_size = cfg.limit_request_field_size or DEFAULT_MAX_HEADERFIELD_SIZE
        self.head_limit = self.line_limit + 2 + fields * (field_size + 2) + 4
        self.watch_pool: ThreadPoolExecutor | None = None

    def init_process(self) -> None:
        self.watch_pool = ThreadPoolExecutor(WATCH_THREADS, thread_name_prefix="watch")
        super().init_process()  # runs the worker until it stops

    def run(self) -> None:
        try:
            super().run()
        finally:
            if self.watch_pool is not None:
                self.watch_pool.shutdown(wait=False)

    def accept(self, listener) -> None:
        if not self.buffering:
            return super().accept(listener)
        try:
            sock, client = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return None
            raise
        self.nr_conns += 1
        if negotiation.prior_knowledge_allowed(self.cfg, client):
            self.enqueue_req(TConn(self.cfg, sock, client, listener.getsockname()))
        else:
            conn = BufferedConn(self.cfg, sock, client, listener.getsockname())
            conn.timeout = time.monotonic() + (self.cfg.keepalive or REQUEST_TIMEOUT)
            self.wait(conn, self.keepalived_conns)
        return None

    def wait(self, conn: BufferedConn, queue: deque) -> None:
        """Let the poller watch ``conn`` until ``conn.timeout`` (then murder_* close it)."""
        conn.waiting_in = queue
        if queue and queue[-1].timeout > conn.timeout:  # murder_* want the queue in order
            bisect.insort(queue, conn, key=lambda waiting: waiting.timeout)
        else:
            queue.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_readable, conn))

    def on_readable(self, conn: BufferedConn, _sock: object) -> None:
        self.poller.unregister(conn.sock)
        conn.waiting_in.remove(conn)
        conn.waiting_in = None
        self.enqueue_req(conn)

    def handle(self, conn: TConn) -> object:
        """In a thread: serve the request if it has all arrived, else give the connection back
        to the poller (_MORE) without waiting."""
        if not isinstance(conn, BufferedConn):
            return super().handle(conn)
        more = conn.receive()
        ready = conn.ready(self.line_limit, self.head_limit)
        if ready is None:
            with suppress(OSError):
                util.write_error(conn.sock, 431, "Request Header Fields Too Large", "too large")
        if not ready:
            return _MORE if more and ready is False else False
        if not conn.watching and _WATCH_REQUEST.match(conn.received, _line_start(conn.received)):
            conn.watching = True
            return _WATCH
        conn.hand_to_parser()
        keepalive = super().handle(conn)
        if not keepalive:
            with suppress(OSError):
                conn.close(graceful=True)  # here, not in the poller: it may wait up to 2 s
        return keepalive

    def handle_request(self, req: object, conn: TConn) -> bool:
        """gunicorn's, but a client that stops reading its answer (or sending its body) for
        ``CLIENT_IO_TIMEOUT`` costs one line in the log, not gunicorn's "Socket error"
        traceback: the connection is closed, the thread free."""
        try:
            return super().handle_request(req, conn)
        except TimeoutError:
            client = conn.client
            peer = ":".join(map(str, client[:2])) if isinstance(client, tuple) else client
            self.log.warning(
                "client %s sent or read nothing for %.0f s: connection closed",
                peer,
                CLIENT_IO_TIMEOUT,
            )
            return False

    def finish_request(self, conn: TConn, fs: Future) -> None:
        if not isinstance(conn, BufferedConn):
            return super().finish_request(conn, fs)
        try:
            result = False if fs.cancelled() else fs.result()
            if result is _WATCH and self.watch_pool is not None:
                watched = self.watch_pool.submit(self.handle, conn)
                watched.add_done_callback(
                    lambda done: self.method_queue.defer(self.finish_request, conn, done)
                )
                return None
            conn.watching = False  # its next request is routed afresh
            if result is _MORE:
                self.wait(conn, self.pending_conns)
            elif not result:
                self.nr_conns -= 1
                conn.close()
            else:
                conn.sock.setblocking(False)
                conn.received += conn.parser.unreader.take_buffered()
                if conn.received:  # pipelined: the next request is here already, or part of it
                    conn.timeout = time.monotonic() + REQUEST_TIMEOUT
                    self.enqueue_req(conn)
                    return None
                linger = self.cfg.keepalive if self.alive else STOP_KEEPALIVE_LINGER
                conn.timeout = time.monotonic() + min(self.cfg.keepalive, linger)
                self.wait(conn, self.keepalived_conns)
        except Exception:  # noqa: BLE001 - as ThreadWorker.finish_request: drop the connection
            self.nr_conns -= 1
            conn.close()
        return None

    def _cap_keepalive(self, deadline: float) -> None:
        """On SIGTERM: requests still arriving get STOP_KEEPALIVE_LINGER too, as kept-alive ones."""
        super()._cap_keepalive(deadline)
        for conn in self.pending_conns:
            conn.timeout = min(conn.timeout, deadline)
