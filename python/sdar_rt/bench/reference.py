"""The ``reference`` baseline: SDAR decoding written plainly in PyTorch, with a KV cache.

This is what a user would write from the SDAR paper's ``generate.py``: prefill the whole-block part
of the prompt once, then for every block run denoising steps over the block attending to the cache,
fill masked positions by the remasking policy, and run the finished block once more to append its
K/V to the cache (``torch.cat``). Greedy only (temperature 0), the network is sdar_export's
``SDARModel`` on the same weights. torch is imported here, lazily, only when this baseline is used.
"""

from __future__ import annotations

import time


def _import_torch():
    try:
        import torch
    except ImportError as exc:
        raise RuntimeError(
            "the 'reference' baseline needs torch: pip install torch==2.13.0 (CPU wheel) "
            "and the package's [export] extra, or leave 'reference' out of --baselines"
        ) from exc
    try:
        from sdar_export.model import build_model
    except ImportError as exc:
        raise RuntimeError(f"the 'reference' baseline needs sdar_export ({exc})") from exc
    return torch, build_model


class ReferenceDecoder:
    """Greedy SDAR block decoding in PyTorch with a KV cache (one prompt at a time)."""

    def __init__(self, model_dir, *, block_length: int, mask_id: int, eos_ids, threads: int | None = None):
        torch, build_model = _import_torch()
        self.torch = torch
        if threads:
            torch.set_num_threads(threads)
        self.model = build_model(model_dir, dtype="float32")
        self.L, self.mask_id, self.eos_ids = block_length, mask_id, set(eos_ids)

    def _select(self, remasking, conf, masked, n_k, threshold, entropy=None, eb_threshold=0.35):
        """Positions (python ints) to unmask; conf, entropy: lists of float, masked: list of bool."""
        cand = [j for j in range(self.L) if masked[j]]
        if remasking == "sequential":
            return cand[:n_k]
        if remasking == "entropy_bounded":  # ascending entropy while the running sum stays below
            by_entropy = sorted(cand, key=lambda j: (entropy[j], j))
            running, take = 0.0, 0
            for j in by_entropy:
                running += entropy[j]
                if take and not running < eb_threshold:
                    break
                take += 1
            return by_entropy[:take]
        ranked = sorted(cand, key=lambda j: (-conf[j], j))
        if remasking == "low_confidence_dynamic":
            above = [j for j in cand if conf[j] > threshold]
            if len(above) >= n_k:
                return above
        return ranked[:n_k]

    def generate(
        self,
        prompt: list[int],
        *,
        max_new_tokens: int,
        denoising_steps: int | None = None,
        remasking: str = "low_confidence_dynamic",
        threshold: float = 0.9,
    ) -> dict:
        torch, model, L = self.torch, self.model, self.L
        n, m = len(prompt), max_new_tokens
        steps = denoising_steps or L
        sched = [L // steps + (1 if k < L % steps else 0) for k in range(steps)]
        num_blocks = -(-(n + m) // L)
        x = torch.full((1, num_blocks * L), self.mask_id, dtype=torch.int64)
        x[0, :n] = torch.tensor(prompt, dtype=torch.int64)
        keys, values = model.empty_cache(1), model.empty_cache(1)
        nfe = {"prefill": 0, "denoise": 0, "commit": 0}
        generated: list[int] = []
        block_seconds: list[float] = []
        first_block = None
        steps_per_block: list[int] = []
        t0 = time.perf_counter()
        with torch.inference_mode():
            prefix = n // L * L
            if prefix:
                _, keys, values = model(x[:, :prefix], torch.zeros(1, dtype=torch.int64), keys, values, L, 0)
                nfe["prefill"] += 1
            for b in range(n // L, num_blocks):
                tb = time.perf_counter()
                past = torch.tensor([b * L], dtype=torch.int64)
                cur = x[:, b * L : (b + 1) * L].clone()
                masked = [b * L + j >= n for j in range(L)]
                k = 0
                while any(masked):
                    logits, _, _ = model(cur, past, keys, values, L, L)
                    nfe["denoise"] += 1
                    probs = torch.softmax(logits[0].double(), dim=-1)
                    conf_t, tok_t = probs.max(dim=-1)  # first maximum on ties = lowest index
                    conf, tok = conf_t.tolist(), tok_t.tolist()
                    entropy = torch.special.entr(probs).sum(dim=-1).tolist()
                    n_k = min(sched[k], sum(masked))
                    for j in self._select(remasking, conf, masked, n_k, threshold, entropy):
                        cur[0, j] = tok[j]
                        masked[j] = False
                    k += 1
                steps_per_block.append(k)
                x[:, b * L : (b + 1) * L] = cur
                generated.extend(cur[0, max(0, n - b * L) :].tolist())
                now = time.perf_counter()
                block_seconds.append(now - tb)
                if first_block is None:
                    first_block = now - t0
                if len(generated) >= m or any(t in self.eos_ids for t in generated):
                    break
                _, pk, pv = model(cur, past, keys, values, L, 0)  # commit: store the block's K/V
                nfe["commit"] += 1
                keys = [torch.cat([a, c]) for a, c in zip(keys, pk, strict=True)]
                values = [torch.cat([a, c]) for a, c in zip(values, pv, strict=True)]
        seconds = time.perf_counter() - t0
        out = generated[:m]
        for i, t in enumerate(out):
            if t in self.eos_ids:
                out = out[:i]
                break
        return {
            "token_ids": out,
            "tokens_generated": len(out),
            "seconds": seconds,
            "time_to_first_block": first_block or seconds,
            "block_seconds": block_seconds,
            "nfe": nfe,
            "steps_per_block": steps_per_block,
        }
