"""Reading a Server-Sent Events stream of the test client with a time limit: a plain module.

``EventReader`` reads the stream in a thread of its own, so that a test waits for each event
at most a few seconds and a stream that never sends it fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import queue
import threading
from typing import Any

from flask import Flask
from werkzeug.test import TestResponse

import watch


class EventReader:
    """The events (``{"id", "event"?, "data"}``) of a streaming response, in order."""

    def __init__(self, app: Flask, response: TestResponse) -> None:
        self._app = app
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.started = threading.Event()  # the stream sent its first line
        self._thread = threading.Thread(target=self._read, args=(response,), daemon=True)
        self._thread.start()

    def _read(self, response: TestResponse) -> None:
        current: dict[str, Any] = {}
        for chunk in response.response:
            self.started.set()
            for line in chunk.decode().split("\n"):
                if line == "":
                    if "data" in current:
                        self._events.put(current)
                    current = {}
                elif not line.startswith(":"):
                    field, _, value = line.partition(": ")
                    current[field] = json.loads(value) if field == "data" else value

    def next(self, timeout: float = 10.0) -> dict[str, Any]:
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout}s") from None

    def take(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        return [self.next(timeout) for _ in range(count)]

    def nothing_more(self, wait: float = 0.5) -> bool:
        try:
            self._events.get(timeout=wait)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        """End the stream (as a worker shutting down does) and its reading thread."""
        watch.get_feed(self._app).stopping = lambda: True
        self._thread.join(timeout=5)


def open_stream(app: Flask, path: str, last_event_id: int | None = None) -> EventReader:
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    response = app.test_client().get(path, headers=headers, buffered=False)
    assert response.mimetype == "text/event-stream"
    return EventReader(app, response)
