"""Child process of test_interrupt.py: long generations that the parent interrupts with real SIGINTs.

    python interrupt_child.py MODE ARTIFACT ROUNDS

MODE: generate | stream, with the artifact's ONNX Runtime engine (``-ort``) or a C++ engine that never
enters Python, as TensorRT (``-cpp``). Per round it prints ``go``, starts a generation far longer than
the parent waits, and on KeyboardInterrupt checks that the Generator is usable (the same tokens as
before the interrupts, no decoding thread left) and prints ``ok <engine passes>``. The last round is
not caught: the process must then exit by the KeyboardInterrupt (status -SIGINT), never abort.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading
import time

faulthandler.register(signal.SIGUSR1, all_threads=True)  # the parent asks for the stacks of a hang
# A process started in the background by a non-interactive shell inherits SIGINT as ignored, and
# Python then installs no Ctrl-C handler: install Python's own, as in a terminal.
signal.signal(signal.SIGINT, signal.default_int_handler)

from sdar_rt import Generator, _core, load_artifact  # noqa: E402

PROMPT = "Once upon a time"
SHORT = dict(max_new_tokens=12, chat=False)
LONG = dict(max_new_tokens=1900, chat=False)


def passes(gen: Generator) -> int:
    return gen.engine.calls if isinstance(gen.engine, _core.SyntheticEngine) else -1


def long_run(gen: Generator, mode: str) -> None:
    if mode.startswith("generate"):
        gen.generate(PROMPT, **LONG)
        return
    pieces = gen.stream(PROMPT, **LONG)
    try:
        for _ in pieces:
            time.sleep(0.001)  # the consumer's own work: Ctrl-C lands here or inside the iterator
    except KeyboardInterrupt:
        pieces.close()  # what the CLI does; an iterator left open is stopped at exit (last round)
        raise


def check_usable(gen: Generator, reference: list[int]) -> None:
    again = gen.generate(PROMPT, **SHORT).token_ids
    assert again == reference, (again, reference)
    for thread in threading.enumerate():
        if thread.name == "sdar-stream":
            thread.join(timeout=10)
            assert not thread.is_alive(), "a decoding thread outlived its stream"


def main() -> None:
    mode, artifact, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode.endswith("-cpp"):
        engine = _core.SyntheticEngine(mask_id=load_artifact(artifact).mask_id, pass_seconds=0.002)
        gen = Generator(artifact, engine=engine)
    else:
        gen = Generator(artifact, threads=1)
    reference = gen.generate(PROMPT, **SHORT).token_ids
    for i in range(rounds):
        print("go", flush=True)
        before = passes(gen)
        if i == rounds - 1:
            long_run(gen, mode)  # not caught: the interpreter exits by the KeyboardInterrupt
        try:
            long_run(gen, mode)
        except KeyboardInterrupt:
            made = passes(gen) - before
            check_usable(gen, reference)
            print(f"ok {made}", flush=True)
        else:
            print("finished without an interrupt", flush=True)
            return


if __name__ == "__main__":
    main()
