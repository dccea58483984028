"""Ctrl-C and cancellation, with real SIGINTs sent to child processes.

For every interrupt: the process never aborts; in a Python session, KeyboardInterrupt arrives while the
call runs (with a C++ engine, which never enters Python, long before the call would have ended) and the
Generator afterwards generates the same tokens as before; at exit the status is that of a
KeyboardInterrupt (-SIGINT for Python, 130 for sdar-generate). The delay before each signal varies, so
it lands in the prefill, between and inside denoising steps, in the block callback and in the
consumer's own code; some runs get a second SIGINT right after the first, as `timeout -s INT` sends
and as an impatient user does.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROUNDS = 20
CHILD = Path(__file__).with_name("interrupt_child.py")
PROMPT = "Once upon a time"
# A background shell starts children with SIGINT ignored; install Python's handler, as a terminal has it.
CLI = (
    "import signal, sys\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "from sdar_rt.cli import generate_main\n"
    "sys.exit(generate_main())\n"
)


@pytest.fixture(scope="module")
def long_artifact(tmp_path_factory) -> Path:
    """A tiny random model with room for a 1900-token call (seconds of work on a CPU)."""
    pytest.importorskip("torch")
    from sdar_export.cli import export
    from sdar_export.make_checkpoint import make_checkpoint

    root = tmp_path_factory.mktemp("long")
    make_checkpoint(root / "ck", preset="tiny", seed=0, max_position_embeddings=2048)
    # Only the length matters here; export validation is tested elsewhere.
    return export(root / "ck", root / "art", max_context=2048, skip_validate=True, quiet=True)


def delay(i: int) -> float:
    return 0.005 * (i % 12)  # 0-55 ms after the child starts the call


def interrupt(proc: subprocess.Popen, twice: bool) -> None:
    proc.send_signal(signal.SIGINT)
    if twice:
        time.sleep(0.002)
        proc.send_signal(signal.SIGINT)


def fail(proc: subprocess.Popen, why: str) -> None:
    proc.send_signal(signal.SIGUSR1)  # interrupt_child.py prints every thread's stack
    time.sleep(1)
    proc.kill()
    _, err = proc.communicate()
    pytest.fail(f"{why}\nchild stderr:\n{err.decode()}")


def read(proc: subprocess.Popen, line: bool, what: str) -> str:
    """One line (or, line=False, the first bytes) of the child's stdout, failing after 60 s."""
    fd, data, end = proc.stdout.fileno(), b"", time.monotonic() + 60
    while not data or (line and not data.endswith(b"\n")):
        if not select.select([fd], [], [], max(0.0, end - time.monotonic()))[0]:
            fail(proc, f"{what}: nothing from the child for 60 s")
        chunk = os.read(fd, 1 if line else 4096)
        if not chunk:
            break
        data += chunk
    return data.decode()


def finish(proc: subprocess.Popen, what: str) -> str:
    """The child's stderr once it has exited; a child that hangs fails the test with its stacks."""
    try:
        return proc.communicate(timeout=60)[1].decode()
    except subprocess.TimeoutExpired:
        fail(proc, f"{what}: still running 60 s after the interrupt")


@pytest.mark.parametrize("mode", ["generate-ort", "generate-cpp", "stream-ort", "stream-cpp"])
def test_ctrl_c_during_a_call(long_artifact, mode):
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), mode, str(long_artifact), str(ROUNDS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    passes = []
    try:
        for i in range(ROUNDS):
            if (line := read(proc, True, f"round {i}")) != "go\n":
                fail(proc, f"round {i}: expected 'go', got {line!r}")
            time.sleep(delay(i))
            last = i == ROUNDS - 1
            interrupt(proc, twice=last and mode.startswith("stream"))
            if not last:
                if not (reply := read(proc, True, f"round {i}")).startswith("ok "):
                    fail(proc, f"round {i}: expected 'ok', got {reply!r}")
                passes.append(int(reply.split()[1]))
        err = finish(proc, f"{mode}, last round")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGINT, f"exit status {proc.returncode}\n{err}"
    # (A second SIGINT may land in the interpreter's own shutdown, which reports it and goes on.)
    assert "terminate called" not in err and "KeyboardInterrupt" in err, err
    if mode.endswith("-cpp"):
        # 2 ms per pass and about 480 passes per call: the loop itself saw the signal (a C++
        # engine never runs Python code that could), within a few passes of the 0-55 ms delay.
        assert len(passes) == ROUNDS - 1 and max(passes) < 200, passes


def test_ctrl_c_in_sdar_generate(long_artifact):
    statuses = []
    for i in range(ROUNDS):
        proc = subprocess.Popen(
            [sys.executable, "-c", CLI, str(long_artifact), PROMPT, "--max-new-tokens", "1900", "--no-chat",
             "--threads", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            if not read(proc, False, f"run {i}"):  # streaming has started
                fail(proc, f"run {i}: no output")
            time.sleep(delay(i))
            interrupt(proc, twice=i % 2 == 1)
            text = finish(proc, f"run {i}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert "terminate called" not in text and "sdar-generate: interrupted" in text, text
        statuses.append(proc.returncode)
    assert statuses == [130] * ROUNDS, statuses


def test_cancel_token_stops_a_cpp_engine_in_another_thread():
    """A CancelToken set from another thread ends the call within one engine pass; no Python
    runs in the loop (no callback, a C++ engine), so only the core's own check can see it."""
    import threading

    from sdar_rt import _core

    spec = _core.ModelSpec(num_layers=1, num_kv_heads=1, head_dim=2, vocab_size=64, block_length=4,
                           max_context=4096, mask_id=63, eos_ids=[])
    engine = _core.SyntheticEngine(mask_id=63, pass_seconds=0.002)
    gen = _core.Generator(spec, engine)
    config = _core.GenerationConfig(max_new_tokens=4000)
    token = _core.CancelToken()
    result = {}
    def call() -> None:
        result["out"] = gen.generate([[1, 2, 3]], config, None, cancel=token)

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    time.sleep(0.05)
    token.cancel()
    cancelled_at = engine.calls
    worker.join(timeout=30)
    assert not worker.is_alive()
    out = result["out"]
    assert out.rows[0].finish_reason == "cancelled" and token.cancelled
    assert engine.calls <= cancelled_at + 1  # at most the pass under way when the token was set
    assert out.stats.nfe == engine.calls and engine.calls < 1000  # a whole call: 1001 passes
    expected = [engine.winner(p) for p in range(3, 3 + len(out.rows[0].tokens))]
    assert list(out.rows[0].tokens) == expected  # the finished blocks, untouched


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="reads the threads' names and signal masks from /proc (Linux)")
def test_cpu_engine_workers_leave_ctrl_c_to_the_application():
    """The C++ worker threads start with SIGINT (and the other asynchronous signals) blocked, so that a
    Ctrl-C goes to a thread of the application, where Python runs its handler and where a blocking wait
    is cut short; faults stay unblocked. The thread that built the pool keeps its own mask."""
    from sdar_rt import _core

    def masks() -> dict[int, tuple[str, int]]:
        out = {}
        for task in Path("/proc/self/task").iterdir():
            name = (task / "comm").read_text().strip()
            status = (task / "status").read_text()
            blocked = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("SigBlk:")), 16)
            out[int(task.name)] = (name, blocked)
        return out

    def bit(sig: int) -> int:
        return 1 << (int(sig) - 1)

    own_before = masks()[threading.get_native_id()][1]
    runner = _core.CpuMatmul(threads=3)  # two workers besides the caller
    deadline = time.monotonic() + 10.0  # a worker names itself once it runs: on a busy host, later
    while True:
        threads = masks()
        workers = [blocked for name, blocked in threads.values() if name == "sdar-cpu"]
        if len(workers) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert len(workers) == 2, threads
    for blocked in workers:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1):
            assert blocked & bit(sig), (sig, hex(blocked))
        for sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT):
            assert not blocked & bit(sig), (sig, hex(blocked))
    assert threads[threading.get_native_id()][1] == own_before
    assert not own_before & bit(signal.SIGINT)
    del runner
