"""A test-only ``_core.Engine`` that runs the step graphs' math with PyTorch, on CPU or on a CUDA GPU.

The ONNX step graphs are traced from ``sdar_export.model.SDARModel``; this engine calls that same
network directly (as ``sdar_export.onnx_export.StepGraph`` does for each graph kind), so its logits
and K/V match the ONNX Runtime engine's to float32 rounding (~1e-6) at the same dtype.

It works on whatever memory the C++ core binds:

* host buffers (``bindings.device_memory`` False): every address is wrapped as a numpy array over
  the raw memory (ctypes) and handed to torch with ``torch.from_numpy`` -- no copy;
* CUDA buffers (``device_memory`` True): every address is wrapped by a tiny object exposing
  ``__cuda_array_interface__`` and handed to ``torch.as_tensor(..., device="cuda")`` -- no copy.

Each buffer is wrapped once, in ``bind``, as raw bytes and then viewed with its element type
(bfloat16 has no numpy type, so the byte view is what makes it uniform). A ``run`` slices the
cache prefix ``[0, past_len)`` as the past, runs the network, and copies the new K/V into rows
``[past_len, past_len + tokens)`` and the logits into the bound logits buffer, in place.

On CUDA the work is enqueued on the core's stream when the bindings carry one (``stream``, an
int ``cudaStream_t``) through ``torch.cuda.ExternalStream``, so it is ordered with the core's own
kernels without a host synchronisation; without a stream the engine synchronises the device
before reading and after writing, which is correct (if slower) whatever stream the core uses.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sdar_export.model import SDARModel, build_model, to_torch_dtype
from sdar_rt import _core

_ELEMENT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class _CudaBytes:
    """``nbytes`` bytes of device memory at ``address``, in the CUDA Array Interface (v3) form."""

    def __init__(self, address: int, nbytes: int):
        # No "stream" key: torch must not synchronise on wrapping; ordering is the engine's job.
        self.__cuda_array_interface__ = {
            "shape": (nbytes,),
            "typestr": "|u1",
            "data": (address, False),  # (pointer, read_only)
            "strides": None,
            "version": 3,
        }


def _host_bytes(address: int, nbytes: int) -> torch.Tensor:
    """A writable uint8 tensor over ``nbytes`` of host memory at ``address`` (no copy)."""
    raw = (ctypes.c_uint8 * nbytes).from_address(address)
    return torch.from_numpy(np.ctypeslib.as_array(raw))


def wrap_buffer(
    address: int, shape: tuple[int, ...], dtype: torch.dtype, *, device: torch.device
) -> torch.Tensor:
    """The buffer at ``address`` as a contiguous tensor of ``shape`` and ``dtype``, sharing its memory."""
    if address == 0:
        raise ValueError("the core bound a null address")
    nbytes = int(np.prod(shape, dtype=np.int64)) * torch.empty(0, dtype=dtype).element_size()
    if device.type == "cuda":
        raw = torch.as_tensor(_CudaBytes(address, nbytes), device=device)
    else:
        raw = _host_bytes(address, nbytes)
    tensor = raw.view(dtype).view(shape)
    assert tensor.data_ptr() == address, "wrapping must not copy"
    return tensor


class TorchStepEngine(_core.Engine):
    """``_core.Engine`` running ``SDARModel`` with torch on the core's own buffers.

    ``model_dir``: the Hugging Face checkpoint the artifact was exported from. ``dtype``: weight
    and K/V cache dtype (must equal the artifact's, which is what the core allocates the cache in).
    ``device``: "cpu" (host buffers) or "cuda" / "cuda:N" (device buffers).
    """

    def __init__(self, model_dir: str | Path, *, dtype: str = "float32", device: str = "cpu"):
        super().__init__()
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = to_torch_dtype(dtype)
        self.model: SDARModel = build_model(model_dir, dtype=dtype).to(self.device)
        self.run_count = 0
        self.runs_by_kind: dict[str, int] = {"prefill": 0, "decode": 0, "fused": 0}
        self._bound = False
        self._stream: torch.cuda.ExternalStream | None = None

    # ------------------------------------------------------------------ bind
    def bind(self, b: Any) -> None:
        """Checks the bindings against the model and wraps every buffer once (no copies)."""
        cfg = self.model.config
        on_device = self.device.type == "cuda"
        if bool(b.device_memory) != on_device:
            where = "device" if b.device_memory else "host"
            raise ValueError(
                f"the core bound {where} memory but this TorchStepEngine runs on {self.device}; "
                f"construct it with device={'cuda' if b.device_memory else 'cpu'!r}"
            )
        expected = {
            "num_layers": cfg.num_hidden_layers,
            "num_kv_heads": cfg.num_key_value_heads,
            "head_dim": cfg.head_dim,
            "vocab_size": cfg.vocab_size,
        }
        for name, want in expected.items():
            if getattr(b, name) != want:
                raise ValueError(f"bindings.{name} = {getattr(b, name)} but the checkpoint has {want}")
        kv_dtype = _ELEMENT_DTYPES.get(b.kv_dtype)
        if kv_dtype != self.dtype:
            raise ValueError(f"the core's K/V cache is {b.kv_dtype}; the engine was built with {self.dtype}")
        B, KVH, D = b.batch, b.num_kv_heads, b.head_dim
        row_bytes = B * KVH * D * torch.empty(0, dtype=kv_dtype).element_size()
        if b.row_bytes != row_bytes:
            raise ValueError(f"bindings.row_bytes = {b.row_bytes}, expected {row_bytes} for [B, KVH, D] rows")

        self.batch, self.block_length = B, b.block_length
        dev = self.device
        # input_ids: a run over T tokens reads [B, T] from the start, so wrap the capacity flat.
        self._ids = wrap_buffer(b.input_ids, (B * b.ids_capacity,), torch.int64, device=dev)
        self._ids_capacity = b.ids_capacity
        self._logits = wrap_buffer(b.logits, (B, b.block_length, b.vocab_size), torch.float32, device=dev)
        cache_shape = (b.max_context, B, KVH, D)
        self._keys = [wrap_buffer(a, cache_shape, kv_dtype, device=dev) for a in b.key_cache]
        self._values = [wrap_buffer(a, cache_shape, kv_dtype, device=dev) for a in b.value_cache]
        self._max_context = b.max_context
        stream = int(getattr(b, "stream", 0) or 0)  # cudaStream_t of the core (GPU path), if given
        self._stream = torch.cuda.ExternalStream(stream, device=dev) if on_device and stream else None
        self._bound = True

    # ------------------------------------------------------------------ run
    def run(self, kind: Any, past_len: int, tokens: int) -> None:
        """One forward pass over ``tokens`` new positions after ``past_len`` cached rows, in place."""
        if not self._bound:
            raise RuntimeError("run() before bind()")
        L = self.block_length
        num_logits = 0 if kind == _core.GraphKind.Prefill else L
        expected = {_core.GraphKind.Decode: L, _core.GraphKind.Fused: 2 * L}.get(kind, tokens)
        if tokens != expected:
            raise ValueError(f"{_core.graph_name(kind)} graph run over {tokens} tokens (block length {L})")
        if tokens <= 0 or tokens % L or tokens > self._ids_capacity or past_len % L:
            raise ValueError(f"bad step: past_len={past_len}, tokens={tokens}, block length {L}")
        if past_len < 0 or past_len + tokens > self._max_context:
            raise ValueError(f"rows [{past_len}, {past_len + tokens}) exceed max_context {self._max_context}")

        if self.device.type == "cuda":
            if self._stream is None:
                torch.cuda.synchronize(self.device)  # whatever the core enqueued is finished
                self._forward(kind, past_len, tokens, num_logits)
                torch.cuda.synchronize(self.device)  # our writes are visible to the core
            else:
                with torch.cuda.stream(self._stream):  # ordered with the core's kernels
                    self._forward(kind, past_len, tokens, num_logits)
        else:
            self._forward(kind, past_len, tokens, num_logits)
        self.run_count += 1
        self.runs_by_kind[_core.graph_name(kind)] += 1

    def _forward(self, kind: Any, past_len: int, tokens: int, num_logits: int) -> None:
        B, dev = self.batch, self.device
        ids = self._ids[: B * tokens].view(B, tokens)  # contiguous [B, T] at the start (row stride T)
        past_keys = [k[:past_len] for k in self._keys]  # the valid prefix, in place
        past_values = [v[:past_len] for v in self._values]
        # SDARModel builds its positions and mask with torch factory functions that take no
        # device: the device context puts them next to the weights.
        with torch.no_grad(), torch.device(dev):
            past = torch.tensor([past_len], dtype=torch.int64, device=dev)
            logits, present_keys, present_values = self.model(
                ids, past, past_keys, past_values, self.block_length, num_logits
            )
            rows = slice(past_len, past_len + tokens)
            for cache, present in zip(self._keys + self._values, present_keys + present_values, strict=True):
                cache[rows].copy_(present)  # present is [T, B, KVH, D] in the cache dtype
            if logits is not None:
                self._logits.copy_(logits)
