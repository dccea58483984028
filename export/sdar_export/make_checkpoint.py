"""Write small random SDAR checkpoints in the exact released Hugging Face format (for tests/demos).

    python -m sdar_export.make_checkpoint OUT [--moe] [--seed N] [--preset tiny] [--dtype bfloat16]

Files: config.json, model.safetensors (or shards + model.safetensors.index.json), tokenizer.json
(byte-level BPE trained offline on a built-in text, with <|endoftext|>, <|im_start|>, <|im_end|>,
<|MASK|>), tokenizer_config.json (ChatML chat template), generation_config.json.
Weights are random but scaled so logits are well spread (greedy argmax far from ties).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MASK_TOKEN = "<|MASK|>"

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_TEXT = """\
The quick brown fox jumps over the lazy dog. A block diffusion language model generates text one
block at a time; inside a block it starts from mask tokens and fills in the most confident
positions over a few denoising steps. Each finished block is committed to the key value cache.
Hello world! How are you today? I am fine, thank you. What is the capital of France? Paris is the
capital of France. Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000. def main(): return 42
The runtime reads the manifest, loads the graphs and runs them on the CPU or on the GPU.
Once upon a time there was a small model that wanted to write stories about the sea and the sky.
"""

PRESETS = {
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32, vocab_size=512, max_position_embeddings=1024,
                 num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64),
    "small": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, head_dim=32, vocab_size=1000, max_position_embeddings=2048,
                  num_experts=8, num_experts_per_tok=2, moe_intermediate_size=128),
    # The released model shapes (Qwen3 dims), for benchmarks of export and decoding on real sizes.
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
                       tie_word_embeddings=True),
    "qwen3-1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
                       tie_word_embeddings=True),
    "qwen3-4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
                     tie_word_embeddings=True),
    "qwen3-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
                     tie_word_embeddings=False),
}
SHARD_BYTES = 5 * 10**9     # what Hugging Face's save_pretrained writes per shard by default


def build_tokenizer(vocab_size: int):
    """Byte-level BPE with exactly ``vocab_size`` entries; <|MASK|> is the last id."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import ByteLevel as ByteLevelProcessor

    n_special = len(SPECIAL_TOKENS) + 1
    if vocab_size < 256 + n_special + 8:
        raise ValueError(f"vocab_size {vocab_size} too small for a byte-level tokenizer (min 268)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = ByteLevelProcessor(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - n_special, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator([_TEXT] * 4, trainer=trainer)
    base = tok.get_vocab_size()
    filler = [f"<|reserved_{i}|>" for i in range(vocab_size - n_special - base)]
    tok.add_special_tokens(SPECIAL_TOKENS + filler + [MASK_TOKEN])
    assert tok.get_vocab_size() == vocab_size, (tok.get_vocab_size(), vocab_size)
    return tok


def _config_dict(preset: str, moe: bool, vocab_size, dtype: str, overrides: dict) -> dict:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    p = dict(PRESETS[preset])
    if vocab_size is not None:
        p["vocab_size"] = vocab_size
    cfg = {
        "architectures": ["SDARMoeForCausalLM" if moe else "SDARForCausalLM"],
        "model_type": "sdar_moe" if moe else "sdar",
        "hidden_act": "silu",
        "hidden_size": p["hidden_size"],
        "intermediate_size": p["intermediate_size"],
        "num_hidden_layers": p["num_hidden_layers"],
        "num_attention_heads": p["num_attention_heads"],
        "num_key_value_heads": p["num_key_value_heads"],
        "head_dim": p["head_dim"],
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "tie_word_embeddings": p.get("tie_word_embeddings", False),
        "vocab_size": p["vocab_size"],
        "max_position_embeddings": p["max_position_embeddings"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "use_sliding_window": False,
        "torch_dtype": dtype,
        "transformers_version": "4.52.0",
    }
    if moe:
        cfg.update(num_experts=p["num_experts"], num_experts_per_tok=p["num_experts_per_tok"],
                   moe_intermediate_size=p["moe_intermediate_size"], norm_topk_prob=True,
                   decoder_sparse_step=1, mlp_only_layers=[], output_router_logits=False,
                   router_aux_loss_coef=0.001)
    cfg.update(overrides)
    return cfg


def random_weights(cfg_dict: dict, seed: int = 0) -> dict:
    """Random float32 weights for every tensor; std chosen so logits spread well (std ~3)."""
    return dict(random_tensors(cfg_dict, seed))


def random_tensors(cfg_dict: dict, seed: int = 0):
    """(name, random float32 tensor) for every tensor in turn (the values of :func:`random_weights`)."""
    import torch

    from .checkpoint import expected_tensor_shapes
    from .config import SDARConfig

    cfg = SDARConfig.from_dict(cfg_dict)
    g = torch.Generator().manual_seed(seed)
    for name, shape in expected_tensor_shapes(cfg).items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if len(shape) == 1:  # norm weights around 1 (exercise the weight multiply)
            t = 1.0 + 0.2 * torch.randn(shape, generator=g)
        elif name == "model.embed_tokens.weight":
            t = torch.randn(shape, generator=g)
        elif name == "lm_head.weight":  # normed hidden (rms ~1) x this -> logits std ~3
            t = torch.randn(shape, generator=g) * (3.0 / math.sqrt(shape[1]))
        elif name.endswith("mlp.gate.weight"):  # router: spread, so top-k is far from ties
            t = torch.randn(shape, generator=g) * (2.0 / math.sqrt(shape[1]))
        else:
            t = torch.randn(shape, generator=g) * (1.0 / math.sqrt(shape[1]))
        yield name, t.contiguous()


def make_checkpoint(out_dir, preset: str = "tiny", seed: int = 0, moe: bool = False, vocab_size=None,
                    dtype: str = "float32", shards: int = 1, **overrides) -> Path:
    """Write a random checkpoint in the released SDAR format; returns the directory.

    ``shards`` > 1 deals the tensors round-robin over that many files. A checkpoint over 5 GB is
    written in consecutive shards of at most 5 GB, as Hugging Face writes one, one shard in memory
    at a time (the 8B shape is 16 GB)."""
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = _config_dict(preset, moe, vocab_size, dtype, overrides)
    tdt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    tensors = ((k, v.to(tdt).contiguous()) for k, v in random_tensors(cfg, seed))
    if shards > 1:
        W = dict(tensors)
        names = list(W)
        _write_shards(out, [{k: W[k] for k in names[s::shards]} for s in range(shards)])
    else:
        _write_consecutive_shards(out, tensors)
    _write_tokenizer_files(out, cfg)
    return out


def _write_shards(out: Path, parts) -> None:
    """``parts`` (an iterable of name -> tensor dicts) as model-0000i-of-0000N.safetensors + index;
    one part alone is model.safetensors."""
    from safetensors.torch import save_file

    written, weight_map, total = [], {}, 0
    for s, part in enumerate(parts):
        tmp = out / f".part-{s}.safetensors"
        save_file(part, str(tmp), metadata={"format": "pt"})
        written.append((tmp, list(part)))
        total += sum(v.numel() * v.element_size() for v in part.values())
    if len(written) == 1:
        written[0][0].rename(out / "model.safetensors")
        return
    for s, (tmp, names) in enumerate(written):
        fname = f"model-{s + 1:05d}-of-{len(written):05d}.safetensors"
        tmp.rename(out / fname)
        weight_map.update(dict.fromkeys(names, fname))
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))


def _write_consecutive_shards(out: Path, tensors) -> None:
    def parts():
        part, size = {}, 0
        for name, t in tensors:
            n = t.numel() * t.element_size()
            if part and size + n > SHARD_BYTES:
                yield part
                part, size = {}, 0
            part[name], size = t, size + n
        yield part

    _write_shards(out, parts())


def _write_tokenizer_files(out: Path, cfg: dict) -> None:
    tok = build_tokenizer(cfg["vocab_size"])
    tok.save(str(out / "tokenizer.json"))
    vocab = tok.get_vocab()
    eos = [vocab["<|im_end|>"], vocab["<|endoftext|>"]]
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "mask_token": MASK_TOKEN,
        "unk_token": None,
        "model_max_length": cfg["max_position_embeddings"],
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps({
        "bos_token_id": vocab["<|endoftext|>"],
        "eos_token_id": eos,
        "pad_token_id": vocab["<|endoftext|>"],
        "do_sample": False,
        "transformers_version": "4.52.0",
    }, indent=2) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sdar_export.make_checkpoint",
                                 description="Write a random SDAR checkpoint in the released HF format.")
    ap.add_argument("out")
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--moe", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab-size", type=int, default=None)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--tie-word-embeddings", action="store_true")
    a = ap.parse_args(argv)
    extra = {"tie_word_embeddings": True} if a.tie_word_embeddings else {}
    p = make_checkpoint(a.out, preset=a.preset, seed=a.seed, moe=a.moe, vocab_size=a.vocab_size,
                        dtype=a.dtype, shards=a.shards, **extra)
    print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
