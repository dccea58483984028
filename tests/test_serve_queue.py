"""The server's queue in front of the one Generator: batching of compatible waiting requests, the
queue limit (429), and cancellation when a client goes away (waiting or running).

The server runs in this process so a test can hold the Generator (a direct call that waits inside
its text callback keeps the core's lock): requests then wait in the queue in a known state, found
by polling /health, with no timing assumptions.
"""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import pytest
from sdar_fixtures import packaged_artifact, tiny_artifact

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from sdar_rt import Generator  # noqa: E402
from serve_support import SlowEngine, health, serve_in_thread, wait_for  # noqa: E402


@contextlib.contextmanager
def holding(gen: Generator):
    """Occupies the Generator until the block exits (a direct call parked in its text callback)."""
    inside, release = threading.Event(), threading.Event()

    def park(row, delta):
        inside.set()
        release.wait(60)

    thread = threading.Thread(target=lambda: gen.generate("sort: 1 2 3 4", max_new_tokens=8, on_text=park))
    thread.start()
    assert inside.wait(30)
    try:
        yield
    finally:
        release.set()
        thread.join(60)


def in_thread(fn):
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - checked by the test
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def ask(client, content: str):
    return client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": content}],
        max_tokens=16,
        extra_body={"return_token_ids": True},
    )


@pytest.fixture(scope="module")
def sort_art(tmp_path_factory):
    return packaged_artifact(tmp_path_factory)


def test_compatible_waiting_requests_run_together_and_the_queue_is_bounded(sort_art):
    gen, ref = Generator(sort_art, threads=1), Generator(sort_art, threads=1)
    with serve_in_thread(gen, max_queue=4) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        same_length = ["sort: 9 8 7 6", "sort: 1 1 0 0", "sort: 5 2 8 3"]
        with holding(gen):
            first = in_thread(lambda: ask(client, "sort: 4 4 4 4"))
            wait_for(url, lambda h: h["running"] == 1)  # its call waits for the held Generator
            waiting = [in_thread(lambda c=c: ask(client, c)) for c in same_length]
            waiting.append(in_thread(lambda: ask(client, "sort: 7 1 7 1 7 1")))  # another length
            wait_for(url, lambda h: h["queued"] == 4)
            with pytest.raises(openai.RateLimitError) as e:
                ask(client, "sort: 2 2 2 2")
            assert e.value.code == "rate_limit_exceeded" and "4" in e.value.message
            r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "sort"})
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["type"] == "rate_limit_error"
        for thread, _ in [first, *waiting]:
            thread.join(60)
        contents = ["sort: 4 4 4 4", *same_length, "sort: 7 1 7 1 7 1"]
        for (_, box), content in zip([first, *waiting], contents, strict=True):
            assert "error" not in box, box
            resp = box["value"]
            expected = ref.generate([{"role": "user", "content": content}], max_new_tokens=16)
            assert resp.choices[0].model_extra["token_ids"] == expected.token_ids
            rows = resp.usage.model_extra["sdar"]["batch_rows"]
            assert rows == (3 if content in same_length else 1)
        h = health(url)
        assert h["largest_batch"] == 3 and h["calls"] == 3 and h["rows"] == 5 and h["rejected"] == 2
        assert h["completed"] == 5 and h["failed"] == 0
        assert ask(client, "sort: 3 0 3 0").choices[0].message.content == "0 0 3 3"  # still serving


def test_sampled_requests_in_one_call_draw_as_if_alone(sort_art):
    """Batched rows use the random numbers of a request run alone (same seed, same tokens)."""
    gen = Generator(sort_art, threads=1)
    kw = dict(max_new_tokens=12, temperature=1.5, seed=7, remasking="low_confidence_static")
    prompts = [
        gen.tokenizer.encode(gen.tokenizer.apply_chat_template([{"role": "user", "content": c}]))
        for c in ("sort: 9 2 9 2", "sort: 0 5 0 5")
    ]
    alone = [gen.generate(prompt_ids=p, **kw).token_ids for p in prompts]
    together = gen.generate(prompt_ids=prompts, independent_rows=True, **kw)
    assert [o.token_ids for o in together] == alone
    assert together[0].stats["num_rows"] == 2
    dependent = gen.generate(prompt_ids=[prompts[0], prompts[0]], **kw)
    assert dependent[0].token_ids == alone[0] and dependent[1].token_ids != alone[0]


@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    """Random weights (never stop early) behind a slow engine: a 100-token answer takes seconds."""
    from sdar_rt.artifact import load_artifact
    from sdar_rt.ort_engine import OrtEngine

    art = tiny_artifact(tmp_path_factory)[1]
    engine = SlowEngine(OrtEngine(load_artifact(art), threads=1), delay=0.02)
    return Generator(art, engine=engine), engine, art


def passes_settle(engine: SlowEngine) -> int:
    """The engine's pass count once it stops moving."""
    while True:
        before = engine.passes
        time.sleep(0.3)
        if engine.passes == before:
            return before


def test_disconnect_cancels_a_running_stream(slow):
    gen, engine, art = slow
    full = (
        Generator(art, threads=1)
        .generate("Once upon", chat=False, max_new_tokens=100, remasking="low_confidence_static")
        .stats
    )
    assert full["tokens_generated"] == 100  # the whole answer would take nfe passes
    with serve_in_thread(gen) as url:
        start = engine.passes
        body = {
            "model": "tiny",
            "prompt": "Once upon",
            "max_tokens": 100,
            "stream": True,
            "remasking": "low_confidence_static",
        }
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data:") and '"text":""' not in line:
                    break  # the first block's text: then hang up
        h = wait_for(url, lambda h: h["cancelled"] == 1 and h["running"] == 0)
        used = passes_settle(engine) - start
        assert used < full["nfe"] // 2, (used, full["nfe"])
        assert h["completed"] == 0
        r = httpx.post(f"{url}/v1/completions", json={**body, "stream": False, "max_tokens": 4}, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"


def test_disconnect_cancels_waiting_and_running_requests(slow):
    gen, engine, _ = slow
    body = {"model": "tiny", "prompt": "Once upon", "max_tokens": 100, "remasking": "low_confidence_static"}
    with serve_in_thread(gen) as url:
        with holding(gen):
            running = in_thread(
                lambda: httpx.post(f"{url}/v1/completions", json={**body, "max_tokens": 4}, timeout=60)
            )
            wait_for(url, lambda h: h["running"] == 1)
            with pytest.raises(httpx.ReadTimeout):  # waits in the queue, then the client gives up
                httpx.post(f"{url}/v1/completions", json=body, timeout=0.5)
            wait_for(url, lambda h: h["queued"] == 0)  # a cancelled request no longer counts as queued
        running[0].join(60)
        assert running[1]["value"].status_code == 200
        h = wait_for(url, lambda h: h["cancelled"] == 1 and h["running"] == 0)
        assert h["completed"] == 1 and h["calls"] == 1  # the abandoned request never ran
        start = engine.passes
        with pytest.raises(httpx.ReadTimeout):  # a non-streamed request dropped while it runs
            httpx.post(f"{url}/v1/completions", json=body, timeout=1.0)
        wait_for(url, lambda h: h["cancelled"] == 2 and h["running"] == 0)
        assert passes_settle(engine) - start < 100
