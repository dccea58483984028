"""The artifact's one weights file (``weights.onnx.data``), shared by every graph as ONNX external data.

Every initializer of 1 KiB or more lives here once, 64-byte aligned; each graph's TensorProto only
names the file, the offset and the length. Tensors arrive one at a time (or in chunks), so the file
is written without the weights ever being in memory together:

* :meth:`WeightStore.add` names a tensor by its content, ``w_<sha256 of dtype, dims, bytes>`` (the
  name :func:`sdar_export.onnx_export.canonicalize_initializers` gives an in-graph tensor), so the
  same weight has the same name in every graph, and equal tensors are stored once;
* :meth:`WeightStore.put` stores a tensor under the name it already has (the quantized forms, the
  rotary tables), once per name.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

FILE_NAME = "weights.onnx.data"
ALIGN = 64
MIN_BYTES = 1024   # smaller tensors stay inside the graph (shapes, scalars, norm weights of tiny models)


# Bytes per element of the ONNX element types the graphs hold (int4 / uint4, two per byte, aside).
ELEMENT_BYTES = {1: 4, 2: 1, 3: 1, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 16: 2, 17: 1}


def tensor_bytes(t) -> int:
    """Bytes of an ONNX TensorProto's data, from its header alone (dims and element type)."""
    n = math.prod(t.dims)
    if t.data_type in (21, 22):        # int4 / uint4: two per byte
        return (n + 1) // 2
    return n * ELEMENT_BYTES.get(t.data_type, 4)


def content_name(data_type: int, dims, chunks: Iterable[bytes]) -> str:
    """``w_<sha256>`` of a tensor's ONNX element type, dims and bytes (in row-major order)."""
    h = hashlib.sha256(f"{data_type}:{list(dims)}:".encode())
    for c in chunks:
        h.update(c)
    return f"w_{h.hexdigest()[:24]}"


def array_name(a: np.ndarray, data_type: int) -> str:
    return content_name(data_type, a.shape, [np.ascontiguousarray(a).tobytes()])


class WeightStore:
    """Appends tensors to the shared weights file and hands out external-data TensorProtos."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / FILE_NAME
        # name -> (offset, length, ONNX element type, dims)
        self.index: dict[str, tuple[int, int, int, tuple[int, ...]]] = {}
        self._f = open(self.path, "wb")  # noqa: SIM115 - held for the export; closed by close()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> WeightStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def bytes_written(self) -> int:
        return self._f.tell()

    def _append(self, chunks: Iterable[bytes], hasher=None) -> tuple[int, int]:
        pad = -self._f.tell() % ALIGN
        if pad:
            self._f.write(b"\0" * pad)
        start = self._f.tell()
        for c in chunks:
            if hasher is not None:
                hasher.update(c)
            self._f.write(c)
        return start, self._f.tell() - start

    def add(self, data_type: int, dims, chunks: Iterable[bytes]):
        """Store a tensor under its content name (once) and return its external TensorProto. The chunks
        are written as they come while the name is computed; a tensor already stored is rolled back."""
        dims = tuple(int(d) for d in dims)
        h = hashlib.sha256(f"{data_type}:{list(dims)}:".encode())
        end = self._f.tell()
        start, length = self._append(chunks, h)
        name = f"w_{h.hexdigest()[:24]}"
        if name in self.index:
            self._f.seek(end)
            self._f.truncate()
        else:
            self.index[name] = (start, length, data_type, dims)
        return self.stub(name)

    def put(self, tensor) -> object:
        """Store an in-memory TensorProto under its own name (the first one wins) and return its stub."""
        if tensor.name not in self.index:
            start, length = self._append([tensor.raw_data])
            self.index[tensor.name] = (start, length, tensor.data_type, tuple(tensor.dims))
        return self.stub(tensor.name)

    def has(self, name: str) -> bool:
        return name in self.index

    def stub(self, name: str):
        """A TensorProto that points at ``name``'s bytes in the weights file."""
        from onnx import TensorProto

        offset, length, data_type, dims = self.index[name]
        t = TensorProto(name=name, data_type=data_type, dims=dims, data_location=TensorProto.EXTERNAL)
        for k, v in (("location", self.path.name), ("offset", str(offset)), ("length", str(length))):
            e = t.external_data.add()
            e.key, e.value = k, v
        return t

    def externalize(self, m) -> None:
        """Move every in-graph initializer of ``MIN_BYTES`` or more of graph ``m`` into the file."""
        for i, t in enumerate(m.graph.initializer):
            if t.data_location != t.EXTERNAL and len(t.raw_data) >= MIN_BYTES:
                m.graph.initializer[i].CopyFrom(self.put(t))


def is_external(t) -> bool:
    from onnx import TensorProto

    return t.data_location == TensorProto.EXTERNAL
