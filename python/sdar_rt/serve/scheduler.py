"""The queue in front of the one Generator.

HTTP handlers submit jobs; one worker thread runs them. When the artifact has a batch > 1, the
worker takes the oldest waiting job and every other waiting job compatible with it (same prompt
length and the same decoding parameters: a call decodes equal-length prompts in lock-step with one
configuration) and runs them as one call, each row sampled as if alone (``independent_rows``), so a
request's tokens never depend on what else was queued. Every call reuses the KV cache's
whole-block prefix it still holds (``reuse_cache``), so a client continuing a chat prefills only
its new turn when nothing else ran in between.

A job's events go back to its handler's event loop: ("text", str) per finished block, ("step",
UnmaskingStep) per denoising step when asked for, then ("done", GenerationOutput) or ("error",
exception). A cancelled job (its client went away) is dropped while it waits; once running, its row
is decoded until the call ends unless every row of the call is cancelled, which stops the call at
the next block (or step).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..generator import GenerationOutput, Generator
from ..unmasking import UnmaskingStep


class QueueFull(Exception):
    """More jobs are waiting than the server allows."""


class ShuttingDown(Exception):
    """The server is stopping and takes no new jobs."""


@dataclass
class Job:
    prompt_ids: list[int]
    params: dict[str, Any]  # Generator.generate keywords (decoding parameters, stop, max_new_tokens)
    loop: asyncio.AbstractEventLoop
    want_steps: bool = False
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    started: float | None = None
    batch_rows: int = 0

    @property
    def key(self) -> tuple:
        """Jobs with equal keys can share a call."""
        return len(self.prompt_ids), tuple(sorted((k, _frozen(v)) for k, v in self.params.items()))

    def post(self, kind: str, value: Any) -> None:
        """From the worker thread: hands an event to the handler's loop."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens any more
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


class _AllCancelled:
    """The call's cancel flag: set once every job of the call is cancelled."""

    def __init__(self, jobs: list[Job]):
        self._jobs = jobs

    def is_set(self) -> bool:
        return all(job.cancelled.is_set() for job in self._jobs)


@dataclass
class SchedulerStats:
    submitted: int = 0
    rejected: int = 0  # queue full
    completed: int = 0
    failed: int = 0
    cancelled: int = 0  # dropped while waiting, or ended early because the client left
    calls: int = 0
    rows: int = 0
    largest_batch: int = 0


class Scheduler:
    def __init__(self, generator: Generator, max_queue: int = 64):
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.generator = generator
        self.max_queue = max_queue
        self.stats = SchedulerStats()
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="sdar-serve-worker", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ handler side
    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise ShuttingDown("the server is shutting down")
            waiting = sum(1 for j in self._waiting if not j.cancelled.is_set())
            if waiting >= self.max_queue:
                self.stats.rejected += 1
                raise QueueFull(
                    f"{waiting} requests are already waiting (the server's limit is {self.max_queue})"
                )
            self.stats.submitted += 1
            self._waiting.append(job)
            self._cond.notify()

    def snapshot(self) -> dict[str, int]:
        with self._cond:
            return {
                "queued": sum(1 for j in self._waiting if not j.cancelled.is_set()),
                "running": len(self._running),
                **vars(self.stats),
            }

    def close(self, timeout: float = 10.0) -> None:
        """Stops taking jobs, cancels the waiting and running ones and waits for the worker."""
        with self._cond:
            self._closed = True
            for job in list(self._waiting) + self._running:
                job.cancelled.set()
            self._cond.notify_all()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker side
    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while True:
                while self._waiting and self._waiting[0].cancelled.is_set():
                    self._waiting.popleft()
                    self.stats.cancelled += 1
                if self._waiting:
                    break
                if self._closed:
                    return None
                self._cond.wait()
            first = self._waiting.popleft()
            batch = [first]
            for job in list(self._waiting):
                if len(batch) == self.generator.spec.batch:
                    break
                if job.key == first.key and not job.cancelled.is_set():
                    self._waiting.remove(job)
                    batch.append(job)
            self._running = batch
            return batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._running = []

    def _run(self, batch: list[Job]) -> None:
        started = time.perf_counter()
        for job in batch:
            job.started, job.batch_rows = started, len(batch)
        with self._cond:
            self.stats.calls += 1
            self.stats.rows += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))

        def on_text(row: int, delta: str) -> None:
            batch[row].post("text", delta)

        def on_step(step: UnmaskingStep) -> None:
            if batch[step.row].want_steps:
                batch[step.row].post("step", step)

        try:
            outputs: list[GenerationOutput] = self.generator.generate(
                prompt_ids=[job.prompt_ids for job in batch],
                on_text=on_text,
                on_step=on_step if any(job.want_steps for job in batch) else None,
                cancel=_AllCancelled(batch),
                reuse_cache=True,
                independent_rows=True,
                **batch[0].params,
            )
        except Exception as exc:  # noqa: BLE001 - every job of the call gets the error
            with self._cond:
                self.stats.failed += len(batch)
            for job in batch:
                job.post("error", exc)
            return
        for job, out in zip(batch, outputs, strict=True):
            with self._cond:
                if job.cancelled.is_set():
                    self.stats.cancelled += 1
                else:
                    self.stats.completed += 1
            job.post("done", out)
