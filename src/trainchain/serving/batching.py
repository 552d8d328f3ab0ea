"""Requests that arrive together, predicted together: one batcher per loaded image model.

A request's thread puts its image in the batcher's queue and waits for its own row of
the answer. The batcher's thread takes the first image waiting and, while other
requests for the model are still being read and decoded (they said so with
:meth:`Batcher.expecting`), waits up to ``max_wait`` seconds after the first image
arrived for them to join, up to ``max_batch`` images; then one call of the model
answers them all. A request alone (nothing queued, nothing in the model, no other request
decoding) calls the model in its own thread at once: nothing waits for company that is
not coming, and no thread hands it over.

Everything is bounded: the queue (a full one is :class:`BatchQueueFull`), each wait for
an answer (:class:`BatchTimeout`), the batch, the wait, and :meth:`Batcher.close` (the
model's swap or the service's end): what is queued is still answered, new requests go
to the model directly, and the thread is joined with a timeout. A batch whose call
fails answers each of its requests with :class:`BatchFailed`, which names the error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from trainchain.core.errors import TrainchainError
from trainchain.serving.config import BatchOptions

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 10.0

Predict = Callable[[npt.NDArray[np.float32]], Any]


class BatchError(TrainchainError):
    """A request the batcher could not answer."""


class BatchQueueFull(BatchError):
    """The queue holds ``queue`` images already: the service is busier than it can answer."""


class BatchTimeout(BatchError):
    """No answer within the options' ``timeout``."""


class BatchClosed(BatchError):
    """The batcher was closed (its model swapped out): predict without it."""


class BatchFailed(BatchError):
    """The model call of a whole batch failed; ``cause`` is what it raised."""

    def __init__(self, message: str, cause: BaseException, size: int) -> None:
        super().__init__(message)
        self.cause = cause
        self.size = size


@dataclass
class _Item:
    pixels: npt.NDArray[Any]
    arrived: float = field(default_factory=time.monotonic)
    answer: Future[npt.NDArray[np.float64]] = field(default_factory=Future)


class Batcher:
    """Predicts the images of concurrent requests in one call of ``predict``.

    ``predict`` takes ``float32`` images ``(n, height, width, channels)`` and returns one
    row per image. ``name`` names the model in errors and in the thread's name.
    """

    def __init__(self, predict: Predict, options: BatchOptions, name: str) -> None:
        self.options = options
        self.name = name
        self._predict = predict
        self._pending: deque[_Item] = deque()
        self._expected = 0  # requests decoding an image for this batcher
        self._running = False  # a batch (or a request alone) is in the model
        self._closed = False
        self._cond = threading.Condition()
        self.batches = 0  # model calls made (for tests and logs)
        self.largest = 0  # the largest batch so far
        self._thread = threading.Thread(
            target=self._run, name=f"trainchain-batcher-{name}", daemon=True
        )
        self._thread.start()

    # ---- what request threads call ---------------------------------------------------
    @contextmanager
    def expecting(self) -> Iterator[None]:
        """Around reading and decoding a request's image: the batch being formed waits (up
        to ``max_wait``) for it."""
        with self._cond:
            self._expected += 1
        try:
            yield
        finally:
            with self._cond:
                self._expected -= 1
                self._cond.notify_all()

    def submit(self, pixels: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """The model's row for one image ``(height, width, channels)`` (or ``(1, ...)``).

        A request alone (nothing queued, no batch in the model, no other request decoding)
        calls the model in its own thread: no hand-over to the batcher's thread."""
        item = _Item(np.asarray(pixels).reshape(np.shape(pixels)[-3:]))
        with self._cond:
            if self._closed:
                raise BatchClosed(f"the batcher of {self.name} is closed")
            alone = not self._pending and not self._running and self._expected == 0
            if alone:
                self._running = True
            elif len(self._pending) >= self.options.queue:
                raise BatchQueueFull(
                    f"{self.name}: {len(self._pending)} images are waiting for the model "
                    f"already (trainchain serve --batch-queue {self.options.queue}); retry "
                    "shortly, or start the service with more --workers"
                )
            else:
                self._pending.append(item)
                self._cond.notify_all()
        if alone:
            self._answer_then_free([item])
        try:
            return item.answer.result(timeout=self.options.timeout)
        except FutureTimeout:
            raise BatchTimeout(
                f"{self.name}: no answer within {self.options.timeout:g} s; the model is "
                "busier than it can answer"
            ) from None

    # ---- the batcher's thread --------------------------------------------------------
    def _next_batch(self) -> list[_Item] | None:
        """The next batch to predict, marked running; None once closed and empty."""
        opts = self.options
        with self._cond:
            while not self._pending or self._running:  # a request alone is in the model
                if self._closed and not self._pending:
                    return None
                self._cond.wait()
            deadline = self._pending[0].arrived + opts.max_wait
            while len(self._pending) < opts.max_batch and self._expected > 0 and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._running = True
            return [self._pending.popleft() for _ in range(min(opts.max_batch, len(self._pending)))]

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._answer_then_free(batch)

    def _answer_then_free(self, batch: list[_Item]) -> None:
        try:
            self._answer(batch)
        finally:
            with self._cond:
                self._running = False
                self._cond.notify_all()

    def _answer(self, batch: list[_Item]) -> None:
        first = batch[0].pixels
        x = np.empty((len(batch), *first.shape), dtype=np.float32)
        try:
            for i, item in enumerate(batch):
                x[i] = item.pixels  # uint8 to float32, once, into the batch
            rows = np.asarray(self._predict(x), dtype=np.float64)
            if rows.ndim != 2 or len(rows) != len(batch):
                raise ValueError(
                    f"the model returned an array of shape {rows.shape} for {len(batch)} images"
                )
        except Exception as err:  # every request of the batch gets it, none waits on
            log.warning(
                "%s: a batch of %d image(s) failed: %s: %s",
                self.name,
                len(batch),
                type(err).__name__,
                err,
            )
            for item in batch:
                item.answer.set_exception(
                    BatchFailed(
                        f"the model failed on a batch of {len(batch)} image(s): "
                        f"{type(err).__name__}: {str(err)[:300]}",
                        err,
                        len(batch),
                    )
                )
            return
        finally:
            self.batches += 1
            self.largest = max(self.largest, len(batch))
        for item, row in zip(batch, rows, strict=True):
            item.answer.set_result(row)

    # ---- the end ---------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Refuse new images (:class:`BatchClosed`), answer the queued ones, stop the
        thread; False when it did not stop within ``timeout`` (a model call hangs)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("%s: the batcher did not stop within %.0f s", self.name, timeout)
            return False
        return True
