"""A bounded load test of sdar-serve on loopback: 8 concurrent `openai` clients x 20 requests
(chat, streamed chat with and without the unmasking steps, completions from token ids), on the shipped
sorting checkpoint exported with batch 4.

Checked: every response is complete (finish reason "stop", text equal to a direct generate() of the
same greedy request), the server counts every request as completed and none as failed, and its
resident memory after the load is within RSS_TOLERANCE_MIB of what it was after a warm-up of the same
mix. Latency percentiles and the RSS figures are printed (pytest -s), never asserted.
"""

from __future__ import annotations

import random
import statistics
import threading
import time

import pytest
from sdar_fixtures import packaged_artifact

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
psutil = pytest.importorskip("psutil")

from serve_support import health, serve_process  # noqa: E402

MODEL = "tiny-sort"
CLIENTS, REQUESTS, WARMUP = 8, 20, 6
# Allocator noise bound: the measured change over the 160 requests was -2.7 to +0.1 MiB in three runs
# (arenas and ONNX Runtime's per-shape buffers settle during the warm-up, which runs the same mix).
# 8 MiB over 160 requests catches any leak of about 50 KiB or more per request.
RSS_TOLERANCE_MIB = 8.0


def _tasks(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        "sort: " + " ".join(str(rng.randrange(10)) for _ in range(rng.randrange(4, 11))) for _ in range(count)
    ]


def _request(client, kind: int, content: str, ids: list[int]) -> tuple[str, str]:
    """(text, finish reason) of one request of the given kind."""
    messages = [{"role": "user", "content": content}]
    if kind == 0:
        r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16)
        return r.choices[0].message.content, r.choices[0].finish_reason
    if kind in (1, 2):
        text, reason = "", None
        stream = client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=16,
            stream=True,
            extra_body={"show_unmasking": kind == 2},
        )
        for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                reason = chunk.choices[0].finish_reason or reason
        return text, reason
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=16)
    return r.choices[0].text, r.choices[0].finish_reason


def _run_clients(
    url: str, tasks: list[list[str]], expected: dict, ids: dict
) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client_loop(index: int) -> None:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        for i, content in enumerate(tasks[index]):
            kind = (index + i) % 4
            start = time.perf_counter()
            try:
                text, reason = _request(client, kind, content, ids[content])
                want = (expected[content], "stop")
                got = (text, reason)
                problem = None if got == want else f"{content!r} kind {kind}: {got} != {want}"
            except Exception as exc:  # noqa: BLE001 - every failure is reported
                problem = f"{content!r} kind {kind}: {type(exc).__name__}: {exc}"
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                if problem:
                    failures.append(problem)

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(len(tasks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads), "a client did not finish"
    return latencies, failures


def test_eight_clients_twenty_requests(tmp_path_factory):
    from sdar_rt import Generator

    art = packaged_artifact(tmp_path_factory)
    direct = Generator(art, threads=1)
    warmup = [_tasks(WARMUP, 100 + c) for c in range(CLIENTS)]
    load = [_tasks(REQUESTS, c) for c in range(CLIENTS)]
    expected, ids = {}, {}
    for content in {c for tasks in warmup + load for c in tasks}:
        messages = [{"role": "user", "content": content}]
        ids[content] = direct.tokenizer.encode(direct.tokenizer.apply_chat_template(messages))
        out = direct.generate(prompt_ids=ids[content], max_new_tokens=16)
        assert out.finish_reason == "stop"
        expected[content] = out.text
    log = tmp_path_factory.mktemp("load") / "sdar-serve.log"
    with serve_process(art, log, "--model-name", MODEL) as (url, proc):
        server = psutil.Process(proc.pid)
        _, failures = _run_clients(url, warmup, expected, ids)
        assert not failures, failures[:3]
        rss_before = server.memory_info().rss
        wall = time.perf_counter()
        latencies, failures = _run_clients(url, load, expected, ids)
        wall = time.perf_counter() - wall
        rss_after = server.memory_info().rss
        h = health(url)
    total = CLIENTS * REQUESTS
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive")
    growth = (rss_after - rss_before) / 2**20
    print(
        f"\nsdar-serve load: {len(latencies)} requests ({CLIENTS} clients x {REQUESTS}), "
        f"{len(failures)} failures, "
        f"{wall:.1f} s, p50 {quantiles[49] * 1e3:.1f} ms, p99 {quantiles[98] * 1e3:.1f} ms, "
        f"max {max(latencies) * 1e3:.1f} ms; "
        f"server RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB "
        f"({growth:+.2f} MiB); calls {h['calls']}, rows {h['rows']}, largest batch {h['largest_batch']}"
    )
    assert not failures, failures[:3]
    assert len(latencies) == total
    assert h["completed"] == total + CLIENTS * WARMUP and h["failed"] == 0 and h["cancelled"] == 0
    assert growth <= RSS_TOLERANCE_MIB, f"server RSS grew by {growth:.1f} MiB over {total} requests"
