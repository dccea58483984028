"""A recording stand-in for TensorRT's Python module (``tensorrt``), for the engine-build tests:
TensorRT cannot be installed on machines without an NVIDIA GPU. It follows the 10.x Python API
as its bindings document it, including the calls that can return None / False (a refused timing
cache, a failed build), so the build's handling of those is exercised. The network inputs come
from the ONNX graph the parser is given (name, shape with -1 for dynamic axes, element type), so
the checks see what TensorRT's parser would report.

It imports nothing outside the ``trt`` extra (onnx) and the standard library: the engine-build
import test runs it in a child process that refuses every other module."""

from __future__ import annotations

import types
import weakref

_DT = types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF", BF16="BF16", INT64="INT64", INT32="INT32",
                            BOOL="BOOL")
_ONNX_TO_TRT = {1: _DT.FLOAT, 10: _DT.HALF, 16: _DT.BF16, 7: _DT.INT64, 6: _DT.INT32, 9: _DT.BOOL}
STRONGLY_TYPED = 5
PLAN = b"PLAN" * 1000


class Recorder:
    """What the build did, and how the stand-in answers (set before the build)."""

    def __init__(self):
        self.version = "10.3.0"
        self.flags = []            # create_network flags
        self.builder_flags = {"tf32"}   # TensorRT's default: TF32 on
        self.profiles = []         # one dict {name: (min, opt, max)} per added profile
        self.shape_inputs = []
        self.shape_tensor_names: set[str] = set()   # parsed inputs reported as shape tensors
        self.inputs = []           # the parsed network's inputs
        self.workspace = None
        self.built = 0
        self.cache_blobs = []      # what create_timing_cache was given
        self.accept_cache = True   # set_timing_cache's answer
        self.cache_available = True   # get_timing_cache returns None when False
        self.stream_writer = False    # 10.14+: build_serialized_network_to_stream
        self.parsers = weakref.WeakSet()   # parsers still alive (they own the ONNX weights)
        self.parsers_alive_at_load = None
        self.fail_build = False


def fake_tensorrt(rec: Recorder, scratch=(3 << 20, 1 << 20, 2 << 20)):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = rec.version
    trt.DataType = _DT

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Tensor:
        def __init__(self, vi):
            dims = vi.type.tensor_type.shape.dim
            self.name = vi.name
            self.shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
            self.dtype = _ONNX_TO_TRT[vi.type.tensor_type.elem_type]
            self.is_shape_tensor = vi.name in rec.shape_tensor_names

    class Network:
        def __init__(self):
            self.inputs = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0
            rec.parsers.add(self)

        def parse_from_file(self, path):
            import onnx  # noqa: PLC0415  (the parser reads the graph's inputs)

            m = onnx.load(path, load_external_data=False)
            self.network.inputs = [Tensor(i) for i in m.graph.input]
            rec.inputs = self.network.inputs
            return True

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

        def set_shape_input(self, name, lo, opt, hi):
            rec.shape_inputs.append(name)
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Cache:
        def serialize(self):
            return b"cache-" + rec.version.encode()

    class Config:
        def __init__(self):
            self.profiles = 0

        def set_memory_pool_limit(self, pool, n):
            rec.workspace = n

        def set_flag(self, f):
            rec.builder_flags.add(f)

        def clear_flag(self, f):
            rec.builder_flags.discard(f)

        def get_flag(self, f):
            return f in rec.builder_flags

        def create_timing_cache(self, b):
            rec.cache_blobs.append(bytes(b))
            return Cache()

        def set_timing_cache(self, c, ignore_mismatch):
            return rec.accept_cache

        def get_timing_cache(self):
            return Cache() if rec.cache_available else None

        def add_optimization_profile(self, p):
            rec.profiles.append(p.shapes)
            self.profiles += 1
            return self.profiles - 1

    class IStreamWriter:
        def __init__(self):
            pass

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            rec.flags.append(flags)
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            rec.built += 1
            return None if rec.fail_build else PLAN

        def build_serialized_network_to_stream(self, network, config, writer):
            rec.built += 1
            if rec.fail_build:
                return False
            return writer.write(PLAN) == len(PLAN)

    if not rec.stream_writer:
        del Builder.build_serialized_network_to_stream

    class Engine:
        num_optimization_profiles = 3

        def get_device_memory_size_for_profile_v2(self, i):
            return scratch[i]

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, buffer):
            assert bytes(buffer[:4]) == b"PLAN"   # the plan on disk, mapped
            rec.parsers_alive_at_load = len(rec.parsers)
            return Engine()

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    if rec.stream_writer:
        trt.IStreamWriter = IStreamWriter
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=STRONGLY_TYPED)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = types.SimpleNamespace(FP16="fp16", BF16="bf16", TF32="tf32")
    return trt
