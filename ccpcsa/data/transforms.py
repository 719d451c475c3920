"""Batch-level tensor transforms: uint8 NHWC → normalized float NCHW, and training augmentation.

Everything works on whole batches with tensor ops (no per-sample Python loop) and on any device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (so (seed, epoch) pairs never collide like seed+epoch)."""
    entropy = [int(v) & 0xFFFF_FFFF_FFFF_FFFF for v in values]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _as_uint8_nhwc(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    return x


def normalization_params(
    mean: Sequence[float], std: Sequence[float], device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(scale, bias)`` of shape (1, 3, 1, 1) with ``x_uint8 * scale + bias == (x/255 - mean)/std``.

    ``mean`` and ``std`` are 3 per-channel values in [0, 1] pixel units; ``std`` must be positive.
    """
    m = torch.as_tensor(list(mean), dtype=torch.float64)
    s = torch.as_tensor(list(std), dtype=torch.float64)
    if m.shape != (3,) or s.shape != (3,) or bool((s <= 0).any()):
        raise ValueError(f"mean and std must be 3 values each with std > 0, got mean={mean} std={std}")
    scale = (1.0 / (255.0 * s)).to(torch.float32).view(1, 3, 1, 1).to(device)
    bias = (-m / s).to(torch.float32).view(1, 3, 1, 1).to(device)
    return scale, bias


def normalize_batch(
    images_uint8_nhwc: np.ndarray | torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    channels_last: bool = False,
) -> torch.Tensor:
    """Convert uint8 RGB images ``(N, H, W, 3)`` to float32 ``(N, 3, H, W)`` normalized as ``(x/255 - mean)/std``.

    Runs on the device of the input tensor (numpy input is processed on CPU). The result is
    contiguous NCHW, or ``torch.channels_last`` memory format if ``channels_last`` (same shape).
    Raises ValueError for a wrong dtype/shape or bad mean/std.
    """
    x = _as_uint8_nhwc(images_uint8_nhwc)
    scale, bias = normalization_params(mean, std, x.device)
    return _normalize(x, scale, bias, channels_last)


def _normalize(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, channels_last: bool) -> torch.Tensor:
    # permute(0, 3, 1, 2) of an NHWC tensor *is* channels_last NCHW; .to() and in-place ops keep it.
    out = x.permute(0, 3, 1, 2).to(torch.float32).mul_(scale).add_(bias)
    if channels_last:
        return out.contiguous(memory_format=torch.channels_last)
    return out.contiguous()


def augment_batch(
    images_uint8_nhwc: torch.Tensor,
    generator: torch.Generator | None = None,
    pad: int = 4,
    flip: bool = True,
) -> torch.Tensor:
    """Random ``pad``-pixel crop and random horizontal flip of a uint8 NHWC batch (same shape out).

    Padding is zero in *pixel* space (black, like torchvision's ``RandomCrop(padding=4)``), applied
    before normalization. Each image gets its own crop offset in ``[0, 2*pad]`` per axis and a 50 %
    flip. Random numbers come from ``generator`` (a CPU ``torch.Generator``), drawn in a fixed order
    (offsets y, offsets x, flips; :func:`draw_augment`), so a seeded generator gives identical results
    on any device. Equal to ``apply_augment(x, *draw_augment(len(x), generator, pad, flip), pad)``.
    """
    if images_uint8_nhwc.ndim != 4:
        raise ValueError(f"expected an (N, H, W, C) batch, got shape {tuple(images_uint8_nhwc.shape)}")
    params = draw_augment(images_uint8_nhwc.shape[0], generator, pad, flip)
    dev = images_uint8_nhwc.device
    return apply_augment(images_uint8_nhwc, *(p.to(dev) if p is not None else None for p in params), pad=pad)


def draw_augment(
    n: int, generator: torch.Generator | None = None, pad: int = 4, flip: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The random draws of :func:`augment_batch` for ``n`` images, on the CPU, in its fixed order: crop offsets
    ``oy``, ``ox`` (int64 in ``[0, 2*pad]``; None when ``pad == 0``) and the flip mask (bool; None without
    ``flip``). Drawing a whole epoch's batches in a row gives the same numbers as drawing them batch by batch."""
    oy = ox = mask = None
    if n > 0 and pad > 0:
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    if n > 0 and flip:
        mask = torch.rand(n, generator=generator) < 0.5
    return oy, ox, mask


def apply_augment(
    x: torch.Tensor, oy: torch.Tensor | None, ox: torch.Tensor | None, mask: torch.Tensor | None, pad: int = 4
) -> torch.Tensor:
    """Crop a uint8 NHWC batch ``x`` at offsets ``oy``/``ox`` of its ``pad``-padded (black) version and flip the
    images where ``mask`` is set (None: skip that part). The parameters must be on ``x``'s device; everything is
    tensor ops on that device (no host synchronization), so it runs asynchronously on a GPU."""
    if x.ndim != 4:
        raise ValueError(f"expected an (N, H, W, C) batch, got shape {tuple(x.shape)}")
    n, h, w, c = x.shape
    if n == 0:
        return x
    if pad > 0 and oy is not None and ox is not None:
        padded = x.new_zeros((n, h + 2 * pad, w + 2 * pad, c))
        padded[:, pad : pad + h, pad : pad + w] = x
        rows = oy[:, None] + torch.arange(h, device=x.device)  # (n, h)
        cols = ox[:, None] + torch.arange(w, device=x.device)  # (n, w)
        batch = torch.arange(n, device=x.device)[:, None, None]
        x = padded[batch, rows[:, :, None], cols[:, None, :]]  # (n, h, w, c)
    if mask is not None:
        x = torch.where(mask[:, None, None, None], x.flip(2), x)
    return x
