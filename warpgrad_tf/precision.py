"""Precision by capability: a bfloat16 policy only where the hardware computes in bfloat16.

Under a ``mixed_bfloat16`` / ``bfloat16`` Keras policy the convolutions run in bfloat16. CPUs with bf16
instructions (``avx512_bf16`` or ``amx_bf16`` on x86, ``bf16`` on Arm, as ``/proc/cpuinfo`` lists them) and
accelerators (GPU, TPU) run that natively; elsewhere oneDNN / Eigen emulate it with conversions and it is
much slower than float32 (a run on an AVX2-only CPU was stopped after minutes, issue 33).
:func:`supported_dtype` keeps any other policy unchanged and replaces an unsupported bfloat16 one by
``"float32"`` with a one-line reason. The hardware is read unless passed, so tests inject flag sets.
"""

from __future__ import annotations

__all__ = ["BF16_CPU_FLAGS", "bfloat16_support", "cpu_flags", "supported_dtype", "visible_accelerators"]

#: ``/proc/cpuinfo`` flags (x86 ``flags``, Arm ``Features``) of native bfloat16 arithmetic.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's feature flags as a frozenset (first processor of ``cpuinfo``), or ``None`` if unreadable."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return frozenset(value.split())
    except OSError:
        return None
    return None


def visible_accelerators():
    """Device types of the GPUs and TPUs TensorFlow sees."""
    import tensorflow as tf

    return [d.device_type for kind in ("GPU", "TPU") for d in tf.config.list_physical_devices(kind)]


def bfloat16_support(flags=None, accelerators=None):
    """``(supported, reason)``: whether bfloat16 compute is native here; ``flags`` default to
    :func:`cpu_flags`, ``accelerators`` (device types) to TensorFlow's visible GPUs and TPUs."""
    accelerators = visible_accelerators() if accelerators is None else list(accelerators)
    if accelerators:
        return True, f"an accelerator is visible ({accelerators[0]})"
    flags = cpu_flags() if flags is None else frozenset(flags)
    if flags is None:
        return False, "the CPU's flags cannot be read (/proc/cpuinfo) and no GPU or TPU is visible"
    native = [f for f in BF16_CPU_FLAGS if f in flags]
    if native:
        return True, f"the CPU has bf16 instructions ({', '.join(native)})"
    return False, f"the CPU has no bf16 instructions (none of {', '.join(BF16_CPU_FLAGS)}) and no GPU or TPU is visible"


def supported_dtype(dtype, flags=None, accelerators=None):
    """``(dtype to use, note or None)``: ``dtype`` itself unless it is a bfloat16 policy this machine cannot
    run natively, then ``"float32"`` and a one-line note saying why (arguments as :func:`bfloat16_support`)."""
    name = getattr(dtype, "name", dtype)
    if not isinstance(name, str) or "bfloat16" not in name:
        return dtype, None
    supported, reason = bfloat16_support(flags, accelerators)
    if supported:
        return dtype, None
    return "float32", f"dtype policy {name!r} falls back to float32: {reason} (bfloat16 would be emulated, slower)"
