"""Tokenizer and chat template of an artifact (Hugging Face ``tokenizers`` + sandboxed jinja2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .artifact import ArtifactError

MASK_TOKEN = "<|MASK|>"


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # {"content": "...", ...} (AddedToken serialisation)
        value = value.get("content")
    return value if isinstance(value, str) else None


_LONG_TEXT = 4096   # characters from which encoding releases the GIL (see Tokenizer.encode)


class Tokenizer:
    """Encodes/decodes text and renders the chat template of ``tokenizer_config.json``."""

    def __init__(self, directory: str | Path, mask_id: int | None = None):
        from tokenizers import Tokenizer as HFTokenizer

        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise ArtifactError(f"{path}: missing; re-export with sdar-export (it copies the tokenizer)")
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as exc:
            raise ArtifactError(f"{path}: cannot be loaded by `tokenizers` ({exc})") from exc
        config: dict = {}
        config_path = directory / "tokenizer_config.json"
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ArtifactError(f"{config_path}: invalid JSON ({exc})") from exc
        template = config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": "..."}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        self.chat_template: str | None = template if isinstance(template, str) else None
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        self.mask_id = self._tok.token_to_id(MASK_TOKEN)
        if self.mask_id is None:
            raise ArtifactError(
                f"{path}: the tokenizer has no {MASK_TOKEN} token; is this an SDAR checkpoint?"
            )
        if mask_id is not None and mask_id != self.mask_id:
            raise ArtifactError(
                f"{path}: {MASK_TOKEN} has id {self.mask_id} but manifest.json says mask_id "
                f"{mask_id}; re-export with sdar-export"
            )
        self._template = None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        if len(text) >= _LONG_TEXT:
            # the same ids; encode_batch lets other threads run meanwhile (encode holds the GIL: a 1 MB
            # prompt held a server's event loop for 0.6 s even from a worker thread)
            return list(self._tok.encode_batch([text], add_special_tokens=False)[0].ids)
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def special_token_id(self, text: str) -> int | None:
        """The id of an added (special) token spelled exactly ``text``, else None."""
        for token_id, token in self._tok.get_added_tokens_decoder().items():
            if token.content == text:
                return token_id
        return None

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template; pass chat=False or a plain prompt")
        if self._template is None:
            from jinja2.exceptions import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message):
                raise TemplateError(message)

            def tojson(value, indent=None, ensure_ascii=False, **_):
                return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)

            env = ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
            )
            env.filters["tojson"] = tojson
            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(self.chat_template)
        return self._template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
            **kwargs,
        )
