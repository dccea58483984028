"""The live state of in-block unmasking: one ``UnmaskingStep`` per row and denoising step.

The C++ core calls back after every denoising step with the block's tokens and masks for every row
of the call (``Generator.generate(on_step=...)``); ``StepRows`` turns that into one record per
request row that took part in the step, so a viewer never sees a finished row repeated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class UnmaskingStep:
    """The block being denoised, right after one denoising step of one row."""

    row: int  # the prompt's index in the request (as on_text's row)
    block: int  # decoded block of the call, 0 = the first
    step: int  # denoising step within the block, 0-based
    position: int  # absolute position of the block's first token
    tokens: list[int]  # the block's token ids; the mask id where still masked
    masked: list[bool]  # which positions are still masked
    prompt_positions: int  # leading positions of the block that hold the prompt (first block only)

    @property
    def unmasked(self) -> int:
        """Generated positions of the block that hold a token so far."""
        return sum(1 for j, m in enumerate(self.masked) if not m and j >= self.prompt_positions)


class StepRows:
    """Per-row bookkeeping of one call's steps: which rows unmasked something in this step."""

    def __init__(self, prompt_length: int, block_length: int, row_indices: Sequence[int]):
        self._n = prompt_length
        self._L = block_length
        self._rows = list(row_indices)
        self._left = [0] * len(self._rows)  # masked positions of each row's block before this step

    def update(
        self,
        block: int,
        step: int,
        position: int,
        tokens: Sequence[Sequence[int]],
        masked: Sequence[Sequence[bool]],
        ended: Sequence[bool],
    ) -> list[UnmaskingStep]:
        prompt_positions = min(self._L, max(0, self._n - position))
        out = []
        for r, row in enumerate(self._rows):
            if step == 0:
                self._left[r] = self._L - prompt_positions
            left = sum(masked[r])
            if ended[r] or left >= self._left[r]:
                continue  # finished earlier, or its block was already done: untouched this step
            self._left[r] = left
            out.append(
                UnmaskingStep(row, block, step, position, list(tokens[r]), list(masked[r]), prompt_positions)
            )
        return out
