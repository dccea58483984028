"""``sdar-chat MODEL_OR_ARTIFACT``: an interactive multi-turn chat in the terminal.

Every turn continues one ``Conversation`` (``gen.session()``), so the earlier turns stay in the KV
cache and only the new message is prefilled. The reply is printed block by block as it is decoded.
Lines are edited and recalled with readline (history kept in the cache directory). Ctrl-C stops the
reply being written and keeps the conversation as it was before that message; Ctrl-D or ``/exit``
leaves. A checkpoint dir or Hub id is exported into the artifact cache first, as sdar-demo does.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .artifact import ArtifactError
from .artifact_cache import cache_root
from .cli import _add_decoding_args, _decoding_kwargs, _err, ensure_artifact, ensure_checkpoint, reported

HELP = """commands:
  /reset            forget the conversation (the system prompt stays)
  /system TEXT      start over with TEXT as the system prompt (/system alone: none)
  /stats            tokens, NFE, TPF, tok/s and cache reuse of the last reply
  /unmasking on|off draw each denoising step of the block being decoded
  /help             this text
  /exit             leave (or Ctrl-D); Ctrl-C stops a reply and keeps the conversation"""


class Chat:
    """The chat's state: the generator, the conversation, the decoding settings, the last reply."""

    def __init__(self, gen, system: str | None, decoding: dict, chat: bool | None, step_delay: float = 0.0):
        self.gen = gen
        self.step_delay = step_delay
        self.system = system
        self.decoding = decoding
        self.chat = chat
        self.unmasking = False
        self.last = None  # the last finished reply's GenerationOutput
        self.conversation = self._new_conversation()

    def _new_conversation(self):
        return self.gen.session(system=self.system, chat=self.chat)

    # ------------------------------------------------------------------ commands
    def command(self, line: str) -> bool:
        """Runs a /command; False when the chat ends."""
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        if name in ("exit", "quit"):
            return False
        if name == "help":
            print(HELP)
        elif name == "reset":
            self.conversation = self._new_conversation()
            print("[conversation reset]")
        elif name == "system":
            self.system = arg or None
            self.conversation = self._new_conversation()
            print(f"[system prompt {'set' if arg else 'removed'}; conversation reset]")
        elif name == "stats":
            print(self.stats_line() if self.last is not None else "[no reply yet]")
        elif name == "unmasking" and arg in ("on", "off"):
            self.unmasking = arg == "on"
            print(f"[unmasking view {arg}]")
        else:
            print(f"[unknown command {line.split()[0]!r}; /help lists them]")
        return True

    def stats_line(self) -> str:
        s, out = self.last.stats, self.last
        seconds = s.get("total_seconds", 0.0)
        tokens = s.get("tokens_generated", 0)
        rate = tokens / seconds if seconds > 0 else 0.0
        return (
            f"[{out.finish_reason}] {tokens} tokens in {seconds:.2f} s ({rate:.1f} tok/s), "
            f"NFE {s.get('nfe', 0)} (prefill {s.get('nfe_prefill', 0)}, denoise {s.get('nfe_denoise', 0)}, "
            f"commit {s.get('nfe_commit', 0)}, fused {s.get('nfe_fused', 0)}), TPF {s.get('tpf', 0.0):.2f}, "
            f"{s.get('cached_tokens', 0)} prompt tokens reused from the KV cache"
        )

    # ------------------------------------------------------------------ a turn
    def reply(self, message: str) -> None:
        """Generates the reply to ``message``, printed as it is decoded. Ctrl-C stops it; the
        conversation then stays as it was before ``message``."""
        cap = self.decoding["max_new_tokens"]
        # Ctrl-C from the moment the message is sent, its encoding included, stops only this turn
        try:
            room = self.gen.artifact.max_context - self.conversation.prompt_length(message)
            if room <= 0:
                print(f"[the conversation fills the context ({self.gen.artifact.max_context} tokens); "
                      "/reset starts a new one]")
                return
            kwargs = dict(self.decoding, max_new_tokens=min(cap, room))
            reply = self._reply_with_view if self.unmasking else self._reply_streamed
            out = reply(message, kwargs)
        except KeyboardInterrupt:
            print("\n[stopped; the conversation continues from before this message]", flush=True)
            return
        self.last = out
        if out.finish_reason == "length":
            print(f"[the reply reached --max-new-tokens {cap}]" if room > cap else
                  "[the reply reached the end of the context; /reset starts a new conversation]")

    def _reply_streamed(self, message: str, kwargs: dict):
        pause = {"on_step": lambda step: time.sleep(self.step_delay)} if self.step_delay > 0 else {}
        pieces = self.conversation.stream(message, **pause, **kwargs)
        try:
            for piece in pieces:
                sys.stdout.write(piece)
                sys.stdout.flush()
        finally:
            with _sigint_ignored():  # a second Ctrl-C cannot cut short stopping the decoding thread
                pieces.close()
        sys.stdout.write("\n")
        return self.conversation.last_output

    def _reply_with_view(self, message: str, kwargs: dict):
        from .unmasking_view import UnmaskingView

        with UnmaskingView(self.gen.tokenizer, delay=self.step_delay) as view:
            return self.conversation.send(message, on_text=view.on_text, on_step=view.on_step, **kwargs)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _line_editing() -> None:
    """Line editing and a history that persists across chats, where readline exists (not on Windows)."""
    try:
        import readline
    except ImportError:
        return
    import atexit

    history = cache_root() / "chat_history"
    with contextlib.suppress(OSError):
        readline.read_history_file(history)
    readline.set_history_length(1000)

    def save() -> None:
        with contextlib.suppress(OSError):
            history.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(history)

    atexit.register(save)


def _load(a: argparse.Namespace):
    """The Generator of the artifact, or of the checkpoint / Hub id exported into the cache."""
    target = a.model
    if (Path(target).expanduser() / "manifest.json").is_file():
        art = Path(target).expanduser()
    else:
        art = ensure_artifact(ensure_checkpoint(target, a.revision), None, a.fp16)
    from .generator import Generator

    return Generator(art, engine=a.engine, device=a.device, threads=a.threads)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdar-chat", description="Chat with an SDAR model in the terminal.",
                                epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="artifact dir, HF SDAR checkpoint dir, or Hub id such as "
                                 "JetLM/SDAR-1.7B-Chat (a checkpoint is exported into the artifact cache)")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--revision", default=None, help="with a Hub id: the branch, tag or commit to fetch")
    p.add_argument("--fp16", action="store_true", help="export a checkpoint in float16")
    p.add_argument("--step-delay", type=float, default=0.0,
                   help="seconds to pause after each denoising step, to watch the decoding (default 0)")
    _add_decoding_args(p)
    p.set_defaults(max_new_tokens=512)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    a = p.parse_args(argv)
    if a.step_delay < 0:
        p.error(f"--step-delay must be >= 0, got {a.step_delay}")
    decoding = _decoding_kwargs(a)
    chat_flag = decoding.pop("chat")
    return reported("sdar-chat", lambda: _session(a, decoding, chat_flag))


def _session(a: argparse.Namespace, decoding: dict, chat_flag: bool | None) -> int:
    """Loads the model, then reads messages until Ctrl-D or /exit."""
    gen = _load(a)
    chat = Chat(gen, a.system, decoding, chat_flag, a.step_delay)
    _line_editing()
    _err(f"sdar-chat: {gen.artifact.path.name}, block length {gen.artifact.block_length}. "
         "Type a message; /help lists the commands, Ctrl-D leaves.")
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:  # at the prompt: a fresh line, as in a shell
            print()
            continue
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not chat.command(line):
                return 0
            continue
        try:
            chat.reply(line)
        except (ArtifactError, ValueError, RuntimeError) as exc:  # e.g. the context is full
            print(f"[error: {exc}]", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
