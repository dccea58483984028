"""The prompt set a benchmark runs: a file, the model's own task prompts, or general ones."""

from __future__ import annotations

from pathlib import Path

DEFAULT_PROMPTS = (
    "Write one sentence about the sea.",
    "List three colours.",
    "What is two plus two?",
    "Name a city in France.",
)


def prompt_texts(gen, path: str | None, model_dir: Path | None = None) -> list[str]:
    """--prompts FILE, else the prompts of the model's task (``bench_prompts.txt`` in the artifact or
    the checkpoint dir, e.g. the packaged digit sorter's), else general prompts."""
    if path:
        lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"{path}: no prompts (one prompt per line)")
        return lines
    for folder in (gen.artifact.path, model_dir):
        task = folder / "bench_prompts.txt" if folder is not None else None
        if task is not None and task.is_file():
            return [line for line in task.read_text().splitlines() if line.strip()]
    return list(DEFAULT_PROMPTS)


def prompt_ids(gen, texts: list[str], length: int | None) -> list[list[int]]:
    """Token ids of the prompt set (chat template applied when the tokenizer has one), or, with
    ``length``, prompts of exactly that many tokens cycled from them (distinct per prompt)."""
    ids = [gen._encode_prompt(t, None) for t in texts]
    return ids if length is None else cycled(ids, length, len(ids))


def cycled(ids: list[list[int]], length: int, count: int) -> list[list[int]]:
    """``count`` prompts of exactly ``length`` tokens cycled from the tokens of ``ids``, distinct per
    prompt."""
    pool = [t for p in ids for t in p]
    return [[pool[(13 * i + j) % len(pool)] for j in range(length)] for i in range(count)]
