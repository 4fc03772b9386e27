"""The two thread patterns of the pipeline, in one place: a producer that runs an iterator ahead of its
consumer (the reader's buffers, the device feed's staged copies) and a worker that runs jobs in order
behind the caller (harvest's appends and commits). Either way an error raised on the thread is raised
again in the caller, and stopping early leaves no thread blocked."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def ahead(items: Iterable[T], depth: int = 1, unblock: Callable[[], None] | None = None) -> Iterator[T]:
    """``items``, produced on a daemon thread up to ``depth`` items ahead of the consumer. When the
    consumer stops early, ``unblock`` (if given) releases whatever the producer may wait on besides
    this queue (e.g. a free slot), and the queue is drained until the thread has left."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
            q.put(_END)
        except BaseException as e:  # surfaced in the consumer
            q.put(_Failure(e))

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while (item := q.get()) is not _END:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        while t.is_alive():
            if unblock is not None:
                unblock()
            try:  # a producer waiting on the full queue
                q.get_nowait()
            except queue.Empty:
                t.join(0.01)


class Behind:
    """Runs submitted jobs in order on one daemon thread, at most ``depth`` waiting: the caller goes on
    while they run. The first job that raises stops the rest; its error is raised at the caller's next
    ``submit`` or ``drain``."""

    def __init__(self, depth: int = 2):
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._q.get()
            try:
                if job is None:
                    return
                if self._error is None:
                    job()
            except BaseException as e:
                self._error = e
            finally:
                self._q.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, job: Callable[[], object]) -> None:
        self._raise()
        self._q.put(job)

    def drain(self) -> None:
        """Wait until every submitted job has run; raise the first error."""
        self._q.join()
        self._raise()

    def close(self) -> None:
        """Let the queued jobs finish (errors are dropped: call ``drain`` first to see them) and end the thread."""
        self._q.put(None)
        self._thread.join()

    def __enter__(self) -> Behind:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
