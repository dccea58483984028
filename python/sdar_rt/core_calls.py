"""Calls into the C++ core that are in flight, so that none is still running when Python exits,
and a Ctrl-C-safe start for the thread that runs one.

A thread that is inside the core when the interpreter shuts down is killed mid-call, and the
process aborts ("terminate called without an active exception"). ``stream()`` decodes on a
daemon thread, and a caller may run ``generate()`` on one, so every public call registers here
with a cancel token: closing a stream, and the exit hook for anything still running, cancel the
call (the core checks the token before every engine pass, so it ends within one forward) and wait
until the thread has left the core.
"""

from __future__ import annotations

import atexit
import contextlib
import queue
import signal
import threading
from collections.abc import Iterator

from . import _core

# A Ctrl-C raises KeyboardInterrupt wherever the main thread is, possibly inside a Python-level lock
# or condition, which can then stay held. So the decoding thread never waits on anything the main
# thread holds: it reports through SimpleQueue.put (C, never blocks) and the registry is a set
# changed by single operations, atomic under the GIL.


class CoreCall:
    """One generate()/stream() call: its cancel token, and whether it has left the core."""

    def __init__(self) -> None:
        self.token = _core.CancelToken()
        self.finished = False  # set once, by the thread that ran the call
        self._wake: queue.SimpleQueue[bool] = queue.SimpleQueue()

    def mark_finished(self) -> None:
        self.finished = True
        self._wake.put(True)

    def stop(self) -> None:
        """Cancels the call and waits until it has left the core. A Ctrl-C during the wait does
        not cut it short (the thread would be left inside the core); it is re-raised afterwards.
        The flag, not the wake-up, says when: a Ctrl-C right after get() returns loses the item."""
        self.token.cancel()
        interrupted: BaseException | None = None
        while not self.finished:
            try:
                self._wake.get(timeout=0.05)
            except queue.Empty:
                pass
            except KeyboardInterrupt as exc:
                interrupted = exc
        if interrupted is not None:
            raise interrupted


def start_thread(thread: threading.Thread) -> None:
    """Starts ``thread`` with SIGINT held back: Thread.start() waits on an Event, and a Ctrl-C raised
    inside that wait can leave the Event's lock held, so the new thread would block on it forever.
    A Ctrl-C meanwhile is delivered right after (POSIX; elsewhere a plain start)."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        thread.start()
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


_running: set[CoreCall] = set()


@contextlib.contextmanager
def running(call: CoreCall) -> Iterator[CoreCall]:
    """Registers ``call`` for the exit hook while the block runs; marks it finished after."""
    _running.add(call)
    try:
        yield call
    finally:
        _running.discard(call)
        call.mark_finished()


@atexit.register  # runs before the interpreter stops daemon threads
def _stop_running_calls() -> None:
    for call in list(_running):
        call.stop()
