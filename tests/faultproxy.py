"""A TCP proxy on 127.0.0.1 that makes the network between the service and its database bad,
on demand (used by tests/test_slow_network.py). Standard library only: a thread accepts, and
two threads pump each connection, one for each direction.

Its faults, switched while it runs from a test's thread (a delay, a stall and losses combine):

- ``pass_through()``: forward everything at once: every fault below off;
- ``delay(low, high)``: hold each chunk a random ``low``-``high`` seconds before forwarding it
  (a slow link: the chunks of one direction stay in order);
- ``stall(upstream, downstream)``: a black hole. Stop forwarding in one or both directions
  without closing anything; what is in flight is held, and delivered once ``pass_through()``
  ends the stall, as TCP would after a network partition heals;
- ``cut_all()``: reset (RST) every open connection now, wherever it is;
- ``cut_mid_query()``: on every open connection, forward the client's next message to the
  database, then reset the connection when the reply comes, before the client sees it: the
  server ran the statement (a COMMIT too) and the client cannot know;
- ``lossy(fraction)``: from now on, each message from the client, with probability
  ``fraction``, is its connection's last: reset either before it is forwarded or, as in
  ``cut_mid_query``, when its reply comes (half each).

``stop()`` resets every connection and joins every thread. ``stats`` counts connections
accepted and cut.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

_CHUNK = 65536
# How often a blocked pump looks at whether its connection was cut or the proxy stopped.
_POLL_S = 0.1
# SO_LINGER on with a zero timeout: close() sends RST instead of FIN.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


@dataclass
class Stats:
    accepted: int = 0
    cut: int = 0


@dataclass(eq=False)
class _Link:
    """One client connection and the proxy's connection to the database for it."""

    client: socket.socket
    server: socket.socket
    closed: bool = False
    cut_next: bool = False  # cut when the reply to the client's next message comes
    drop_reply: bool = False  # the next chunk from the server ends the connection
    lock: threading.Lock = field(default_factory=threading.Lock)


class FaultProxy:
    """A proxy from ``127.0.0.1:<port>`` to ``target_host:target_port`` (see the module
    docstring). Usable as a context manager, which starts and stops it."""

    def __init__(self, target_host: str, target_port: int, seed: int = 0) -> None:
        self.target = (target_host, target_port)
        self.stats = Stats()
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_POLL_S)
        self.port: int = self._listener.getsockname()[1]
        self._links: set[_Link] = set()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        # Set while that direction flows; cleared by a stall. [0]: upstream, [1]: downstream.
        self._flowing = (threading.Event(), threading.Event())
        self._delay = (0.0, 0.0)
        self._loss = 0.0
        self.pass_through()

    # Faults

    def pass_through(self) -> None:
        self._delay, self._loss = (0.0, 0.0), 0.0
        for flowing in self._flowing:
            flowing.set()

    def delay(self, low: float, high: float) -> None:
        self._delay = (low, high)

    def stall(self, upstream: bool = True, downstream: bool = True) -> None:
        if upstream:
            self._flowing[0].clear()
        if downstream:
            self._flowing[1].clear()

    def cut_all(self) -> int:
        """Reset every open connection; return how many."""
        with self._lock:
            links = list(self._links)
        for link in links:
            self._cut(link)
        return len(links)

    def cut_mid_query(self) -> int:
        """Arm every open connection to be reset when the reply to its next query comes."""
        with self._lock:
            links = list(self._links)
        for link in links:
            link.cut_next = True
        return len(links)

    def lossy(self, fraction: float) -> None:
        self._loss = fraction

    # Life cycle

    def start(self) -> FaultProxy:
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.pass_through()  # wakes pumps held by a stall
        self.cut_all()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=5)
        self._listener.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # Internals

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
                client.close()
                continue
            for sock in (client, server):
                sock.settimeout(_POLL_S)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client, server)
            with self._lock:
                self._links.add(link)
                self.stats.accepted += 1
            self._spawn(self._pump, link, True)
            self._spawn(self._pump, link, False)

    def _pump(self, link: _Link, upstream: bool) -> None:
        source, sink = (link.client, link.server) if upstream else (link.server, link.client)
        flowing = self._flowing[0 if upstream else 1]
        try:
            while self._hold(link, flowing):
                try:
                    data = source.recv(_CHUNK)
                except TimeoutError:
                    continue
                if not data:  # one side closed: so does the other
                    self._close(link, reset=False)
                    return
                low, high = self._delay
                if high > 0:
                    time.sleep(self._random(low, high))
                if not self._hold(link, flowing):  # a stall began meanwhile: hold the chunk
                    return
                if upstream and not self._before_forwarding(link):
                    return
                if not upstream and link.drop_reply:
                    self._cut(link)
                    return
                self._send(link, sink, data)
        except OSError:  # the other pump or a cut closed the sockets
            self._close(link, reset=True)

    def _hold(self, link: _Link, flowing: threading.Event) -> bool:
        """Wait while the direction is stalled; False once the connection is gone."""
        while not flowing.wait(_POLL_S):
            if link.closed or self._stopping.is_set():
                return False
        return not link.closed

    def _before_forwarding(self, link: _Link) -> bool:
        """Decide the fate of a client message; False if the connection was cut instead."""
        if link.cut_next:
            link.drop_reply = True  # before sending: the reply may come at once
        elif self._loss and self._random(0.0, 1.0) < self._loss:
            if self._random(0.0, 1.0) < 0.5:
                self._cut(link)
                return False
            link.drop_reply = True
        return True

    def _send(self, link: _Link, sink: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if link.closed:
                raise OSError("connection cut")
            try:
                view = view[sink.send(view) :]
            except TimeoutError:
                continue

    def _random(self, low: float, high: float) -> float:
        with self._rng_lock:
            return self._rng.uniform(low, high)

    def _cut(self, link: _Link) -> None:
        if self._close(link, reset=True):
            with self._lock:
                self.stats.cut += 1

    def _close(self, link: _Link, reset: bool) -> bool:
        """Close both sockets (with RST if ``reset``); False if already closed."""
        with link.lock:
            if link.closed:
                return False
            link.closed = True
        for sock in (link.client, link.server):
            with contextlib.suppress(OSError):
                if reset:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
                sock.close()
        with self._lock:
            self._links.discard(link)
        return True
