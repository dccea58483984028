"""Every option of ``sdar-export``, its default and its checks, in one place (:class:`ExportOptions`).

The object is built once, from the command line (:meth:`ExportOptions.from_args`) or from Python
(``ExportOptions(model_dir=..., dtype="float16", ...)``), and checked when it is built: a bad value
or a combination that cannot work fails before anything is read. The checks that need the
checkpoint's config (the context length against ``max_position_embeddings``, the defaults derived
from it) are :meth:`ExportOptions.for_config`. No torch import here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .errors import ExportError

DEFAULT_BLOCK_LENGTH = 4
DTYPE_ALIASES = {"fp16": "float16", "fp32": "float32", "bf16": "bfloat16"}
DTYPES = ("float32", "float16", "bfloat16")
ENGINES = ("onnx", "trt")
# Where a bfloat16 artifact runs, in the words every message about it uses (the exporter's, the
# runtime's engines'): the flags it names are sdar-export's own.
BF16_RUNS_ON = ("a bfloat16 artifact runs on TensorRT only (engine 'trt', on an NVIDIA GPU): ONNX Runtime's "
                "CPU provider and the native CPU engine have no bfloat16 kernels; for them export in float32 "
                "(sdar-export's default, no dtype flag) or with --fp16")
# What only applies to a quantized export (--int4 / --int8), by its command-line name.
_QUANT_ONLY = {"group_size": "--group-size", "quant_format": "--quant-format",
               "quantize_embeddings": "--quantize-embeddings", "quantize_lm_head": "--quantize-lm-head",
               "lm_head_bits": "--lm-head-bits", "accuracy_level": "--accuracy-level", "awq": "--awq"}


@dataclass(frozen=True)
class ExportOptions:
    """The options of one export. ``model_dir`` is a checkpoint directory, or an existing artifact when
    only the TensorRT engines are built (``engine="trt"``)."""

    model_dir: Path
    out_dir: Path | None = None
    dtype: str = "float32"                 # float32 | float16 | bfloat16 (weights, activations, K/V cache)
    block_length: int = DEFAULT_BLOCK_LENGTH
    max_context: int | None = None         # None: min(4096, max_position_embeddings), whole blocks
    batch: int = 1
    engine: str = "onnx"                   # onnx | trt (also build the TensorRT plan)
    opset: int = 18
    prefill_chunk: int | None = None       # None: 256 tokens (whole blocks, at most max_context)
    validate: bool = True
    force: bool = False
    workspace_mb: int = 2048
    tolerance: tuple[float, float] | None = None
    quiet: bool = False
    verbose: bool = False
    quantize: str | None = None            # None | int4 | int8
    group_size: int | None = None
    symmetric: bool = True
    quant_format: str | None = None        # MatMulNBits | QDQ (default by engine)
    quantize_embeddings: bool = False
    quantize_lm_head: bool = False
    accuracy_level: int | None = None
    awq: bool = False
    calibration: Path | None = None
    lm_head_bits: int | None = None
    cpu_engine: bool = True
    report: Path | None = None             # write the export report (stages, memory, files) as JSON

    def __post_init__(self) -> None:
        set_ = object.__setattr__        # frozen: normalise the fields once, here
        set_(self, "model_dir", Path(self.model_dir))
        for name in ("out_dir", "calibration", "report"):
            if getattr(self, name) is not None:
                set_(self, name, Path(getattr(self, name)))
        set_(self, "dtype", DTYPE_ALIASES.get(self.dtype, self.dtype))
        if self.engine not in ENGINES:
            raise ExportError(f"--engine must be 'onnx' or 'trt', got {self.engine!r}")
        if self.dtype not in DTYPES:
            raise ExportError(f"dtype must be float32, float16 or bfloat16, got {self.dtype!r}")
        if self.quantize is None:
            given = [flag for field, flag in _QUANT_ONLY.items() if getattr(self, field) not in (None, False)]
            if given or not self.symmetric:
                raise ExportError("--group-size, --asymmetric, --quant-format, --quantize-embeddings, "
                                  "--quantize-lm-head, --lm-head-bits, --accuracy-level and --awq only apply "
                                  "to a quantized export; add --int4 or --int8.")
        else:
            self.scheme()   # its own checks (sdar_export.quantize.make_scheme)
        if self.calibration is not None and not self.awq:
            raise ExportError("--calibration only applies with --awq (RTN needs no calibration); add --awq.")
        if self.block_length <= 0:
            raise ExportError(f"--block-length must be positive, got {self.block_length}")
        if self.batch <= 0:
            raise ExportError(f"--batch must be positive, got {self.batch}")
        if self.opset < 17:
            raise ExportError(f"--opset {self.opset} is too old; use 17 or newer (18 is the default).")

    @classmethod
    def from_args(cls, a) -> ExportOptions:
        """From ``sdar_export.cli.parser()``'s namespace."""
        return cls(model_dir=a.model_dir, out_dir=a.output,
                   dtype="float16" if a.fp16 else "bfloat16" if a.bf16 else "float32",
                   block_length=a.block_length, max_context=a.max_context, batch=a.batch, engine=a.engine,
                   opset=a.opset, prefill_chunk=a.prefill_chunk, validate=not a.skip_validate, force=a.force,
                   workspace_mb=a.workspace_mb, tolerance=tuple(a.tolerance) if a.tolerance else None,
                   quiet=a.quiet, verbose=a.verbose,
                   quantize="int4" if a.int4 else "int8" if a.int8 else None, group_size=a.group_size,
                   symmetric=a.symmetric, quant_format=a.quant_format,
                   quantize_embeddings=a.quantize_embeddings, quantize_lm_head=a.quantize_lm_head,
                   accuracy_level=a.accuracy_level, awq=a.awq, calibration=a.calibration,
                   lm_head_bits=a.lm_head_bits, cpu_engine=a.cpu_engine, report=a.report)

    def scheme(self):
        """The quantization scheme (sdar_export.quantize.QuantScheme), or None."""
        if self.quantize is None:
            return None
        from .quantize import DEFAULT_ACCURACY_LEVEL, make_scheme  # noqa: PLC0415  (no torch)

        level = DEFAULT_ACCURACY_LEVEL if self.accuracy_level is None else self.accuracy_level
        return make_scheme(self.quantize, self.group_size, self.symmetric, self.quant_format, self.engine,
                           self.quantize_embeddings, self.quantize_lm_head, level, self.dtype,
                           method="awq" if self.awq else "rtn", lm_head_bits=self.lm_head_bits)

    @property
    def compute_dtype(self) -> str:
        """The matmuls' dtype: bfloat16 storage computes in float32 (ONNX Runtime's CPU provider has no
        bfloat16 kernels, so such a graph could not be validated or run on CPU)."""
        return "float32" if self.dtype == "bfloat16" else self.dtype

    def for_config(self, cfg) -> ExportOptions:
        """The options with the config-dependent defaults filled in and checked against ``cfg``."""
        L = self.block_length
        max_context = self.max_context
        if max_context is None:
            max_context = min(4096, cfg.max_position_embeddings)
            max_context -= max_context % L
        chunk = self.prefill_chunk
        if chunk is None:
            chunk = max(L, min(256, max_context) // L * L)
        if max_context <= 0:
            raise ExportError(f"--max-context must be positive, got {max_context}")
        if max_context % L:
            raise ExportError(f"--block-length {L} does not divide --max-context {max_context}; use a max "
                              f"context that is a multiple of the block length, e.g. "
                              f"{max(L, max_context // L * L)}.")
        if max_context > cfg.max_position_embeddings:
            raise ExportError(f"--max-context {max_context} exceeds the model's max_position_embeddings "
                              f"{cfg.max_position_embeddings} (config.json).")
        if chunk <= 0 or chunk % L or chunk > max_context:
            raise ExportError(f"--prefill-chunk {chunk} must be a positive multiple of the block length {L} "
                              f"and at most --max-context {max_context}.")
        return dataclasses.replace(self, max_context=max_context, prefill_chunk=chunk)

    def output_dir(self) -> Path:
        """Where the artifact goes: ``-o``, or next to the checkpoint, named by dtype and weights."""
        if self.out_dir is not None:
            return self.out_dir
        suffix = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[self.dtype]
        if self.quantize is not None:
            suffix += f"-{self.quantize}"
        return self.model_dir.parent / f"{self.model_dir.name}-sdar_rt-{suffix}"

    def checked_output_dir(self) -> Path:
        """:meth:`output_dir`, refused when it exists (without ``force``) or is the checkpoint itself."""
        out = self.output_dir()
        if out.exists() and not self.force:
            raise ExportError(f"{out} already exists; pass --force to overwrite it (or choose another -o).")
        if out.resolve() == self.model_dir.resolve():
            raise ExportError(f"output {out} is the checkpoint directory itself; choose another -o.")
        return out
