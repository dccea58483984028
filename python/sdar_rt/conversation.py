"""Conversations whose earlier turns stay in the KV cache: ``gen.session()``.

A ``Conversation`` keeps the token history of a chat (or of a raw text continued turn by turn): the
model's own reply tokens as generated, and every new message encoded and appended. Each turn runs
``generate(prompt_ids=history, reuse_cache=True)``, so it prefills only what the KV cache does not
hold yet, and its tokens are exactly those of a fresh ``generate(prompt_ids=history)``.

How the cache is shared: the Generator has one KV cache (``batch`` rows x ``max_context``
positions) for every call. A conversation owns nothing in it. The C++ core records, after every
call, which token ids each cache row's committed prefix holds (every finished block but the last
one; a failed call leaves nothing recorded), and a turn reuses the longest prefix of its history
that is a whole number of blocks and matches that record token for token. When another call (an
ordinary ``generate()``, another conversation) ran in between, it overwrote the row: the turn then
reuses only what still matches, a shared system prompt for instance, and recomputes the rest. So
interleaving costs time, never correctness. ``out.stats["cached_tokens"]`` says how many prompt
positions a turn took from the cache.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from . import _core

if TYPE_CHECKING:
    from .generator import GenerationOutput, Generator

_OWN_KEYWORDS = ("prompt", "prompt_ids", "chat", "num_samples", "reuse_cache", "independent_rows")
_KEPT = ("stop", "length")  # finish reasons of a turn that enters the history


class ConversationBusyError(RuntimeError):
    """A conversation's turn was started while another turn of it was running in another thread."""


class Conversation:
    """One chat (``chat=True``, the default when the tokenizer has a chat template) or one raw token
    stream (``chat=False``) whose turns reuse the KV cache.

    ``send(content, **kw)`` adds a user message (raw: appends the text), generates the reply with
    ``Generator.generate``'s keywords and returns its ``GenerationOutput``; ``stream(content, **kw)``
    yields the reply's text per finished block. A turn enters the history when it ends by a stop or
    by its length; a cancelled turn (a stream closed early, ``cancel`` set) or a failed one (e.g. over
    ``max_context``) leaves the conversation as it was.
    """

    def __init__(
        self,
        generator: Generator,
        *,
        system: str | None = None,
        messages: list[dict] | None = None,
        chat: bool | None = None,
    ):
        tok = generator.tokenizer
        self._gen = generator
        self._chat = tok.chat_template is not None if chat is None else bool(chat)
        if self._chat and tok.chat_template is None:
            raise ValueError("this tokenizer has no chat template; use gen.session(chat=False) for raw text")
        if not self._chat and (system is not None or messages):
            raise ValueError("system and messages need the chat template; leave chat unset or True")
        if system is not None and not isinstance(system, str):
            raise ValueError(f"system must be a string, got {type(system).__name__}")
        history = [] if messages is None else list(messages)
        if not all(isinstance(m, dict) and "role" in m and "content" in m for m in history):
            raise ValueError("messages must be dicts with 'role' and 'content'")
        self._messages: list[dict] = [{"role": "system", "content": system}] if system is not None else []
        self._messages += [dict(m) for m in history]
        self._ids: list[int] = []
        self._text: str | None = None  # chat: the rendered text whose encoding is self._ids
        if self._messages:  # the prefix is known now: the first turn continues from its tokens
            self._text = tok.apply_chat_template(self._messages, add_generation_prompt=False)
            self._ids = tok.encode(self._text)
        self._busy = threading.Lock()
        self.last_output: GenerationOutput | None = None

    @property
    def messages(self) -> list[dict]:
        """The chat so far (system, user and assistant messages)."""
        return [dict(m) for m in self._messages]

    @property
    def token_ids(self) -> list[int]:
        """The token history: what a fresh ``generate(prompt_ids=...)`` of the next turn starts with."""
        return list(self._ids)

    def prompt_length(self, content: str) -> int:
        """The number of tokens the next turn's prompt (the history and ``content``) would have: what
        ``max_new_tokens`` must leave room for within the artifact's max_context."""
        return len(self._prompt(content, {})[0])

    def fork(self) -> Conversation:
        """A new conversation with this one's history; both continue on their own from here."""
        other = Conversation(self._gen, chat=self._chat)
        other._messages = [dict(m) for m in self._messages]
        other._ids, other._text = list(self._ids), self._text
        return other

    def send(self, content: str, **kwargs: Any) -> GenerationOutput:
        """Adds ``content`` and generates the reply (``Generator.generate`` keywords)."""
        with self._turn():
            ids, state = self._prompt(content, kwargs)
            try:
                out = self._gen.generate(prompt_ids=ids, reuse_cache=True, **kwargs)
            except _core.ContextOverflowError as exc:
                raise self._overflow(exc) from exc
            self._commit(state, out)
            return out

    def stream(self, content: str, **kwargs: Any) -> Iterator[str]:
        """Adds ``content`` and yields the reply's text per finished block; the GenerationOutput is the
        iterator's return value and ``self.last_output``. Closing it early cancels the turn."""
        with self._turn():
            ids, state = self._prompt(content, kwargs)
            try:
                out = yield from self._gen.stream(prompt_ids=ids, reuse_cache=True, **kwargs)
            except _core.ContextOverflowError as exc:
                raise self._overflow(exc) from exc
            self._commit(state, out)
            return out

    # ------------------------------------------------------------------ helpers
    @contextmanager
    def _turn(self):
        if not self._busy.acquire(blocking=False):
            raise ConversationBusyError(
                "this Conversation is already generating a turn in another thread; a conversation is one "
                "sequence of turns: wait for that turn to end, or use conversation.fork() or gen.session() "
                "for a parallel one"
            )
        try:
            yield
        finally:
            self._busy.release()

    def _prompt(self, content: str, kwargs: dict) -> tuple[list[int], tuple]:
        for name in _OWN_KEYWORDS:
            if name in kwargs:
                raise ValueError(f"a Conversation sets {name} itself; pass only decoding keywords")
        if not isinstance(content, str):
            raise ValueError(f"content must be a string, got {type(content).__name__}")
        tok = self._gen.tokenizer
        if not self._chat:
            ids = self._ids + tok.encode(content)
            return ids, (ids, None, None)
        messages = self._messages + [{"role": "user", "content": content}]
        text = tok.apply_chat_template(messages)
        if self._text is not None and text.startswith(self._text):
            ids = self._ids + tok.encode(text[len(self._text) :])  # the history's tokens stay as they are
        else:  # the template rewrites earlier turns: encode it all (the cache still reuses what matches)
            ids = tok.encode(text)
        return ids, (ids, messages, text)

    def _commit(self, state: tuple, out: GenerationOutput) -> None:
        self.last_output = out
        if out.finish_reason not in _KEPT:
            return
        tok = self._gen.tokenizer
        # The reply's own tokens, unless a stop string cut its text: then the text's encoding.
        reply_ids = out.token_ids if tok.decode(out.token_ids) == out.text else tok.encode(out.text)
        ids, messages, text = state
        self._ids = ids + list(reply_ids)
        if messages is not None:
            self._messages = messages + [{"role": "assistant", "content": out.text}]
            self._text = text + out.text

    def _overflow(self, exc: Exception) -> Exception:
        return _core.ContextOverflowError(
            f"{exc}. This conversation holds {len(self._ids)} tokens: continue it with a lower "
            "max_new_tokens, or start a new one with gen.session()"
        )
