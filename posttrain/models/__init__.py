"""Models: the embedded tiny model and one loading path for tiny and real checkpoints."""

from posttrain.models.load import (
    ModelNotFoundError,
    apply_adapter,
    count_parameters,
    enable_checkpointing,
    load_model,
    load_model_and_tokenizer,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from posttrain.models.tiny import build_tiny, build_tokenizer, resolve_builtin, tiny_config

__all__ = [
    "ModelNotFoundError", "apply_adapter", "build_tiny", "build_tokenizer", "count_parameters",
    "enable_checkpointing", "load_model", "load_model_and_tokenizer", "load_tokenizer",
    "resolve_builtin", "resolve_device", "resolve_dtype", "tiny_config",
]
