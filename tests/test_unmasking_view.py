"""The live view of in-block unmasking: Generator.generate(on_step=...) per row, the terminal view
(rich) and `sdar-generate --show-unmasking`."""

from __future__ import annotations

import io
import threading

import pytest
from rich.console import Console
from sdar_fixtures import packaged_artifact
from sdar_rt import Generator, UnmaskingStep
from sdar_rt.cli import generate_main
from sdar_rt.unmasking import StepRows
from sdar_rt.unmasking_view import MASK_CELL, UnmaskingView

SLOW = dict(threshold=0.999, remasking="low_confidence_static", max_new_tokens=16)  # one token per step


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return packaged_artifact(tmp_path_factory)


@pytest.fixture(scope="module")
def gen(art):
    return Generator(art, threads=1)


def answer_from_steps(steps: list[UnmaskingStep], length: int) -> list[int]:
    """The generated tokens as the steps show them (checking a shown token never changes)."""
    n = steps[0].position + steps[0].prompt_positions  # prompt length
    generated: dict[int, int] = {}
    for s in steps:
        assert len(s.tokens) == len(s.masked) == 4
        assert s.unmasked == s.step + 1  # static policy, 4 steps per block: one position per step
        for j, (token, masked) in enumerate(zip(s.tokens, s.masked, strict=True)):
            if not masked and s.position + j >= n:
                assert generated.setdefault(s.position + j, token) == token
    return [generated[p] for p in sorted(generated)][:length]


def test_steps_replay_the_answer(gen):
    steps: list[UnmaskingStep] = []
    out = gen.generate("sort: 7 0 3 3 9 1", on_step=steps.append, **SLOW)
    assert out.text == "0 1 3 3 7 9"
    assert len(steps) == sum(out.stats["steps_per_block"]) and {s.row for s in steps} == {0}
    assert answer_from_steps(steps, len(out.token_ids)) == out.token_ids
    streamed: list[UnmaskingStep] = []
    assert "".join(gen.stream("sort: 7 0 3 3 9 1", on_step=streamed.append, **SLOW)) == out.text
    assert streamed == steps


def test_steps_of_a_batch_and_cancel(gen):
    prompts = ["sort: 4 3 2 1", "sort: 9 0 9 0"]
    seen: dict[int, list[UnmaskingStep]] = {0: [], 1: []}
    outs = gen.generate(prompts, on_step=lambda s: seen[s.row].append(s), **SLOW)
    assert outs[0].stats["num_rows"] == 2  # one call
    for row, out in enumerate(outs):
        assert len(seen[row]) == sum(out.stats["steps_per_block"])
        assert answer_from_steps(seen[row], len(out.token_ids)) == out.token_ids
    cancel = threading.Event()

    steps: list[UnmaskingStep] = []

    def stop_at_second_block(step: UnmaskingStep) -> None:
        steps.append(step)
        if step.block == 1:
            cancel.set()

    out = gen.generate("sort: 9 1 8 2 7 3 6 4", on_step=stop_at_second_block, cancel=cancel, **SLOW)
    assert out.finish_reason == "cancelled"
    assert (steps[-1].block, steps[-1].step) == (1, 0)  # cancelled right after that step
    assert len(out.token_ids) == 4 - steps[0].prompt_positions  # the first block's output only


def test_step_rows_reports_rows_that_took_part():
    rows = StepRows(prompt_length=10, block_length=4, row_indices=[5, 6, 7])
    tokens = [[1, 2, 3, 4]] * 3
    # block 0 starts at 8: two prompt positions; row 7 has ended earlier
    first = rows.update(0, 0, 8, tokens, [[False, False, False, True]] * 3, [False, False, True])
    assert [(s.row, s.prompt_positions, s.unmasked) for s in first] == [(5, 2, 1), (6, 2, 1)]
    # row 6 finished its block at step 0: untouched at step 1, not reported again
    second = rows.update(0, 1, 8, tokens, [[False] * 4, [False, False, False, True], [True] * 4],
                         [False, False, True])
    assert [s.row for s in second] == [5]
    third = rows.update(1, 0, 12, tokens, [[True, False, True, True]] * 3, [False, False, True])
    assert [(s.row, s.prompt_positions) for s in third] == [(5, 0), (6, 0)]


def render(view: UnmaskingView) -> str:
    console = Console(record=True, width=120, color_system=None)
    console.print(view.render())
    return console.export_text()


class _Digits:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


def test_view_draws_the_block_being_denoised():
    view = UnmaskingView(_Digits(), console=Console(file=io.StringIO()))
    view.on_text(0, "1 2")
    view.on_step(UnmaskingStep(0, 1, 0, 8, [3, 0, 0, 7], [False, True, True, False], 0))
    status, line = render(view).splitlines()
    assert status == "block 1 · step 1 · 2 of 4 masked" and line == f"1 2 ⟦ 3 {MASK_CELL} {MASK_CELL} 7 ⟧"
    view.on_step(UnmaskingStep(0, 1, 1, 8, [3, 5, 6, 7], [False, False, False, False], 0))
    assert render(view).splitlines()[-1] == "1 2 ⟦ 3 5 6 7 ⟧"
    view.on_step(UnmaskingStep(1, 1, 1, 8, [0, 0, 0, 0], [True] * 4, 0))  # another row: not drawn
    view.on_text(0, " 3 5 6 7")
    assert render(view).strip() == "1 2 3 5 6 7"  # the finished block joined the answer
    view.on_step(UnmaskingStep(0, 0, 0, 4, [1, 2, 9, 0], [False, False, False, True], 2))
    assert render(view).splitlines()[0] == "block 0 · step 1 · 1 of 2 masked"  # prompt positions aside


def test_cli_show_unmasking(art, capsys):
    assert generate_main([str(art), "sort: 5 9 1 3 8", "--show-unmasking", "--threshold", "0.999",
                          "--remasking", "low_confidence_static"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == "1 3 5 8 9"  # the last frame: the answer alone
    assert "[stop]" in captured.err
    with pytest.raises(SystemExit):
        generate_main([str(art), "x", "--show-unmasking", "--json"])
    assert "--json" in capsys.readouterr().err
