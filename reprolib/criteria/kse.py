"""KSE: kernel sparsity and entropy (Li, Lin, Zhang, Liu, Doermann, Wu, Huang, Ji, CVPR 2019, "Exploiting kernel
sparsity and entropy for interpretable CNN compression"; the summary's Section 4.8, which gives only the heading).

KSE judges each INPUT channel c of a conv from the N two-dimensional kernels ``W[:, c]`` that read it (no data):

* kernel sparsity ``s_c = sum_n ||W[n, c]||_1``;
* kernel entropy: for each kernel, ``dm_n`` = the sum of its Euclidean distances to its ``k`` nearest kernels of
  the same channel (itself excluded); with ``p_n = dm_n / sum_n dm_n``, ``e_c = -sum_n p_n log2 p_n``. Kernels
  packed in a few tight clusters give a low entropy, evenly spread kernels a high one;
* both min-max normalised to [0, 1] over the layer's channels, then the indicator
  ``v_c = sqrt(s_c / (1 + alpha * e_c))``, itself min-max normalised.

Constants: ``k = 5`` neighbours, ``alpha = 1``, base-2 logarithm, min-max normalisation of s, e and v: the
authors' released code (``density_entropy`` and ``Conv2d_KSE.KSE`` in github.com/yuchaoli/KSE, which the paper's
formula with alpha = 1 matches). Ours, where the code does not say: a layer whose s (or e, or v) is the same for
every channel normalises to all zeros instead of dividing by zero; a channel whose kernels are all identical
(sum of distances 0) has entropy 0; a layer with N <= k kernels per channel uses its N - 1 neighbours; the
logarithm's base cancels in the min-max normalisation.

KSE then removes the channels whose indicator is below 1/G and clusters the other channels' kernels (G groups,
k-means): only the first part is channel pruning, and it is what the registry ranks (the kernel clustering is
not measured). Registry convention (see ``channels``): filter j of layer ``A`` scores ``v_j`` of the conv that
reads ``A``'s output, so only internal layers are scored.
"""
from __future__ import annotations

import torch

from . import register
from .channels import consumers

NEIGHBOURS, ALPHA = 5, 1.0  # the released code's K and the paper's alpha (1 in the code)


def kernel_sparsity(weight: torch.Tensor) -> torch.Tensor:
    """``s_c``: the L1 norm of all kernels reading input channel c. ``weight`` [N, C, kh, kw] -> [C]."""
    w = torch.as_tensor(weight).detach().double()
    if w.dim() != 4:
        raise ValueError(f"KSE needs a conv weight [N, C, kh, kw], got shape {tuple(w.shape)}")
    return w.abs().sum((0, 2, 3))


def kernel_entropy(weight: torch.Tensor, k: int = NEIGHBOURS) -> torch.Tensor:
    """``e_c``: entropy (bits) of the normalised k-nearest-neighbour distance sums of channel c's N kernels."""
    w = torch.as_tensor(weight).detach().double()
    if w.dim() != 4:
        raise ValueError(f"KSE needs a conv weight [N, C, kh, kw], got shape {tuple(w.shape)}")
    if k < 1:
        raise ValueError(f"k (nearest neighbours) must be >= 1, got {k}")
    n, c = w.shape[:2]
    kernels = w.permute(1, 0, 2, 3).reshape(c, n, -1)                    # [C, N, kh*kw]
    if n < 2:
        return torch.zeros(c, dtype=torch.float64)
    d = torch.cdist(kernels, kernels, compute_mode="donot_use_mm_for_euclid_dist")  # [C, N, N], exact
    d = d + torch.diag_embed(torch.full((c, n), torch.inf, dtype=d.dtype))         # a kernel is not its neighbour
    dm = d.topk(min(k, n - 1), dim=2, largest=False).values.sum(2)                 # [C, N]
    total = dm.sum(1, keepdim=True)
    p = torch.where(total > 0, dm / total.clamp_min(1e-300), torch.zeros_like(dm))
    return -(torch.where(p > 0, p * torch.log2(p.clamp_min(1e-300)), torch.zeros_like(p))).sum(1)


def _minmax(v: torch.Tensor) -> torch.Tensor:
    lo, hi = v.min(), v.max()
    return (v - lo) / (hi - lo) if hi > lo else torch.zeros_like(v)


def indicator(weight: torch.Tensor, k: int = NEIGHBOURS, alpha: float = ALPHA) -> torch.Tensor:
    """The KSE indicator ``v_c`` of every input channel of a conv weight, in [0, 1] (higher = keep)."""
    s = _minmax(kernel_sparsity(weight))
    e = _minmax(kernel_entropy(weight, k))
    return _minmax(torch.sqrt(s / (1 + alpha * e)))


@register("kse")
def kse(model, layers, batches=None, *, k: int = NEIGHBOURS, alpha: float = ALPHA):
    """KSE indicator (Li et al. 2019) of the input channels of the conv that reads each layer's filters, as the
    layer's filter scores (data-free). Layers must be internal (``channels.internal_layers``)."""
    return {name: indicator(model.get_submodule(c).weight, k, alpha).float()
            for name, c in consumers(model, layers).items()}


kse.input_channels = True  # scores a layer's filters by its consumer's input channels (channels.py)
