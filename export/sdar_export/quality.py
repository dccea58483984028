"""Quality (and speed) of a weight-quantized export against the float one.

    python -m sdar_export.quality MODEL_DIR [--int4|--int8] [--group-size 128] [--asymmetric]
        [--quant-format MatMulNBits|QDQ] [--float-artifact A] [--quant-artifact B] [--workdir DIR]
        [--prompts 4] [--prompt-len 32] [--max-new-tokens 256] [--denoising-steps 2] [--threshold 0.9]
        [--threads 2] [--task-prompts 200] [--json OUT] [--awq [--calibration builtin|task|FILE]]

1. PyTorch, float32 network vs the same network with the dequantized weights, on random prompts
   (whole sequence, block-causal): relative error ||h_q - h_f|| / ||h_f|| of the hidden state after
   every layer and of the final logits, and the teacher-forced argmax agreement.
2. sdar_rt Generator on both artifacts (exported here unless given), greedy decoding of the same
   random prompts: token agreement (fraction of positions equal over the common length, and the
   mean index of the first divergence), TPF and decode tokens/s of each.
3. If MODEL_DIR is the tiny task checkpoint (export/sdar_export/tiny_task), exact match on its
   held-out prompts through both artifacts at ``--threshold`` (default 0.9).

``--awq``: the same for an AWQ export (sdar_export.awq, calibrated on ``--calibration``: the
built-in prompts, ``task`` = tiny-task training-distribution prompts, or a file) next to RTN, under
``"awq"``, with an ``"rtn_vs_awq"`` summary. On the tiny task checkpoint the PyTorch comparison
also runs held-out task sequences (prompt + answer): its random prompts are 3 token ids only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _models(model_dir, scheme, calib_ids=None, block_length: int = 4):
    """(checkpoint, float model, RTN model, AWQ model or None when ``calib_ids`` is None)."""
    from .checkpoint import load_checkpoint
    from .model import SDARModel
    from .quantize import quantize_weights

    ck = load_checkpoint(model_dir, dtype="float32")
    qw, plan = quantize_weights(ck.weights, ck.config, scheme, "float32")
    fm = SDARModel(ck.config, ck.weights).eval()
    qm = SDARModel(ck.config, qw).eval()
    am = None
    if calib_ids is not None:
        from .awq import apply_awq
        res = apply_awq(ck.weights, ck.config, calib_ids, scheme, "float32", block_length, ck.mask_id,
                        progress=lambda m: print(f"AWQ {m}", file=sys.stderr))
        aw, _ = quantize_weights(res.weights, ck.config, scheme, "float32")
        am = SDARModel(ck.config, aw).eval()
    return ck, fm, qm, am


def task_calibration(n: int = 16, seed: int = 777) -> list[str]:
    """Tiny-task calibration texts: rendered prompt + answer of training-distribution lists (never
    a held-out one), one line each with ``\\n`` for the newlines the chat template writes."""
    from .tiny_task import task as T

    held = {tuple(d) for d in T.heldout_set()}
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        d = T.random_digits(rng)
        if tuple(d) not in held:
            text = T.render_prompt(T.user_message(d)) + T.answer_text(d) + "<|im_end|>"
            out.append(text.replace("\n", "\\n"))
    return out


def _calibration(a, work: Path, max_ctx: int, vocab: int, task: bool):
    """(token ids, file for sdar-export or None for the built-in set) of ``--calibration``."""
    from .awq import calibration_ids
    from .errors import ExportError

    path = None
    if a.calibration == "task":
        if not task:
            raise ExportError("--calibration task needs the tiny task checkpoint; pass a file or 'builtin'.")
        work.mkdir(parents=True, exist_ok=True)
        path = work / "task_calibration.txt"
        path.write_text("\n".join(task_calibration()) + "\n", encoding="utf-8")
    elif a.calibration != "builtin":
        path = Path(a.calibration)
    return calibration_ids(a.model_dir, path, max_ctx, vocab), path


def layer_errors(fm, qm, prompts: list[list[int]], block_length: int) -> dict:
    """Per-layer hidden-state and final-logit relative errors (mean over prompts), argmax agreement."""
    import torch

    def run(model, ids):
        hs = []
        hooks = [layer.register_forward_hook(lambda _m, _i, out: hs.append(out[0].detach().clone()))
                 for layer in model.layers]
        try:
            from .model import full_sequence_logits
            logits = full_sequence_logits(model, ids, block_length)
        finally:
            for h in hooks:
                h.remove()
        return hs, logits

    per_layer, logit_err, agree, n_pos = None, [], 0, 0
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p], dtype=torch.int64)
            hf, lf = run(fm, ids)
            hq, lq = run(qm, ids)
            e = [float((a - b).norm() / b.norm().clamp_min(1e-30)) for a, b in zip(hq, hf, strict=True)]
            per_layer = e if per_layer is None else [x + y for x, y in zip(per_layer, e, strict=True)]
            logit_err.append(float((lq - lf).norm() / lf.norm()))
            agree += int((lq.argmax(-1) == lf.argmax(-1)).sum())
            n_pos += lf.shape[1]
    n = len(prompts)
    return {"layer_rel_err": [x / n for x in per_layer], "logits_rel_err": float(np.mean(logit_err)),
            "teacher_forced_argmax_agreement": agree / max(1, n_pos)}


def _agreement(a: list[int], b: list[int]) -> tuple[int, int, int]:
    """(equal positions over the common length, common length, first divergence index)."""
    m = min(len(a), len(b))
    eq = sum(1 for i in range(m) if a[i] == b[i])
    first = next((i for i in range(m) if a[i] != b[i]), m)
    return eq, m, first


def _gen_stats(outs_stats) -> dict:
    toks = sum(st["tokens_generated"] for st in outs_stats)
    fwd = sum(st["decode_forwards"] for st in outs_stats)
    secs = sum(st["total_seconds"] - st["prefill_seconds"] for st in outs_stats)
    return {"tokens": toks, "decode_forwards": fwd, "tpf": toks / max(1, fwd), "decode_seconds": secs,
            "decode_tokens_per_s": toks / secs if secs > 0 else 0.0}


def compare_generations(float_art, quant_art, prompts, *, max_new_tokens, steps, threshold, threads,
                        remasking="low_confidence_dynamic") -> dict:
    """Greedy generations of the same prompts on both artifacts, interleaved prompt by prompt (float,
    then quant) so that the machine's load hits both alike; decode tokens/s excludes the prefill."""
    from sdar_rt import Generator

    gens = {k: Generator(a, engine="ort", threads=threads)
            for k, a in (("float", float_art), ("quant", quant_art))}
    for g in gens.values():   # warm-up
        g.generate_ids([prompts[0]], max_new_tokens=g.artifact.block_length, denoising_steps=steps)
    outs: dict = {k: [] for k in gens}
    stats: dict = {k: [] for k in gens}
    for p in prompts:
        for k, g in gens.items():
            o = g.generate_ids([p], max_new_tokens=max_new_tokens, denoising_steps=steps, threshold=threshold,
                               remasking=remasking, temperature=0.0)[0]
            outs[k].append(list(o.token_ids))
            stats[k].append(o.stats)
    fs, qs = _gen_stats(stats["float"]), _gen_stats(stats["quant"])
    eq = common = 0
    firsts = []
    for a, b in zip(outs["float"], outs["quant"], strict=True):
        e, m, f = _agreement(a, b)
        eq, common = eq + e, common + m
        firsts.append(f)
    return {"float": fs, "quant": qs, "token_agreement": eq / max(1, common),
            "mean_first_divergence": float(np.mean(firsts)), "identical_sequences": sum(
                1 for a, b in zip(outs["float"], outs["quant"], strict=True) if a == b),
            "sequences": len(prompts),
            "speedup_decode": qs["decode_tokens_per_s"] / fs["decode_tokens_per_s"]
            if fs["decode_tokens_per_s"] else None,
            "tpf_change": qs["tpf"] - fs["tpf"]}


def is_tiny_task(model_dir) -> bool:
    try:
        from .tiny_task import task as T
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        vocab = json.loads((Path(model_dir) / "tokenizer.json").read_text())["model"]["vocab"]
        return cfg.get("vocab_size") == T.VOCAB_SIZE and all(vocab.get(t) == i for t, i in T.VOCAB.items()
                                                            if t in vocab)  and len(vocab) > 0
    except Exception:
        return False


def task_exact_match(art, n: int, threshold: float, steps: int, threads) -> dict:
    from sdar_rt import Generator

    from .tiny_task import task as T

    gen = Generator(art, engine="ort", threads=threads)
    digits = T.heldout_set(n)
    ok = toks = fwd = 0
    for d in digits:
        o = gen.generate_ids([T.prompt_ids(d)], max_new_tokens=len(T.answer_ids(d)) + 8, threshold=threshold,
                             remasking="low_confidence_dynamic", denoising_steps=steps, temperature=0.0)[0]
        ok += int(T.is_correct(d, o.token_ids) and o.finish_reason == "stop")
        toks += o.stats["tokens_generated"]
        fwd += o.stats["decode_forwards"]
    return {"exact_match": ok / n, "tpf": toks / max(1, fwd), "prompts": n}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sdar_export.quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    qb = ap.add_mutually_exclusive_group()
    qb.add_argument("--int4", action="store_true", help="(default)")
    qb.add_argument("--int8", action="store_true")
    ap.add_argument("--group-size", type=int, default=None)
    ap.add_argument("--asymmetric", action="store_true")
    ap.add_argument("--quant-format", choices=["MatMulNBits", "QDQ"], default=None)
    ap.add_argument("--float-artifact", default=None, help="existing float32 artifact of MODEL_DIR")
    ap.add_argument("--quant-artifact", default=None, help="existing quantized artifact (same scheme!)")
    ap.add_argument("--workdir", default=None, help="where to export missing artifacts (default: a temp dir)")
    ap.add_argument("--block-length", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--denoising-steps", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--task-prompts", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-torch", action="store_true", help="skip the per-layer PyTorch comparison")
    ap.add_argument("--skip-generation", action="store_true", help="PyTorch comparison only (no artifacts)")
    ap.add_argument("--awq", action="store_true", help="also measure an AWQ export against RTN")
    ap.add_argument("--calibration", default="builtin",
                    help="AWQ calibration: 'builtin', 'task' (tiny task checkpoint) or a file, one prompt "
                         "a line")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    from .errors import CheckpointError, ExportError
    from .quantize import make_scheme

    weights = "int8" if a.int8 else "int4"
    try:
        scheme = make_scheme(weights, a.group_size, not a.asymmetric, a.quant_format)
        report: dict = {"model_dir": str(a.model_dir),
                        "scheme": {"weights": weights, "group_size": scheme.group_size,
                                   "symmetric": scheme.symmetric, "format": scheme.format}}
        L = a.block_length
        max_ctx = -(-(a.prompt_len + a.max_new_tokens) // L) * L
        task = is_tiny_task(a.model_dir)
        if task:
            from .tiny_task import task as T
            max_ctx = max(max_ctx, -(-(T.MAX_PROMPT_LEN + T.MAX_ANSWER_LEN + 8) // L) * L)
        work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="sdar_quality_"))
        calib_ids = calib_file = None
        if a.awq:
            from .config import SDARConfig
            cfg = SDARConfig.from_file(Path(a.model_dir))
            calib_ids, calib_file = _calibration(a, work, max_ctx, cfg.vocab_size, task)
            report["scheme"]["awq_calibration"] = {"source": a.calibration, "prompts": len(calib_ids)}
        t = time.time()
        ck, fm, qm, am = _models(a.model_dir, scheme, calib_ids, L)
        if am is not None:
            print(f"AWQ calibration + quantization: {time.time() - t:.1f} s", file=sys.stderr)
        vocab = ck.config.vocab_size
        rng = np.random.default_rng(a.seed)
        hi = min(vocab, ck.mask_id) if ck.mask_id > 0 else vocab
        prompts = [[int(x) for x in rng.integers(0, hi, a.prompt_len)] for _ in range(a.prompts)]
        if not a.skip_torch:
            t = time.time()
            report["torch"] = layer_errors(fm, qm, prompts, a.block_length)
            if am is not None:
                report.setdefault("awq", {})["torch"] = layer_errors(fm, am, prompts, a.block_length)
                if task:   # real sequences: the random prompts above are ids 0..mask_id-1 only
                    seqs = [T.prompt_ids(d) + T.answer_ids(d) for d in T.heldout_set(a.task_prompts)]
                    report["torch_task"] = layer_errors(fm, qm, seqs, a.block_length)
                    report["awq"]["torch_task"] = layer_errors(fm, am, seqs, a.block_length)
            print(f"torch comparison: {time.time() - t:.1f} s", file=sys.stderr)
        del fm, qm, am
        if a.skip_generation:
            return _finish(report, a)
        fa, qa = a.float_artifact, a.quant_artifact
        from .cli import export
        if fa is None:
            fa = export(a.model_dir, work / "float", max_context=max_ctx, block_length=L, skip_validate=True,
                        force=True, quiet=True)
        if qa is None:
            qa = export(a.model_dir, work / weights, max_context=max_ctx, block_length=L, skip_validate=True,
                        force=True, quiet=True, quantize=weights, group_size=a.group_size,
                        symmetric=not a.asymmetric, quant_format=a.quant_format)
        report["artifacts"] = {"float": str(fa), "quant": str(qa)}
        kw = dict(max_new_tokens=a.max_new_tokens, steps=a.denoising_steps, threshold=a.threshold,
                  threads=a.threads)
        report["generation"] = compare_generations(fa, qa, prompts, **kw)
        if task:
            report["task"] = {"threshold": a.threshold,
                              "float": task_exact_match(fa, a.task_prompts, a.threshold, 4, a.threads),
                              "quant": task_exact_match(qa, a.task_prompts, a.threshold, 4, a.threads)}
        if a.awq:
            aa = export(a.model_dir, work / f"{weights}-awq", max_context=max_ctx, block_length=L,
                        skip_validate=True, force=True, quiet=True, quantize=weights, group_size=a.group_size,
                        symmetric=not a.asymmetric, quant_format=a.quant_format, awq=True,
                        calibration=calib_file)
            report["artifacts"]["awq"] = str(aa)
            report.setdefault("awq", {})["generation"] = compare_generations(fa, aa, prompts, **kw)
            if task:
                report["awq"]["task"] = task_exact_match(aa, a.task_prompts, a.threshold, 4, a.threads)
                # greedy agreement on real prompts (the random ones are 3 distinct ids here)
                tp = [T.prompt_ids(d) for d in T.heldout_set(a.task_prompts)]
                report["generation_task"] = compare_generations(fa, qa, tp, **kw)
                report["awq"]["generation_task"] = compare_generations(fa, aa, tp, **kw)
    except (CheckpointError, ExportError) as e:
        print(f"sdar_export.quality: error: {e}", file=sys.stderr)
        return 2
    return _finish(report, a)


def rtn_vs_awq(report: dict) -> dict:
    """The headline numbers of RTN and AWQ side by side (what was measured)."""
    out: dict = {}
    w = report.get("awq", {})
    for key in ("torch", "torch_task"):
        if key in report and key in w:
            for m in ("logits_rel_err", "teacher_forced_argmax_agreement"):
                out[f"{key}.{m}"] = {"rtn": report[key][m], "awq": w[key][m]}
    for key in ("generation", "generation_task"):
        if key in report and key in w:
            for m in ("token_agreement", "identical_sequences"):
                out[f"{key}.{m}"] = {"rtn": report[key][m], "awq": w[key][m]}
    if "task" in report and "task" in w:
        out["task.exact_match"] = {"float": report["task"]["float"]["exact_match"],
                                   "rtn": report["task"]["quant"]["exact_match"],
                                   "awq": w["task"]["exact_match"]}
    return out


def _finish(report: dict, a) -> int:
    if "awq" in report:
        report["rtn_vs_awq"] = rtn_vs_awq(report)
    text = json.dumps(report, indent=2)
    if a.json:
        Path(a.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
