"""sdar-serve as a user runs it (a child process on a free loopback port), driven by the official
`openai` client and by raw HTTP. Every greedy answer is compared with a direct generate() of the
same prompt on the same artifact."""

from __future__ import annotations

import json

import httpx
import pytest
from sdar_fixtures import packaged_artifact

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serve_support import serve_process  # noqa: E402

MODEL = "tiny-sort"
MAX_BODY = 65536


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return packaged_artifact(tmp_path_factory)


@pytest.fixture(scope="module")
def direct(art):
    from sdar_rt import Generator

    return Generator(art, threads=1)


@pytest.fixture(scope="module")
def server(art, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "sdar-serve.log"
    with serve_process(art, log, "--model-name", MODEL, "--max-body-bytes", str(MAX_BODY)) as (url, proc):
        yield url, proc


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="unused", max_retries=0, timeout=60)


def chat(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def test_models_and_health(server, client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].model_extra["max_context"] == 256 and models.data[0].model_extra["batch"] == 4
    assert client.models.retrieve(MODEL).id == MODEL
    h = httpx.get(f"{server[0]}/health").json()
    assert h["status"] == "ok" and h["model"] == MODEL


@pytest.mark.parametrize(
    "knobs",
    [
        {},
        {"threshold": 0.5},
        {"threshold": 0.999, "denoising_steps": 2, "remasking": "low_confidence_static"},
        {"remasking": "sequential", "fused_commit": False},
        {"remasking": "entropy_bounded"},
        {"remasking": "entropy_bounded", "eb_threshold": 0.05, "fused_commit": False},
    ],
)
def test_chat_equals_generate(client, direct, knobs):
    for content in ["sort: 5 9 1 3", "sort: 8 0 8 0 2 2 7 1 9"]:
        resp = client.chat.completions.create(
            model=MODEL, messages=chat(content), max_tokens=16, extra_body={"return_token_ids": True, **knobs}
        )
        ref = direct.generate(chat(content), max_new_tokens=16, **knobs)
        choice = resp.choices[0]
        assert choice.message.role == "assistant" and choice.message.content == ref.text
        assert choice.finish_reason == ref.finish_reason == "stop"
        assert choice.model_extra["token_ids"] == ref.token_ids
        prompt_tokens = len(direct.tokenizer.encode(direct.tokenizer.apply_chat_template(chat(content))))
        assert resp.usage.prompt_tokens == prompt_tokens
        assert resp.usage.completion_tokens == len(ref.token_ids)
        assert resp.usage.total_tokens == prompt_tokens + len(ref.token_ids)
        sdar = resp.usage.model_extra["sdar"]
        assert sdar["steps_per_block"] == ref.stats["steps_per_block"]
        assert sdar["threshold"] == knobs.get("threshold", 0.9)
        assert sdar["eb_threshold"] == knobs.get("eb_threshold", 0.35)
        assert sdar["remasking"] == knobs.get("remasking", "low_confidence_dynamic")
        assert sdar["denoising_steps"] == knobs.get("denoising_steps", 4)
        assert sdar["nfe"] == ref.stats["nfe"] - (ref.stats["nfe_prefill"] - sdar["nfe_prefill"])
        assert resp.usage.prompt_tokens_details.cached_tokens % 4 == 0


def test_completion_equals_generate(client, direct):
    text = "sort: 4 4 1 2 0"
    resp = client.completions.create(model=MODEL, prompt=text, max_tokens=12)
    ref = direct.generate(text, chat=False, max_new_tokens=12)
    assert resp.choices[0].text == ref.text and resp.choices[0].finish_reason == ref.finish_reason
    ids = direct.tokenizer.encode(direct.tokenizer.apply_chat_template(chat("sort: 7 3 1 0")))
    resp = client.completions.create(
        model=MODEL, prompt=ids, max_tokens=12, extra_body={"return_token_ids": True}
    )
    ref = direct.generate(prompt_ids=ids, max_new_tokens=12)
    assert resp.choices[0].text == ref.text == "0 1 3 7"
    assert resp.choices[0].model_extra["token_ids"] == ref.token_ids
    # without max_tokens the answer may use the rest of the context; it stops by itself here
    resp = client.completions.create(model=MODEL, prompt=ids)
    assert resp.choices[0].text == "0 1 3 7" and resp.choices[0].finish_reason == "stop"


def test_chat_continuation_reuses_the_cache_and_stop_strings(client, direct):
    """A client sending the whole chat again (as OpenAI clients do) prefills only its new turn."""
    messages = chat("sort: 8 3 8 3 1 1")
    first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16)
    messages += [{"role": "assistant", "content": first.choices[0].message.content}, *chat("sort: 2 7 2 7")]
    second = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16)
    assert second.choices[0].message.content == direct.generate(messages, max_new_tokens=16).text
    prompt_tokens = second.usage.prompt_tokens
    blocks_of_first = len(first.usage.model_extra["sdar"]["steps_per_block"])
    # the first call committed its prompt's whole blocks and all its finished blocks but the last
    committed = (first.usage.prompt_tokens // 4 + blocks_of_first - 1) * 4
    assert second.usage.prompt_tokens_details.cached_tokens == min(committed, prompt_tokens // 4 * 4) >= 8
    cut = client.chat.completions.create(
        model=MODEL, messages=chat("sort: 5 9 1 3"), max_tokens=16, stop=[" 5"]
    )
    assert cut.choices[0].message.content == "1 3" and cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == direct.generate(chat("sort: 5 9 1 3"), stop=[" 5"]).text


def test_stream_one_chunk_per_block(client, direct):
    content = "sort: 9 1 8 2 7 3 6 4 5 0 1 2"
    ref = direct.generate(chat(content), max_new_tokens=20)
    blocks_with_text = []
    direct.generate(
        chat(content), max_new_tokens=20, on_text=lambda row, delta: blocks_with_text.append(delta)
    )
    stream = client.chat.completions.create(
        model=MODEL,
        messages=chat(content),
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert deltas == blocks_with_text and len(deltas) >= 3  # one chunk per block that added text
    assert "".join(deltas) == ref.text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(ref.token_ids)
    # completions stream the same way
    pieces = [
        c.choices[0].text
        for c in client.completions.create(model=MODEL, prompt="sort: 3 2 1 0", max_tokens=8, stream=True)
    ]
    assert "".join(pieces) == direct.generate("sort: 3 2 1 0", chat=False, max_new_tokens=8).text


def test_stream_shows_unmasking_steps(client, direct):
    content = "sort: 6 2 6 2 9 9 0 4"
    knobs = {"threshold": 0.999, "remasking": "low_confidence_static", "denoising_steps": 4}
    ref_steps = []
    ref = direct.generate(chat(content), max_new_tokens=16, on_step=ref_steps.append, **knobs)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=chat(content),
        max_tokens=16,
        stream=True,
        extra_body={"show_unmasking": True, **knobs},
    )
    states, text = [], ""
    for chunk in stream:
        if chunk.model_extra.get("unmasking"):
            states.append(chunk.model_extra["unmasking"])
        elif chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    assert text == ref.text
    assert (
        len(states) == len(ref_steps) == sum(ref.stats["steps_per_block"]) > len(ref.stats["steps_per_block"])
    )
    for state, step in zip(states, ref_steps, strict=True):
        assert (state["block"], state["step"], state["position"]) == (step.block, step.step, step.position)
        assert state["token_ids"] == step.tokens and state["masked"] == step.masked
        assert all((t is None) == m for t, m in zip(state["tokens"], state["masked"], strict=True))
    # static policy, 4 steps over a block of 4: one more position per step
    assert all(sum(s["masked"]) == max(0, 4 - s["prompt_positions"] - s["step"] - 1) for s in states)


def test_errors_through_the_openai_client(server, client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=chat("sort: 1 2"))
    assert e.value.code == "model_not_found" and "tiny-sort" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=chat("sort: 1 2"), max_tokens=300)
    assert e.value.code == "context_length_exceeded" and "256" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="x " * 300)
    assert e.value.code == "context_length_exceeded"
    for extra, param in [
        ({"threshold": "high"}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"remasking": "random"}, "remasking"),
        ({"eb_threshold": -0.1}, "eb_threshold"),
        ({"eb_threshold": "low"}, "eb_threshold"),
        ({"denoising_steps": 9}, "denoising_steps"),
        ({"show_unmasking": True}, "show_unmasking"),
        ({"n": 2}, "n"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=MODEL, messages=chat("sort: 1 2"), extra_body=extra)
        assert e.value.param == param, (extra, e.value.body)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=MODEL, messages=chat("sort: 1 2"), temperature="warm")
    # and it keeps serving
    assert (
        client.chat.completions.create(model=MODEL, messages=chat("sort: 2 1 0 3"), max_tokens=8)
        .choices[0]
        .message.content
        == "0 1 2 3"
    )


def _post(url: str, content: bytes | None = None, *, path="/v1/chat/completions", **kw) -> httpx.Response:
    return httpx.post(
        f"{url}{path}", content=content, headers={"Content-Type": "application/json"}, timeout=30, **kw
    )


def test_malformed_requests_over_raw_http(server):
    url = server[0]
    good = {"model": MODEL, "messages": chat("sort: 3 3 1 0"), "max_tokens": 8}
    cases = [
        (b'{"model": "tiny-sort", "messages": [', 400, "invalid_json"),
        (b"not json at all", 400, "invalid_json"),
        (b"[1, 2, 3]", 400, "invalid_value"),
        (json.dumps({**good, "messages": "sort: 1"}).encode(), 400, "invalid_value"),
        (json.dumps({**good, "max_tokens": "8"}).encode(), 400, "invalid_value"),
        (json.dumps({**good, "max_tokens": True}).encode(), 400, "invalid_value"),
        (json.dumps({**good, "stream": "yes"}).encode(), 400, "invalid_value"),
        (json.dumps({k: v for k, v in good.items() if k != "model"}).encode(), 400, "invalid_value"),
        (json.dumps({**good, "messages": []}).encode(), 400, "invalid_value"),
        (
            json.dumps({**good, "messages": [{"role": "robot", "content": "hi"}]}).encode(),
            400,
            "invalid_value",
        ),
        (
            json.dumps({**good, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).encode(),
            400,
            None,
        ),
        (json.dumps({**good, "max_tokens": 0}).encode(), 400, "invalid_value"),
        (json.dumps({**good, "model": "other"}).encode(), 404, "model_not_found"),
        (json.dumps({**good, "padding": "x" * MAX_BODY}).encode(), 413, "request_too_large"),
    ]
    for body, status, code in cases:
        r = _post(url, body)
        assert r.status_code == status, (body[:80], r.text)
        error = r.json()["error"]
        assert error["message"] and error["type"] and error["code"] == code, (body[:80], error)

    r = _post(url, json.dumps({"model": MODEL, "prompt": ["a", "b"]}).encode(), path="/v1/completions")
    assert r.status_code == 400 and "one prompt per request" in r.json()["error"]["message"]
    # a chunked body (no Content-Length) over the limit is cut off too
    def chunks():
        yield b'{"model": "tiny-sort", "messages": [{"role": "user", "content": "'
        for _ in range(MAX_BODY // 1024 + 1):
            yield b"x" * 1024
        yield b'"}]}'

    r = _post(url, chunks())
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.get(f"{url}/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["message"]
    r = httpx.get(f"{url}/v2/anything")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = _post(url, json.dumps(good).encode())  # still serving
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "0 1 3 3"
    assert "token_ids" not in r.json()["choices"][0]  # only when asked for
    assert server[1].poll() is None
