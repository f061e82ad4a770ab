"""Whether a device runs 16-bit matrix products natively (and 16-bit training is fast there)."""

from __future__ import annotations

import torch

__all__ = ["has_native_kernels"]

# oneDNN's own checks: AVX-512 BF16 / AVX-512 FP16 or AMX
_CPU_CHECKS = {
    torch.bfloat16: "_is_mkldnn_bf16_supported",
    torch.float16: "_is_mkldnn_fp16_supported",
}


def has_native_kernels(dtype: torch.dtype, device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` runs ``dtype`` matrix products natively.

    16-bit training saves memory everywhere, but it saves time only where the hardware has
    16-bit matrix instructions: on a CPU, AVX-512 BF16 / AVX-512 FP16 or AMX (as oneDNN
    reports them); on a CUDA device, bf16 needs compute capability 8.0 or newer and fp16 runs
    on every device PyTorch supports. Elsewhere PyTorch emulates the 16-bit arithmetic, several
    times slower than float32 (6x for a 256-wide SAC on an AVX2 CPU).

    Args:
        dtype (torch.dtype): ``torch.bfloat16`` or ``torch.float16`` (any other dtype: ``True``).
        device (torch.device or str, optional): ``"cpu"`` or a CUDA device. Defaults to
            ``"cpu"``.

    Returns:
        ``True`` where ``dtype`` matrix products run natively on ``device``.

    Examples:
        >>> import torch
        >>> has_native_kernels(torch.float32)
        True
        >>> isinstance(has_native_kernels(torch.bfloat16, "cpu"), bool)
        True
    """
    device = torch.device(device)
    if dtype not in _CPU_CHECKS:
        return True
    if device.type == "cuda":
        if dtype is torch.bfloat16:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        return True
    try:
        return bool(getattr(torch.ops.mkldnn, _CPU_CHECKS[dtype])())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False
