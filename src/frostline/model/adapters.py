"""LoRA adapters as frostline sees them on a layer: support, rank, adapter and base variables.

Keras gives `Dense`, `EinsumDense`, `Embedding` and the convolutions an `enable_lora(rank)`
that adds two small trainable matrices (`lora_*_a`, `lora_*_b`) and freezes the layer's
kernel. These functions only read a layer; `frostline.apply.adapters` changes it.
"""

from __future__ import annotations

import keras

from frostline import _keras

__all__ = ["adapter_variables", "base_variable", "is_quantized", "lora_rank", "lora_unsupported_reason"]


def lora_rank(layer: keras.layers.Layer) -> int | None:
    """The layer's LoRA rank, or None without adapters."""
    return int(layer.lora_rank) if getattr(layer, "lora_enabled", False) and layer.lora_rank else None


def adapter_variables(layer: keras.layers.Layer) -> list[keras.Variable]:
    """The layer's own LoRA adapter variables (`lora_kernel_a`, `lora_embeddings_b`, ...)."""
    if not getattr(layer, "lora_enabled", False):
        return []
    capable, _ = _keras.own_variables(layer)
    return [v for v in capable if v.name.startswith("lora_")]


def base_variable(layer: keras.layers.Layer) -> keras.Variable | None:
    """The variable that LoRA keeps frozen (the kernel or embeddings), or None."""
    return _keras.lora_base_variable(layer)


def is_quantized(variable: keras.Variable) -> bool:
    """Whether a variable holds quantized values (an integer dtype), which never train."""
    dtype = keras.backend.standardize_dtype(variable.dtype)
    return dtype.startswith(("int", "uint"))


def lora_unsupported_reason(layer: keras.layers.Layer) -> str | None:
    """Why `enable_lora` cannot apply to this layer, or None if it can."""
    if not callable(getattr(layer, "enable_lora", None)):
        return "it has no enable_lora (Keras gives LoRA to Dense, EinsumDense, Embedding and convolution layers)"
    if not layer.built:
        return "it is not built yet"
    if getattr(layer, "kernel_constraint", None) or getattr(layer, "embeddings_constraint", None):
        return "it has a kernel constraint, which LoRA cannot keep"
    if getattr(layer, "quantization_mode", None) in ("gptq", "awq"):
        return f"Keras does not support LoRA on {layer.quantization_mode} quantization"
    if base_variable(layer) is None:
        return "frostline cannot find its kernel"
    return None
