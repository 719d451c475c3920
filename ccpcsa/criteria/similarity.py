"""Pairwise similarity of channel maps — QSFM's measure (:mod:`ccpcsa.criteria.qsfm`), all pairs at once.

For maps ``x`` (N, C, H, W) the similarity ``S_ij`` of every pair of channels, averaged over the images:

- **SSIM** (default; Wang, Bovik, Sheikh, Simoncelli, IEEE TIP 13(4), 2004). Each map is first scaled
  to its dynamic range, ``x ← (x − min x) / (max x − min x)`` per image and channel (a constant map
  becomes 0), so ``L = 1``, ``C1 = (0.01 L)²``, ``C2 = (0.03 L)²``. Local statistics use an 11×11
  Gaussian window (σ = 1.5), evaluated at every pixel with the window restricted to the map (weights
  renormalised over in-bounds pixels, i.e. ``blur(x)/blur(1)``, which is separable)::

      μ_i = G⋆x_i,   σ_i² = G⋆x_i² − μ_i²,   σ_ij = G⋆(x_i x_j) − μ_i μ_j
      SSIM_ij = mean_p  (2 μ_i μ_j + C1)(2 σ_ij + C2) / ((μ_i² + μ_j² + C1)(σ_i² + σ_j² + C2))

  All pairs are computed at once: per-channel moments by one blur, the cross term ``G⋆(x_i x_j)`` for
  a chunk of rows ``i`` and all columns ``j ≥ i`` as a batched outer product over channels followed by
  the blur as matrix products (``G_H · X · G_Wᵀ``, or one Kronecker matrix for maps ≤ 100 pixels) —
  no Python loop over pairs; chunks bound the memory.
- **PSNR** on the same scaled maps: ``PSNR_ij = 10 log10(1 / MSE_ij)`` with
  ``MSE_ij = mean_p (x_i − x_j)²`` from a batched Gram matrix; identical maps give MSE = 0, capped at
  ``max_db`` (100 dB). Its similarity is ``S = min(PSNR, max_db) / max_db ∈ [0, 1]``.
- Maps without spatial extent (inputs of Linear layers, 1×1 maps) use the same formulas with
  statistics over the batch instead of a window (one "map" of N samples per channel and batch).
"""

from __future__ import annotations

import torch

SSIM_K1 = 0.01
SSIM_K2 = 0.03
MAX_PSNR_DB = 100.0
_KRON_MAX_PIXELS = 100


# --------------------------------------------------------------------------------------------- kernels
def gaussian_matrix(n: int, window: int = 11, sigma: float = 1.5, device: torch.device | str | None = None) -> torch.Tensor:
    """(n, n) 1-D Gaussian filter restricted to the signal: ``G[p, q] = g(q − p) / Σ_{q'} g(q' − p)`` for
    ``|q − p| ≤ window // 2`` (0 elsewhere), ``g(d) = exp(−d² / 2σ²)``; rows sum to 1."""
    i = torch.arange(n, dtype=torch.float64)
    d = i[:, None] - i[None, :]
    g = torch.exp(-(d**2) / (2 * sigma**2)) * (d.abs() <= window // 2)
    return (g / g.sum(1, keepdim=True)).float().to(device)


def scale_to_range(x: torch.Tensor, dims: tuple[int, ...] = (2, 3)) -> torch.Tensor:
    """``(x − min) / (max − min)`` over ``dims`` (per image and channel for maps); a (numerically) constant
    map becomes 0. Makes the maps' dynamic range L = 1 and the similarity invariant to ``a·x + b``, a > 0."""
    mn = x.amin(dim=dims, keepdim=True)
    mx = x.amax(dim=dims, keepdim=True)
    rng = mx - mn
    ok = rng > 1e-6 * (1 + torch.maximum(mx.abs(), mn.abs()))
    return torch.where(ok, (x - mn) / torch.where(ok, rng, torch.ones_like(rng)), torch.zeros_like(x))


class _Blur:
    """Normalised Gaussian blur of (…, H, W) maps as matrix products, ``scale · G_H · X · G_Wᵀ``. Rows of
    ``G`` sum to 1, so a constant added to ``X`` comes out unchanged (used to fold SSIM's constants)."""

    def __init__(self, h: int, w: int, window: int, sigma: float, device: torch.device, scale: float = 1.0) -> None:
        self.h, self.w = h, w
        gh = gaussian_matrix(h, window, sigma, device)
        gw = gaussian_matrix(w, window, sigma, device)
        self.gh = gh * scale
        self.gw_t = gw.T.contiguous()
        # small maps: one (HW × HW) matrix, K[(p,q),(p',q')] = G_H[p,p'] G_W[q,q'], is faster than two passes
        self.kron_t = (torch.kron(gh, gw) * scale).T.contiguous() if h * w <= _KRON_MAX_PIXELS else None

    def __call__(self, t: torch.Tensor, out: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
        """Blur contiguous ``t`` into ``out`` (same shape), using ``tmp`` (same numel) as scratch."""
        h, w = self.h, self.w
        if self.kron_t is not None:
            torch.mm(t.view(-1, h * w), self.kron_t, out=out.view(-1, h * w))
            return out
        torch.mm(t.reshape(-1, w), self.gw_t, out=tmp.view(-1, w))
        b = tmp.numel() // (h * w)
        torch.bmm(self.gh.expand(b, h, h), tmp.view(b, h, w), out=out.view(b, h, w))
        return out


def ssim_sums(x: torch.Tensor, window: int = 11, sigma: float = 1.5, chunk_elements: int = 1 << 22) -> torch.Tensor:
    """Σ over images of the mean SSIM of every pair of channel maps of ``x`` (N, C, H, W): (C, C) float64.

    Maps are scaled to their dynamic range first (:func:`scale_to_range`); see the module docstring for
    the formula. Only the upper triangle (j ≥ i) is computed, chunked so that each work buffer holds about
    ``chunk_elements`` values; the result is symmetric with SSIM_ii = 1.
    """
    x = scale_to_range(x.detach().float()).contiguous()
    n, c, h, w = x.shape
    hw = h * w
    dev = x.device
    blur = _Blur(h, w, window, sigma, dev)
    blur2 = _Blur(h, w, window, sigma, dev, scale=2.0)
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    scratch = torch.empty_like(x)
    mu = blur(x, torch.empty_like(x), scratch)
    var = blur(x * x, torch.empty_like(x), scratch).sub_(mu * mu)
    a = (mu * mu).add_(c1 / 2)  # den_l = a_i + a_j
    b = var.add_(c2 / 2)  # den_cs = b_i + b_j
    out = torch.zeros(c, c, dtype=torch.float64, device=dev)
    per_image_row = c * hw
    nb = max(1, min(n, chunk_elements // per_image_row))
    rows = max(1, min(c, chunk_elements // (nb * per_image_row)))
    cap = nb * rows * c * hw
    bufs = [torch.empty(cap, device=dev) for _ in range(4)]
    c1_t = torch.tensor(c1, device=dev)
    half_c12 = torch.tensor((c1 + c2) / 2, device=dev)
    for b0 in range(0, n, nb):
        b1 = min(n, b0 + nb)
        xb, mub, ab, bb = x[b0:b1], mu[b0:b1], a[b0:b1], b[b0:b1]
        k = b1 - b0
        for i0 in range(0, c, rows):
            i1 = min(c, i0 + rows)
            ci, cj = i1 - i0, c - i0
            m = k * ci * cj * hw
            shape = (k, ci, cj, h, w)
            p, e, t, u = (buf[:m].view(shape) for buf in bufs)
            torch.addcmul(half_c12, xb[:, i0:i1, None], xb[:, None, i0:], out=p)  # x_i x_j + (C1 + C2)/2
            blur2(p, e, u)  # 2 G⋆(x_i x_j) + C1 + C2
            torch.addcmul(c1_t, mub[:, i0:i1, None], mub[:, None, i0:], value=2, out=t)  # A = 2 μ_i μ_j + C1
            e.sub_(t)  # B = 2 σ_ij + C2 = 2 G⋆(x_i x_j) + C1 + C2 − A
            t.mul_(e)  # A·B
            torch.add(ab[:, i0:i1, None], ab[:, None, i0:], out=e)
            torch.add(bb[:, i0:i1, None], bb[:, None, i0:], out=u)
            e.mul_(u)
            t.div_(e)
            out[i0:i1, i0:] += t.view(k, ci * cj, hw).sum(2).sum(0).view(ci, cj).double()
    out /= hw
    return torch.triu(out) + torch.triu(out, 1).T


def psnr_sums(x: torch.Tensor, max_db: float = MAX_PSNR_DB, chunk_elements: int = 1 << 22) -> torch.Tensor:
    """Σ over images of ``PSNR_ij = 10 log10(1 / MSE_ij)`` of every pair of range-scaled channel maps of
    ``x`` (N, C, H, W), ``MSE_ij = (‖x_i‖² + ‖x_j‖² − 2⟨x_i, x_j⟩) / HW`` from a batched Gram matrix;
    MSE is floored at ``10^(−max_db/10)`` so identical maps give ``max_db`` instead of ∞. (C, C) float64."""
    xs = scale_to_range(x.detach().float()).flatten(2)  # (N, C, HW)
    n, c, hw = xs.shape
    floor = 10 ** (-max_db / 10)
    out = torch.zeros(c, c, dtype=torch.float64, device=x.device)
    nb = max(1, chunk_elements // max(1, c * c))
    for b0 in range(0, n, nb):
        v = xs[b0:b0 + nb].double()
        gram = v @ v.transpose(1, 2)
        sq = gram.diagonal(dim1=1, dim2=2)
        mse = ((sq[:, :, None] + sq[:, None, :] - 2 * gram) / hw).clamp_min(floor)
        out += (-10 * torch.log10(mse)).sum(0)
    return out


def global_ssim(v: torch.Tensor) -> torch.Tensor:
    """SSIM of every pair of channels of ``v`` (N, C) with statistics over the N samples (no window),
    each channel scaled to its dynamic range over the batch: (C, C) float64."""
    v = scale_to_range(v.detach().double(), dims=(0,))
    n = v.shape[0]
    mu = v.mean(0)
    cov = v.T @ v / n - torch.outer(mu, mu)
    var = cov.diagonal()
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    num = (2 * torch.outer(mu, mu) + c1) * (2 * cov + c2)
    den = (mu[:, None] ** 2 + mu[None, :] ** 2 + c1) * (var[:, None] + var[None, :] + c2)
    return num / den


def global_psnr(v: torch.Tensor, max_db: float = MAX_PSNR_DB) -> torch.Tensor:
    """PSNR of every pair of channels of ``v`` (N, C) over the N samples, range-scaled per channel, capped at ``max_db``."""
    v = scale_to_range(v.detach().double(), dims=(0,))
    gram = v.T @ v
    sq = gram.diagonal()
    mse = ((sq[:, None] + sq[None, :] - 2 * gram) / v.shape[0]).clamp_min(10 ** (-max_db / 10))
    return -10 * torch.log10(mse)


def pairwise_similarity(x: torch.Tensor, metric: str = "ssim", window: int = 11, sigma: float = 1.5,
                        max_db: float = MAX_PSNR_DB) -> torch.Tensor:
    """Mean over images of the pairwise similarity of ``x``'s channel maps: SSIM, or PSNR in dB (see
    :func:`ssim_sums`, :func:`psnr_sums`); (N, C) inputs use :func:`global_ssim` / :func:`global_psnr`."""
    if x.dim() == 2:
        return global_ssim(x) if metric == "ssim" else global_psnr(x, max_db)
    s = ssim_sums(x, window, sigma) if metric == "ssim" else psnr_sums(x, max_db)
    return s / x.shape[0]
