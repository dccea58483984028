"""sdar_rt: a compiled runtime for SDAR block-diffusion language models.

    from sdar_rt import Generator
    gen = Generator("artifact_dir")
    print(gen.generate("Hello").text)

``sdar_rt.artifact`` is pure Python (the exporter imports it); everything that needs the compiled
core (``sdar_rt._core``) is imported on first use.
"""

from .artifact import MANIFEST_FORMAT_VERSION, ArtifactError, load_artifact, validate_manifest, write_manifest

__version__ = "0.1.0"

_LAZY = {
    "Generator": ("generator", "Generator"),
    "GenerationOutput": ("generator", "GenerationOutput"),
    "Conversation": ("conversation", "Conversation"),
    "ConversationBusyError": ("conversation", "ConversationBusyError"),
    "UnmaskingStep": ("unmasking", "UnmaskingStep"),
    "SdarError": ("_core", "SdarError"),
    "EngineError": ("_core", "EngineError"),
    "InvalidArgumentError": ("_core", "InvalidArgumentError"),
    "ContextOverflowError": ("_core", "ContextOverflowError"),
}

__all__ = [
    "ArtifactError",
    "ContextOverflowError",
    "Conversation",
    "ConversationBusyError",
    "EngineError",
    "GenerationOutput",
    "Generator",
    "InvalidArgumentError",
    "MANIFEST_FORMAT_VERSION",
    "SdarError",
    "UnmaskingStep",
    "load_artifact",
    "validate_manifest",
    "write_manifest",
    "__version__",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sdar_rt' has no attribute {name!r}")
