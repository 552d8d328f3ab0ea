"""The rest of a request body the app did not read, read and thrown away before it answers.

Most HTTP clients (``requests``, ``http.client``, curl once gunicorn says ``100 Continue``)
send the whole body before they read the answer. An answer given without reading the body
(a 413 over ``--max-body``, a 503 before a model is loaded, a 415) leaves that body on the
socket; gunicorn reads at most 64 KiB of it and closes the connection, and the client,
still sending, gets a reset or a broken pipe instead of the JSON error. :class:`DrainBody`
wraps the WSGI app: once the app has answered, it reads what is left of the body, in
chunks, up to ``bound`` bytes of body in all, and so the client reads the answer. A body
declared larger than ``bound`` is not read (gunicorn closes the connection: the client may
see a reset); neither is the part of a chunked body past ``bound``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.exceptions import ClientDisconnected
from werkzeug.wsgi import LimitedStream, get_content_length

log = logging.getLogger(__name__)

CHUNK = 64 * 1024

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class DrainBody:
    """WSGI middleware: after ``app`` answered, read and discard the rest of the request
    body when the whole body is at most ``bound`` bytes (see the module's docstring)."""

    def __init__(self, app: WSGIApp, bound: int) -> None:
        self.app = app
        self.bound = bound

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        length = get_content_length(environ)
        stream: LimitedStream | None = None
        if length is not None and 0 < length <= self.bound:
            # the app reads through this wrapper, so what is left is known exactly
            stream = LimitedStream(environ["wsgi.input"], length)
        elif length is None and environ.get("wsgi.input_terminated", False):
            # chunked: the server ends the stream; is_max: an early end is that end
            stream = LimitedStream(environ["wsgi.input"], self.bound, is_max=True)
        if stream is not None:
            environ["wsgi.input"] = stream
        answer = self.app(environ, start_response)
        if stream is not None:
            _drain(stream)
        return answer


def _drain(stream: LimitedStream) -> None:
    """Read ``stream`` to its limit (at most ``bound`` bytes), or to the end of a chunked
    body, or until the client goes away. Bounded: each pass reads at least one byte of the
    limit, or stops."""
    try:
        while not stream.is_exhausted:
            if not stream.read(CHUNK):
                return
    except (ClientDisconnected, OSError) as err:  # gone: nobody reads the answer
        log.debug("the client left while its body was drained: %s", err)
