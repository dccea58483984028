"""The committed tiny trained SDAR checkpoint (python/sdar_rt/checkpoints/tiny): format and behaviour."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "python" / "sdar_rt" / "checkpoints" / "tiny"



def test_checkpoint_is_shipped():
    # The checkpoint is part of the repository and of the wheel: its absence is a failure, not a skip.
    assert (CKPT / "model.safetensors").is_file() and (CKPT / "README.md").is_file()


def test_files_and_tokens():
    from sdar_export.tiny_task import task as T
    from tokenizers import Tokenizer

    cfg = json.loads((CKPT / "config.json").read_text())
    assert cfg["model_type"] == "sdar" and cfg["block_size"] == 4
    tc = json.loads((CKPT / "tokenizer_config.json").read_text())
    assert tc["mask_token"] == "<|MASK|>" and "chat_template" in tc
    gc = json.loads((CKPT / "generation_config.json").read_text())
    tok = Tokenizer.from_file(str(CKPT / "tokenizer.json"))
    assert tok.token_to_id("<|MASK|>") == T.MASK_ID == cfg["mask_token_id"]
    assert set(gc["eos_token_id"]) == {tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")}
    import jinja2

    text = jinja2.Environment().from_string(tc["chat_template"]).render(
        messages=[{"role": "user", "content": "sort: 3 1 2 9"}], add_generation_prompt=True)
    assert tok.encode(text, add_special_tokens=False).ids == T.prompt_ids([3, 1, 2, 9])


def test_loads_through_sdar_export_and_decodes_in_parallel():
    torch = pytest.importorskip("torch")
    from sdar_export.checkpoint import load_checkpoint
    from sdar_export.tiny_task import task as T
    from sdar_export.tiny_task.decode import bd_decode
    from sdar_export.tiny_task.evaluate import export_logits_fn, load_export_model

    torch.set_num_threads(2)
    ck = load_checkpoint(CKPT, with_weights=False)
    assert ck.mask_id == T.MASK_ID and set(ck.eos_ids) == set(T.EOS_IDS)
    digits = T.heldout_set()[:36]
    res = bd_decode(export_logits_fn(load_export_model(CKPT)), [T.prompt_ids(d) for d in digits],
                    mask_id=T.MASK_ID, stop_ids=T.EOS_IDS, threshold=0.9)
    solved = sum(T.is_correct(d, r.tokens) and r.stopped for d, r in zip(digits, res, strict=True))
    tpf = sum(len(r.tokens) for r in res) / sum(r.steps for r in res)
    assert solved >= 33, solved
    assert tpf >= 1.5, tpf


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory):
    """The shipped checkpoint exported (fp32) and loaded through sdar_rt, as a user would run it."""
    pytest.importorskip("torch")
    from sdar_export.cli import export
    from sdar_rt import Generator

    art = export(CKPT, tmp_path_factory.mktemp("tiny-sort") / "art", dtype="float32", quiet=True)
    return Generator(art, threads=1)


def test_runtime_solves_task_and_threshold_trades_forwards(tiny_generator):
    """Through sdar_rt: at the card's threshold (0.9) the held-out prompts are solved (>= 95%) with
    real parallel decoding (TPF >= 1.5); lowering the threshold raises TPF, which random weights
    (every confidence ~ 1/vocab) cannot show."""
    from sdar_export.tiny_task import task as T

    gen = tiny_generator
    digits = T.heldout_set()[:120]
    tpf, solved = {}, {}
    for threshold in (0.5, 0.9, 0.999):
        tokens = forwards = ok = 0
        for d in digits:
            out = gen.generate("sort: " + " ".join(str(x) for x in d), max_new_tokens=16, threshold=threshold)
            tokens += out.stats["tokens_generated"]
            forwards += out.stats["decode_forwards"]
            ok += T.is_correct(d, out.token_ids) and out.finish_reason == "stop"
        tpf[threshold], solved[threshold] = tokens / forwards, ok / len(digits)
    assert solved[0.9] >= 0.95, solved
    assert tpf[0.9] >= 1.5, tpf
    assert tpf[0.5] >= tpf[0.9] >= tpf[0.999] and tpf[0.5] > tpf[0.999], tpf


def _solve(gen, digits, threshold: float = 0.9) -> tuple[float, float, list]:
    """(fraction solved, TPF, output token ids) over the held-out prompts."""
    from sdar_export.tiny_task import task as T

    tokens = forwards = ok = 0
    outs = []
    for d in digits:
        out = gen.generate("sort: " + " ".join(str(x) for x in d), max_new_tokens=16, threshold=threshold)
        tokens += out.stats["tokens_generated"]
        forwards += out.stats["decode_forwards"]
        ok += T.is_correct(d, out.token_ids) and out.finish_reason == "stop"
        outs.append(list(out.token_ids))
    return ok / len(digits), tokens / forwards, outs


@pytest.mark.parametrize("head_bits", [None, 8, 4])
def test_int4_still_solves_task(tiny_generator, tmp_path, head_bits):
    """sdar-export --int4 (float LM head by default; 8-bit and 4-bit heads): at the card's threshold the
    held-out prompts are still solved (>= 95%) with parallel decoding, nearly always with the fp32
    tokens."""
    from sdar_export.cli import export
    from sdar_export.tiny_task import task as T
    from sdar_rt import Generator

    art = export(CKPT, tmp_path / "art", quantize="int4", lm_head_bits=head_bits, quiet=True)
    digits = T.heldout_set()[:120]
    solved, tpf, outs = _solve(Generator(art, threads=1), digits)
    _, tpf_fp32, ref = _solve(tiny_generator, digits)
    assert solved >= 0.95, solved
    assert tpf >= 1.5 and abs(tpf - tpf_fp32) < 0.25, (tpf, tpf_fp32)
    assert sum(a == b for a, b in zip(outs, ref, strict=True)) >= 0.95 * len(digits)


def test_demo_main_job_exports_and_streams_the_packaged_model(tmp_path, capsys):
    """The README's main job (`sdar-demo`): packaged checkpoint -> export -> streamed answer."""
    pytest.importorskip("torch")
    from sdar_rt.cli import PACKAGED_CHECKPOINT, demo_main

    assert (PACKAGED_CHECKPOINT / "model.safetensors").is_file(), "the wheel must carry the checkpoint"
    assert demo_main(["-o", str(tmp_path / "art")]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "0 1 2 3 3 5 8 9"  # sort: 5 9 1 3 3 8 0 2
    assert "[stop]" in captured.err and (tmp_path / "art" / "manifest.json").is_file()
    # on the host, engine="auto" picks the native CPU engine (the artifact carries its weights), and
    # the demo says so in words, not class names
    assert "native CPU engine" in captured.err


def test_readme_example_runs_on_the_shipped_model(tiny_generator):
    """The README's Python example uses the shipped model's task, and its comments show what it prints."""
    block = (ROOT / "README.md").read_text().split("```python", 1)[1]
    block = block.split("```", 1)[0]
    generate_prompt = re.search(r'gen\.generate\("([^"]+)"', block).group(1)
    stream_prompt = re.search(r'gen\.stream\("([^"]+)"', block).group(1)
    out = tiny_generator.generate(generate_prompt, max_new_tokens=64, threshold=0.9)
    digits = sorted(generate_prompt.removeprefix("sort: ").split())
    assert out.text == " ".join(digits) and out.finish_reason == "stop"
    assert f"# {out.text} {out.finish_reason} {out.stats['tpf']:.2f}" in block
    streamed = "".join(tiny_generator.stream(stream_prompt, max_new_tokens=64))
    assert streamed == " ".join(sorted(stream_prompt.removeprefix("sort: ").split()))
    assert f"# text per finished block: {streamed}" in block
