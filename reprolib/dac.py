"""DAC: data-free automatic acceleration (Li, Zhang, Jiang, Qi, Chuah, Bi, WACV 2019, "DAC: Data-free Automatic
Acceleration of Convolutional Networks", arXiv:1812.08374; the summary's Section 6.1, which gives only the heading
of the "Data-Free Pruning" chapter).

DAC is a decomposition, not a filter criterion: it replaces a conv of N filters of k x k x C by a depthwise conv
with r kernels per input channel (r*C kernels of k x k, no BN or activation after it) and a pointwise 1 x 1 conv of
N filters over the r*C maps, with weights computed from the original weights alone. For input channel c, the
N x k^2 matrix of the kernels that read it, ``W[:, c]``, is factored by SVD and truncated to its r leading
components: the depthwise kernels are the right singular vectors, the pointwise weights the left ones times the
singular values. Per channel this is the best rank-r approximation (Eckart-Young); at r = min(N, k^2) the
decomposition is exact. Its FLOPs are ``r/N + r/k^2`` of the conv's (a gain only below 1); the paper
uses r = 1..5 and shows that decomposing late layers costs less accuracy than early ones.

Data-free, checkably: nothing here takes data. ``decompose`` reads only the weights (it never runs the model);
``ranks_for_flops`` runs the model once per candidate on an all-zeros tensor, for the shapes that FLOPs counting
needs. ``forward_audit`` counts the forward passes a block of code makes and how many of them saw a non-zero
input: the experiment records it around DAC (it must be 0).

Rank choice (ours: the paper's experiments fix r, 1 to 5, for the layers they decompose, and we could not check its
full text for a rule that picks r per layer): one threshold ``tau`` on the share of each layer's squared singular
values kept; every decomposable conv takes the smallest r keeping at least ``tau`` of its energy, and is
left whole when that r gives no FLOPs gain. ``ranks_for_flops`` searches tau for a target reduction of true FLOPs.
"""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn as nn

from .counting import count


# --------------------------------------------------------------------------- one conv

def factors(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per input channel c, the SVD of the N x k^2 kernel matrix ``W[:, c]``: ``(U [C, N, q], S [C, q],
    Vh [C, q, k^2])`` in float64, q = min(N, k^2)."""
    _check(conv)
    n, c, kh, kw = conv.weight.shape
    mats = conv.weight.detach().double().permute(1, 0, 2, 3).reshape(c, n, kh * kw)
    return torch.linalg.svd(mats, full_matrices=False)


def _check(conv) -> None:
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"DAC decomposes Conv2d layers, not {type(conv).__name__}")
    if conv.groups != 1:
        raise ValueError(f"DAC decomposes ungrouped convs (this one has groups={conv.groups})")
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise ValueError("DAC here handles numeric zero padding only")


def max_rank(conv: nn.Conv2d) -> int:
    return min(conv.out_channels, conv.kernel_size[0] * conv.kernel_size[1])


def flops_ratio(conv: nn.Conv2d, rank: int) -> float:
    """FLOPs of the decomposed conv over the original's: ``r/N + r/k^2`` (both run at the output resolution)."""
    return rank / conv.out_channels + rank / (conv.kernel_size[0] * conv.kernel_size[1])


def decompose_conv(conv: nn.Conv2d, rank: int, svd=None) -> nn.Sequential:
    """``conv`` as depthwise (``rank`` kernels per input channel, conv's stride / padding / dilation) -> pointwise
    (1 x 1, conv's bias). Exact at ``rank = max_rank(conv)``."""
    _check(conv)
    if not 1 <= rank <= max_rank(conv):
        raise ValueError(f"rank must be in [1, {max_rank(conv)}] for a {tuple(conv.weight.shape)} conv, got {rank}")
    U, S, Vh = factors(conv) if svd is None else svd
    n, c, kh, kw = conv.weight.shape
    like = dict(dtype=conv.weight.dtype, device=conv.weight.device)
    dw = nn.Conv2d(c, c * rank, (kh, kw), conv.stride, conv.padding, conv.dilation, groups=c, bias=False, **like)
    pw = nn.Conv2d(c * rank, n, 1, bias=conv.bias is not None, **like)
    with torch.no_grad():
        dw.weight.copy_(Vh[:, :rank].reshape(c * rank, 1, kh, kw).to(**like))     # output c*rank + i: V_i of channel c
        pw.weight.copy_((U[:, :, :rank] * S[:, None, :rank]).permute(1, 0, 2).reshape(n, c * rank, 1, 1).to(**like))
        if conv.bias is not None:
            pw.bias.copy_(conv.bias)
    return nn.Sequential(dw, pw).train(conv.training)


# --------------------------------------------------------------------------- a network

def decomposable(model: nn.Module) -> list[str]:
    """The convs DAC can shrink: ungrouped, zero-padded, kernels larger than 1 x 1 (a 1 x 1 conv has k^2 = 1)."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.groups == 1 and m.kernel_size[0] * m.kernel_size[1] > 1 \
                and not isinstance(m.padding, str) and m.padding_mode == "zeros":
            out.append(name)
    return out


def energy(conv: nn.Conv2d, svd=None) -> torch.Tensor:
    """Share of the layer's squared singular values kept at rank r = 1..max_rank (cumulative, float64)."""
    S = (factors(conv) if svd is None else svd)[1]
    e = S.pow(2).sum(0).cumsum(0)
    return e / e[-1].clamp_min(1e-300)


def ranks_at(model: nn.Module, tau: float, svds: dict | None = None) -> dict[str, int]:
    """Per decomposable conv, the smallest rank keeping at least ``tau`` of its energy, if it cuts the layer's
    FLOPs (``flops_ratio < 1``); layers left whole are absent."""
    out = {}
    for name in decomposable(model):
        conv = model.get_submodule(name)
        e = energy(conv, None if svds is None else svds[name])
        r = int((e < tau - 1e-12).sum()) + 1
        if r <= max_rank(conv) and flops_ratio(conv, r) < 1:
            out[name] = r
    return out


def decompose(model: nn.Module, ranks: dict[str, int], svds: dict | None = None) -> nn.Module:
    """A copy of ``model`` with each conv named in ``ranks`` replaced by its DAC decomposition at that rank.
    Reads weights only: the model is never run (no data, not even a dummy input)."""
    out = copy.deepcopy(model)
    for name, r in ranks.items():
        conv = out.get_submodule(name)
        new = decompose_conv(conv, r, None if svds is None else svds[name])
        parent, _, attr = name.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, attr, new)
    return out


def ranks_for_flops(model: nn.Module, target: float, input_size=(1, 3, 32, 32)) -> dict:
    """The energy threshold whose ranks remove the share of true FLOPs closest to ``target``: ``{"tau",
    "ranks", "flops_reduction", "evaluations"}``. The FLOPs removed grow as tau falls, so a binary search over the
    thresholds at which some layer's rank changes finds it; each evaluation counts FLOPs on an all-zeros input."""
    if not 0 < target < 1:
        raise ValueError(f"target FLOPs reduction must be in (0, 1), got {target}")
    svds = {n: factors(model.get_submodule(n)) for n in decomposable(model)}
    taus = sorted({round(float(v), 15) for n in svds for v in energy(model.get_submodule(n), svds[n])} | {1.0},
                  reverse=True)                          # high tau (little removed) first
    dense = count(model, input_size)["flops"]
    reached: dict[int, float] = {}

    def reduction(i: int) -> float:
        if i not in reached:
            reached[i] = 1 - count(decompose(model, ranks_at(model, taus[i], svds), svds), input_size)["flops"] / dense
        return reached[i]

    last = len(taus) - 1
    if reduction(last) < target:
        raise ValueError(f"DAC cannot remove {target:.0%} of the FLOPs: at most {reduction(last):.1%} (rank 1 everywhere)")
    lo, hi = 0, last
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reduction(mid) >= target else (mid + 1, hi)
    best = min([i for i in (lo - 1, lo) if i >= 0], key=lambda i: abs(reduction(i) - target))
    return {"tau": taus[best], "ranks": ranks_at(model, taus[best], svds), "flops_reduction": reduction(best),
            "evaluations": len(reached)}


def accelerate(model: nn.Module, target: float, input_size=(1, 3, 32, 32)) -> tuple[nn.Module, dict]:
    """DAC at a FLOPs target: ``(decomposed copy, ranks_for_flops's record)``. No data parameter: there is none."""
    found = ranks_for_flops(model, target, input_size)
    return decompose(model, found["ranks"]), found


@contextlib.contextmanager
def forward_audit(model: nn.Module):
    """Count the forward passes of ``model`` inside the block, and of the copies made from it there (``decompose``
    deep-copies the model, hooks included), and how many had a non-zero input: yields a dict
    ``{"calls": n, "nonzero_inputs": m}`` filled as it goes. A data-free step leaves ``nonzero_inputs`` at 0.
    After the block the hook (and its copies) stops counting."""
    seen = {"calls": 0, "nonzero_inputs": 0}
    active = [True]

    def hook(module, args, kwargs):
        if not active[0]:
            return
        seen["calls"] += 1
        tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
        if any(bool((t != 0).any()) for t in tensors):
            seen["nonzero_inputs"] += 1

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        active[0] = False
        handle.remove()
