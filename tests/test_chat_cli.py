"""sdar-chat driven through a pseudo-terminal, as a person types: the installed console script on the
shipped checkpoint's artifact. Every reply must equal the same turn of a Python ``Conversation`` with
the same settings (the CLI's own argument parsing gives both their keywords), the cache reuse that
/stats reports must be the Conversation's, and Ctrl-C must stop a reply without changing the
conversation."""

from __future__ import annotations

import re
import signal

import pexpect  # the test extra
import pytest
from console_scripts import console_command
from sdar_fixtures import packaged_artifact

# The prompt at the start of a line (after the unmasking view, behind the escape that shows the cursor).
PROMPT = r"\r\n(?:\x1b\[[0-9;?]*[A-Za-z])*> "
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Slow enough to press Ctrl-C in the middle of a reply (the shipped model answers within a few steps).
STEP_DELAY = "0.4"


def _as_from_a_terminal() -> None:
    """Run in the child before exec: Ctrl-C as a terminal's shell gives it. A parent started in the
    background without job control (a CI script's `cmd &`) ignores SIGINT, a child inherits that, and
    Python then leaves it ignored, so the Ctrl-C under test would never arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return packaged_artifact(tmp_path_factory)


def _reference(artifact, system=None):
    """A Python Conversation with the settings sdar-chat parses from the same command line."""
    from sdar_rt import Generator
    from sdar_rt.chat_cli import parser
    from sdar_rt.cli import _decoding_kwargs

    kwargs = _decoding_kwargs(parser().parse_args([str(artifact), "--max-new-tokens", "48"]))
    kwargs.pop("chat")
    conv = Generator(artifact).session(system=system)
    return lambda message: conv.send(message, **kwargs)


def _turn(chat, line: str) -> str:
    """Sends ``line``; returns what was printed before the next prompt, without the echoed line."""
    chat.sendline(line)
    chat.expect(PROMPT)
    out = ANSI.sub("", chat.before)
    assert out.startswith(line), out
    return out[len(line):].strip()


def _reused(stats_line: str) -> int:
    m = re.search(r"(\d+) prompt tokens reused from the KV cache", stats_line)
    assert m, stats_line
    return int(m.group(1))


def test_chat_turns_reset_system_interrupt_and_exit(artifact, tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "TERM": "xterm", "PATH": "/usr/bin:/bin"}
    cmd, args = console_command("sdar-chat")
    chat = pexpect.spawn(cmd, [*args, str(artifact), "--max-new-tokens", "48", "--step-delay", STEP_DELAY],
                         env=env, encoding="utf-8", timeout=120, dimensions=(40, 200),
                         preexec_fn=_as_from_a_terminal)
    chat.expect(PROMPT)
    assert "/help" in chat.before  # the banner

    ref = _reference(artifact)
    t1, t2 = ref("sort: 5 9 1 3"), ref("sort: 3 1 2")
    assert t1.finish_reason == t2.finish_reason == "stop"
    assert _turn(chat, "sort: 5 9 1 3") == t1.text == "1 3 5 9"
    assert _reused(_turn(chat, "/stats")) == 0
    assert _turn(chat, "sort: 3 1 2") == t2.text
    stats = _turn(chat, "/stats")
    assert _reused(stats) == t2.stats["cached_tokens"] > 0  # the first turn came from the cache
    assert f"NFE {t2.stats['nfe']} " in stats and f"TPF {t2.stats['tpf']:.2f}" in stats

    # Ctrl-C once the reply has begun: the reply stops, the conversation stays as it was.
    chat.sendline("sort: 9 8 7 6 5 4 3 2 1 0 9 8")
    chat.expect_exact("sort: 9 8 7 6 5 4 3 2 1 0 9 8\r\n")  # the terminal's echo of the line
    chat.expect(r"\d")  # the first finished block is on the screen
    chat.sendintr()
    chat.expect_exact("[stopped; the conversation continues from before this message]")
    chat.expect(PROMPT)
    assert _turn(chat, "/stats") == stats  # still the last finished reply's
    t3 = ref("sort: 4 2 8")
    assert _turn(chat, "sort: 4 2 8") == t3.text

    sys_ref = _reference(artifact, system="you sort digits")
    assert _turn(chat, "/system you sort digits") == "[system prompt set; conversation reset]"
    s1 = sys_ref("sort: 7 1")
    assert _turn(chat, "sort: 7 1") == s1.text
    assert _turn(chat, "/reset") == "[conversation reset]"  # the system prompt stays
    assert _turn(chat, "sort: 7 1") == s1.text

    assert _turn(chat, "/unmasking on") == "[unmasking view on]"
    assert sys_ref("sort: 6 0").text in _turn(chat, "sort: 6 0")  # the view's last frame is the answer
    assert _turn(chat, "/unmasking off") == "[unmasking view off]"
    assert "unknown command '/bogus'" in _turn(chat, "/bogus")
    too_long = "sort: " + " ".join("7" * 300)
    assert "fills the context (256 tokens); /reset starts a new one" in _turn(chat, too_long)
    assert "/system TEXT" in _turn(chat, "/help")

    chat.sendeof()
    chat.expect(pexpect.EOF)
    chat.close()
    assert chat.exitstatus == 0


def test_chat_exit_command_and_bad_target(artifact, tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "TERM": "xterm", "PATH": "/usr/bin:/bin"}
    cmd, args = console_command("sdar-chat")
    chat = pexpect.spawn(cmd, [*args, str(artifact)], env=env, encoding="utf-8", timeout=120)
    chat.expect(PROMPT)
    chat.sendline("/exit")
    chat.expect(pexpect.EOF)
    chat.close()
    assert chat.exitstatus == 0

    missing = tmp_path / "nowhere"
    bad = pexpect.spawn(cmd, [*args, str(missing)], env=env, encoding="utf-8", timeout=120)
    bad.expect(pexpect.EOF)
    bad.close()
    assert bad.exitstatus == 2
    lines = [ln for ln in bad.before.splitlines() if ln.strip()]
    assert lines[-1].startswith("sdar-chat: error: ") and "Traceback" not in bad.before, bad.before


def test_generate_reads_the_prompt_from_stdin_and_takes_a_system_prompt(artifact, tmp_path):
    import json
    import subprocess

    from sdar_rt import Generator

    cmd, args = console_command("sdar-generate")
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}

    def run(*extra: str, stdin: str) -> dict:
        r = subprocess.run([cmd, *args, str(artifact), *extra, "--json", "--max-new-tokens", "32"],
                           input=stdin, capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    gen = Generator(artifact)
    piped = run("-", stdin="sort: 8 3 5\n")  # the text as read, trailing newline included
    assert piped["token_ids"] == gen.generate("sort: 8 3 5\n", max_new_tokens=32).token_ids
    with_system = run("-", "--system", "you sort digits", stdin="sort: 8 3 5")
    messages = [{"role": "system", "content": "you sort digits"}, {"role": "user", "content": "sort: 8 3 5"}]
    assert with_system["token_ids"] == gen.generate(messages, max_new_tokens=32).token_ids
    assert run("sort: 8 3 5", stdin="")["text"] == gen.generate("sort: 8 3 5", max_new_tokens=32).text
    r = subprocess.run([cmd, *args, str(artifact), "x", "--system", "s", "--no-chat"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 2 and "--system needs the chat template" in r.stderr
