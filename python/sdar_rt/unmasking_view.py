"""A terminal view of in-block unmasking (``sdar-generate --show-unmasking``), drawn with rich.

The answer so far is followed by the block being denoised: one cell per position, the prompt's
positions dim, masked positions as shaded cells, the positions unmasked by the last step
highlighted, and a status line (block, step, positions still masked). Each denoising step redraws
it; when the block is finished its text joins the answer.
"""

from __future__ import annotations

import time
from typing import Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from .unmasking import UnmaskingStep

MASK_CELL = "░░"


class _Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class UnmaskingView:
    """Use as a context manager around a generation; pass ``on_text`` and ``on_step`` to it.

    ``delay``: seconds to pause after drawing each step, so a fast model can be watched.
    """

    def __init__(self, tokenizer: _Decoder, *, console: Console | None = None, delay: float = 0.0):
        self._tok = tokenizer
        self._console = console or Console()
        self._delay = delay
        self._text = ""
        self._step: UnmaskingStep | None = None
        self._before: list[bool] | None = None  # the block's masks before the last step
        self._live: Live | None = None

    def __enter__(self) -> UnmaskingView:
        self._live = Live(self.render(), console=self._console, auto_refresh=False, transient=False)
        self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._step = None  # the final frame is the answer alone
        self._redraw()
        assert self._live is not None
        self._live.__exit__(*exc)
        self._live = None

    def on_step(self, step: UnmaskingStep) -> None:
        if step.row != 0:
            return  # one sequence is drawn
        previous = self._step
        same_block = previous is not None and previous.block == step.block and step.step > 0
        fresh = [j >= step.prompt_positions for j in range(len(step.masked))]  # before its first step
        self._before = previous.masked if same_block else fresh
        self._step = step
        self._redraw()
        if self._delay > 0:
            time.sleep(self._delay)

    def on_text(self, row: int, delta: str) -> None:
        if row != 0:
            return
        self._text += delta
        self._step = None  # the finished block is part of the text now
        self._redraw()

    def render(self) -> Group:
        answer = Text(self._text)
        step = self._step
        if step is None:
            return Group(answer)
        status = Text(
            f"block {step.block} · step {step.step + 1} · {sum(step.masked)} of "
            f"{len(step.masked) - step.prompt_positions} masked",
            style="dim",
        )
        before = self._before or step.masked
        line = answer.copy()
        line.append(" ⟦", style="dim")
        for j, (token, masked) in enumerate(zip(step.tokens, step.masked, strict=True)):
            line.append(" ")
            if masked:
                line.append(MASK_CELL, style="grey50")
                continue
            cell = self._tok.decode([token], skip_special_tokens=False).replace("\n", "⏎") or "·"
            if j < step.prompt_positions:
                line.append(cell, style="dim")
            elif before[j]:
                line.append(cell, style="bold green")  # unmasked by this step
            else:
                line.append(cell)
        line.append(" ⟧", style="dim")
        return Group(status, line)

    def _redraw(self) -> None:
        if self._live is not None:
            self._live.update(self.render(), refresh=True)
