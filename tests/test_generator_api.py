"""The Python package: artifact validation, Generator parameters and errors, streaming, batching, CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from sdar_fixtures import tiny_artifact
from sdar_rt import ArtifactError, Generator, load_artifact, validate_manifest
from sdar_rt.artifact import MANIFEST_FORMAT_VERSION


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return tiny_artifact(tmp_path_factory)[1]


@pytest.fixture(scope="module")
def gen(art):
    return Generator(art, threads=1)


def copy_with(art, tmp_path, edit):
    dst = tmp_path / "art"
    shutil.copytree(art, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    edit(manifest)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_manifest_validation_errors(art, tmp_path):
    manifest = json.loads((art / "manifest.json").read_text())
    validate_manifest(manifest)
    assert MANIFEST_FORMAT_VERSION == 3
    for edit, match in [
        (lambda m: m.update(format="other"), "format"),
        (lambda m: m.update(format_version=4), "newer"),
        (lambda m: m.update(format_version=0), "format_version"),
        (lambda m: m.update(format_version=1), "re-export"),   # before the step graph
        (lambda m: m.update(format_version=2), "older sdar-export.*re-export"),   # before the trt graph
        (lambda m: m["graphs"]["step"].update(logits=4), "num_logits"),
        (lambda m: m["graphs"]["trt"].update(tokens=4), "graphs.trt"),
        (lambda m: m["graphs"]["trt"].update(logits=8), "graphs.trt"),
        (lambda m: m.pop("graphs"), "missing required keys"),
        (lambda m: m["graphs"].pop("decode"), "decode"),
        (lambda m: m.update(dtype="int4"), "dtype"),
        (lambda m: m.update(max_context=130), "multiple"),
        (lambda m: m["tokens"].update(mask_id=10**6), "mask_id"),
        (lambda m: m["graphs"]["decode"].update(tokens=5), "tokens"),
    ]:
        bad = json.loads(json.dumps(manifest))
        edit(bad)
        with pytest.raises(ArtifactError, match=match):
            validate_manifest(bad)
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_artifact(tmp_path)
    with pytest.raises(ArtifactError, match="not a directory"):
        load_artifact(tmp_path / "nope")
    dst = copy_with(art, tmp_path, lambda m: None)
    (dst / "fused.onnx").unlink()
    with pytest.raises(ArtifactError, match="fused.onnx.*missing"):
        load_artifact(dst)


def test_bfloat16_refused_and_trt_not_built(art, tmp_path):
    dst = copy_with(art, tmp_path, lambda m: m.update(dtype="bfloat16"))
    with pytest.raises(ArtifactError, match="bfloat16"):
        Generator(dst)
    with pytest.raises(RuntimeError, match="TensorRT"):
        Generator(art, engine="trt")
    with pytest.raises(ValueError, match="engine"):
        Generator(art, engine="tvm")


# Every parameter is checked once, by the core (types when the config is built, ranges when the
# call starts): the error is the core's InvalidArgumentError, a ValueError, with the core's message.
@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(max_new_tokens=0), r"max_new_tokens must be at least 1, got 0"),
        (dict(max_new_tokens="8"), r"max_new_tokens must be an integer, got '8'"),
        (dict(max_new_tokens=True), r"max_new_tokens must be an integer, got True"),
        (dict(denoising_steps=5), r"denoising_steps must be in \[1, block_length=4\], got 5 \(unset: 4"),
        (dict(denoising_steps=0), r"denoising_steps must be in \[1, block_length=4\], got 0"),
        (dict(denoising_steps=2.0), r"denoising_steps must be an integer, got 2\.0"),
        (dict(threshold=0), r"threshold must be in \(0, 1\], got 0;"),
        (dict(threshold=1.5), r"threshold must be in \(0, 1\], got 1\.5;"),
        (dict(threshold="high"), r"threshold must be a number, got 'high'"),
        (dict(eb_threshold=-0.5), r"eb_threshold must be a finite number >= 0 \(an entropy .*got -0\.5;"),
        (dict(remasking="entropy_bounded", eb_threshold=float("nan")), r"eb_threshold must be .*got nan"),
        (dict(eb_threshold=float("inf")), r"eb_threshold must be a finite number >= 0 .*got inf"),
        (dict(eb_threshold="low"), r"eb_threshold must be a number, got 'low'"),
        (dict(temperature=-1), r"temperature must be a finite number >= 0 \(0 = greedy\), got -1"),
        (dict(temperature=float("inf")), r"temperature must be a finite number >= 0 .*got inf"),
        (dict(temperature=1j), r"temperature must be a real number, got 1j"),
        (dict(top_p=0), r"top_p must be in \(0, 1\] \(1 = off\), got 0"),
        (dict(top_k=-2), r"top_k must be >= 0 \(0 = off\), got -2"),
        (dict(top_k=1.5), r"top_k must be an integer, got 1\.5"),
        (dict(remasking="random"), r"unknown remasking policy 'random' \(expected sequential, low_conf"),
        (dict(remasking=None), r"remasking must be a string, got None"),
        (dict(seed=-1), r"seed must be an integer in \[0, 2\*\*64\), got -1"),
        (dict(seed=2**64), r"seed must be an integer in \[0, 2\*\*64\), got 18446744073709551616"),
        (dict(stop=[10**6]), r"stop id 1000000 is outside the vocabulary \[0, 512\); pass a token id below"),
        (dict(max_new_tokens=500), r"17 tokens \+ max_new_tokens 500 needs 520 .*max_context 128; shorten"),
        (dict(max_new_tokens=10**12), r"max_new_tokens 2147483647 needs .*more than max_context 128"),
    ],
)
def test_bad_parameters(gen, kw, match):
    from sdar_rt import _core

    with pytest.raises(_core.InvalidArgumentError, match=match) as err:
        gen.generate("hello", **kw)
    assert isinstance(err.value, ValueError)
    with pytest.raises(_core.InvalidArgumentError, match=match):  # the same rule for streaming
        list(gen.stream("hello", **kw))


def test_num_samples_checked_before_the_core(gen):
    with pytest.raises(ValueError, match=r"num_samples must be a positive integer, got 0"):
        gen.generate("hello", num_samples=0)


def test_bad_prompts(gen):
    with pytest.raises(ValueError, match="exactly one"):
        gen.generate()
    with pytest.raises(ValueError, match="exactly one"):
        gen.generate("a", prompt_ids=[1])
    with pytest.raises(ValueError, match="outside"):
        gen.generate(prompt_ids=[1, 10**6])
    with pytest.raises(ValueError, match="prompt"):
        gen.generate(prompt_ids=[])
    with pytest.raises(ValueError, match="zero tokens"):
        gen.generate("", chat=False)
    with pytest.raises(ValueError, match="role"):
        gen.generate([{"content": "x"}])


def test_stream_equals_generate_and_cancel(gen):
    full = gen.generate("Once upon a time", max_new_tokens=24, chat=False)
    pieces = list(gen.stream("Once upon a time", max_new_tokens=24, chat=False))
    assert "".join(pieces) == full.text and gen.last_output.token_ids == full.token_ids
    it = gen.stream("Once upon a time", max_new_tokens=100, chat=False)
    next(it)
    it.close()  # cancels the worker; the generator is usable afterwards
    assert gen.generate("Once upon a time", max_new_tokens=24, chat=False).token_ids == full.token_ids


def test_batch_samples_and_ids(gen):
    prompts = ["Hello world", "The runtime reads the manifest and", "Hello world"]
    outs = gen.generate(prompts, max_new_tokens=12, chat=False)
    assert isinstance(outs, list) and len(outs) == 3
    assert outs[0].token_ids == outs[2].token_ids
    single = gen.generate(prompts[1], max_new_tokens=12, chat=False)
    assert outs[1].token_ids == single.token_ids
    samples = gen.generate("Hello", num_samples=3, max_new_tokens=16, temperature=1.5, seed=1, chat=False)
    assert len(samples) == 3 and len({tuple(s.token_ids) for s in samples}) > 1
    again = gen.generate("Hello", num_samples=3, max_new_tokens=16, temperature=1.5, seed=1, chat=False)
    assert [s.token_ids for s in samples] == [s.token_ids for s in again]
    ids = gen.tokenizer.encode("Hello world")
    assert gen.generate_ids([ids], max_new_tokens=12)[0].token_ids == outs[0].token_ids


def test_stop_strings_and_ids(gen):
    full = gen.generate("Once upon a time", max_new_tokens=40, chat=False)
    assert full.finish_reason == "length" and len(full.token_ids) == 40
    stop_id = full.token_ids[5]
    cut = full.token_ids.index(stop_id)
    by_id = gen.generate("Once upon a time", max_new_tokens=40, chat=False, stop=[stop_id])
    assert by_id.token_ids == full.token_ids[:cut] and by_id.finish_reason == "stop"
    text = full.text
    word = text.strip().split()[2] if len(text.split()) > 2 else text[-3:]
    by_text = gen.generate("Once upon a time", max_new_tokens=40, chat=False, stop=word)
    assert by_text.text == text[: text.find(word)] and by_text.finish_reason == "stop"
    # Streaming holds back what could be the start of a stop string: the pieces never show any of
    # it, so they add up to the cut text exactly (a piece with part of `word` would break this).
    pieces = list(gen.stream("Once upon a time", max_new_tokens=40, chat=False, stop=word))
    assert "".join(pieces) == by_text.text and gen.last_output.finish_reason == "stop"
    ahead = word + "\n" + text  # a stop string longer than the whole output never matches
    assert "".join(gen.stream("Once upon a time", max_new_tokens=40, chat=False, stop=ahead)) == text


def test_tokenizer_and_chat(gen):
    tok = gen.tokenizer
    assert tok.mask_id == gen.artifact.mask_id
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert "hi" in rendered and rendered.endswith("assistant\n")
    assert (
        gen.generate([{"role": "user", "content": "hi"}], max_new_tokens=8).token_ids
        == gen.generate("hi", max_new_tokens=8).token_ids
    )


def test_cli_generate(art):
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from sdar_rt.cli import generate_main; sys.exit(generate_main())",
            str(art),
            "Hello",
            "--max-new-tokens",
            "8",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["token_ids"]) <= 8 and out["stats"]["nfe"] > 0
    bad = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from sdar_rt.cli import generate_main; sys.exit(generate_main())",
            str(art),
            "Hello",
            "--threshold",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "threshold" in bad.stderr


def test_cli_entropy_bounded(gen, art):
    main = "import sys; from sdar_rt.cli import generate_main; sys.exit(generate_main())"

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-c", main, str(art), "Hello", "--max-new-tokens", "12",
             "--remasking", "entropy_bounded", *args],
            capture_output=True, text=True, timeout=120,
        )

    for budget in ("0", "1e9"):
        proc = cli("--eb-threshold", budget, "--json")
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        kw = dict(remasking="entropy_bounded", eb_threshold=float(budget))
        api = gen.generate("Hello", max_new_tokens=12, **kw)
        assert out["token_ids"] == api.token_ids and out["stats"]["nfe"] == api.stats["nfe"]
        if budget == "1e9":  # the whole block in one step
            assert set(api.stats["steps_per_block"]) == {1}
    bad = cli("--eb-threshold", "-1")
    assert bad.returncode == 2 and "eb_threshold must be a finite number >= 0" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_remasking_choices_are_what_the_core_accepts():
    """The CLI's and the server's list of policies is the core's: each is accepted, and the core's
    refusal of anything else names exactly these."""
    import re

    from sdar_rt import _core
    from sdar_rt.generator import REMASKING_POLICIES

    for policy in REMASKING_POLICIES:
        assert _core.GenerationConfig(remasking=policy).remasking == policy
    with pytest.raises(ValueError, match="unknown remasking policy") as err:
        _core.GenerationConfig(remasking="random")
    named = re.findall(r"[a-z_]+", str(err.value).split("expected", 1)[1])
    assert set(named) - {"or"} == set(REMASKING_POLICIES)
