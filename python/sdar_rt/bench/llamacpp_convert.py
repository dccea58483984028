"""llama.cpp's ``convert_hf_to_gguf.py``, run from a llama.cpp source tree with one change: a tokenizer
whose pre-tokenizer the converter does not recognise is written as Qwen2's (``qwen2``).

    python -m sdar_rt.bench.llamacpp_convert LLAMA_CPP_SOURCE CHECKPOINT --outtype f32 --outfile OUT.gguf

The converter names a BPE tokenizer's pre-tokenizer by hashing how it splits a test string and stops
on a hash it does not know. Released SDAR checkpoints carry Qwen3's tokenizer, which it knows
(``qwen2``); the synthetic tokenizers of sdar_rt's own test checkpoints are not in its list. Their
token ids are all the benchmark uses (llama-bench times token ids, never text), so naming Qwen2's
pre-tokenizer, the one of the architecture, loses nothing. Runs in a child process of sdar-bench.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def _name_unknown_pre_tokenizer_qwen2() -> None:
    try:
        from conversion.base import TextModel  # llama.cpp since the converter was split into a package
    except ImportError:
        from convert_hf_to_gguf import TextModel  # type: ignore[no-redef]  # older single-file converter
    recognised = TextModel.get_vocab_base_pre

    def pre_tokenizer(self, tokenizer) -> str:
        try:
            return recognised(self, tokenizer)
        except NotImplementedError:
            logging.getLogger("sdar_rt").warning("pre-tokenizer not recognised: written as qwen2")
            return "qwen2"

    TextModel.get_vocab_base_pre = pre_tokenizer


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit("usage: python -m sdar_rt.bench.llamacpp_convert LLAMA_CPP_SOURCE CONVERTER_ARGS...")
    source = Path(argv[0])
    sys.path[:0] = [str(source), str(source / "gguf-py")]
    sys.argv = [str(source / "convert_hf_to_gguf.py"), *argv[1:]]
    import convert_hf_to_gguf

    _name_unknown_pre_tokenizer_qwen2()
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()
