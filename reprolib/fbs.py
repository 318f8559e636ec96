"""Feature boosting and suppression (FBS; Gao et al., ICLR 2019, "Dynamic channel pruning"; summary
Section 4.6) on the CIFAR ResNets of ``reprolib.models.resnet_cifar``.

Every block conv (``conv1`` and ``conv2`` of each residual block; ours: the stem conv, which reads the three
image channels, and the classifier stay dense) gets a channel gate computed from the conv's *input* ``x`` (summary Eq. 21-22):

    ss(x)  = (1 / HW) * [ ||x^1||_1, ..., ||x^C||_1 ]         global L1 pooling of each input channel
    g(x)   = ReLU(FC(ss(x)))                                  the predicted saliency of each output channel
    pi(x)  = wta_k(g(x))                                      k-winners-take-all: the k largest kept, the rest 0
    out    = pi(x) * BN(conv(x))                              (then ReLU, or the residual addition)

``k = winners(C, d)`` = round(d * C) of the conv's C filters at density ``d`` (at least 1); the paper writes
a ceiling, which differs from round here only for 64 filters at d = 0.3 (19 kept instead of 20).

Our choices, where the paper differs or is silent:
* the gate multiplies the output of the whole BatchNorm (its gamma and beta kept); the paper drops BN's
  gamma and multiplies ``norm(conv) + beta``. Keeping gamma lets the gated network start *as* the baseline;
* the gate FC starts at weight 0 and bias 1 (``all-pass``): at density 1 the gated network then computes
  exactly what the baseline computes, and training moves it from there;
* the L1 penalty on the saliencies (the paper's lasso on g) is ``gate_l1 * sum over gates of the mean over
  images of ||g||_1`` (``penalty``), at a strength set by the study (reprolib.experiments.survey_dynamic).

A channel whose ``pi`` is 0 is 0 after the gate (and after ReLU), so the next conv need not read it
(input-side sparsity) and its own conv need not compute it (output-side sparsity). ``flops_per_image``
counts exactly the work of an implementation that skips both, plus the gates' own cost; ``Sliced`` is such
an implementation (batch by batch of one image: per-image gathers of the kept weights, BN folded), so that
its CPU latency can be set against the dense network's. The masked network (``gated``) computes every
channel and multiplies the suppressed ones by 0: it is what trains, never faster than the dense one.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .counting import count


def winners(channels: int, density: float) -> int:
    """The number of channels k-WTA keeps: round(density * channels) (halves up), at least 1."""
    if not 0 < density <= 1:  # also rejects NaN
        raise ValueError(f"density must be in (0, 1], got {density}")
    if channels < 1:
        raise ValueError(f"a gate needs at least one channel, got {channels}")
    return min(channels, max(1, math.floor(density * channels + 0.5)))


def wta_mask(g: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask [B, C] of the ``k`` largest entries of each row of ``g`` (ties: the lower index wins)."""
    if g.dim() != 2:
        raise ValueError(f"saliencies must be [batch, channels], got shape {tuple(g.shape)}")
    if not 1 <= k <= g.shape[1]:
        raise ValueError(f"k = {k} winners of {g.shape[1]} channels: choose 1 to {g.shape[1]}")
    idx = torch.sort(g.detach().float(), dim=1, descending=True, stable=True).indices[:, :k]
    return torch.zeros_like(g, dtype=torch.bool).scatter_(1, idx, True)


def wta(g: torch.Tensor, k: int) -> torch.Tensor:
    """k-winners-take-all: ``g`` with every entry outside each row's ``k`` largest set to 0. The gradient
    flows to the kept entries only."""
    return g * wta_mask(g, k).to(g.dtype)


class ChannelGate(nn.Module):
    """The saliency predictor of one conv: L1 pooling of its input, FC, ReLU, k-WTA at ``density``.
    ``forward`` returns ``pi`` [B, out_channels]; the saliencies ``g`` before k-WTA are kept in
    ``self.saliency`` for the L1 penalty."""

    def __init__(self, in_channels: int, out_channels: int, density: float = 1.0):
        super().__init__()
        self.fc = nn.Linear(in_channels, out_channels)
        nn.init.zeros_(self.fc.weight)  # ours: all-pass start (g = 1 for every channel and input)
        nn.init.ones_(self.fc.bias)
        self.density = density
        self.saliency: torch.Tensor | None = None

    @property
    def k(self) -> int:
        return winners(self.fc.out_features, self.density)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = F.relu(self.fc(x.abs().mean((2, 3))))
        self.saliency = g
        return wta(g, self.k)

    def extra_repr(self) -> str:
        return f"density={self.density}, k={self.k}"


class GatedBlock(nn.Module):
    """A ``BasicBlock`` whose two convs are gated: ``relu(pi1 * bn1(conv1(x)))``, then
    ``relu(pi2 * bn2(conv2(.)) + shortcut(x))``. Holds the block's own modules (weights shared on creation)."""

    def __init__(self, block: nn.Module, density: float):
        super().__init__()
        for name in ("conv1", "bn1", "conv2", "bn2", "shortcut"):
            setattr(self, name, getattr(block, name))
        self.gate1 = ChannelGate(block.conv1.in_channels, block.conv1.out_channels, density)
        self.gate2 = ChannelGate(block.conv2.in_channels, block.conv2.out_channels, density)
        self.gate1.to(block.conv1.weight.device)
        self.gate2.to(block.conv1.weight.device)

    def forward(self, x):
        p1 = self.gate1(x)
        out = F.relu(self.bn1(self.conv1(x)) * p1[:, :, None, None].to(x.dtype))
        p2 = self.gate2(out)
        out = self.bn2(self.conv2(out)) * p2[:, :, None, None].to(out.dtype)
        return F.relu(out + self.shortcut(x))


def _is_block(m: nn.Module) -> bool:
    return all(hasattr(m, a) for a in ("conv1", "bn1", "conv2", "bn2", "shortcut")) and not isinstance(m, GatedBlock)


def gated(base: nn.Module, density: float = 1.0) -> nn.Module:
    """A copy of the CIFAR ResNet ``base`` with every residual block gated at ``density`` (gates all-pass)."""
    winners(1, density)  # a clear error for a bad density
    model = copy.deepcopy(base)
    stages = [m for m in model.modules() if isinstance(m, nn.Sequential)]
    n = 0
    for stage in stages:
        for i, block in enumerate(stage):
            if _is_block(block):
                stage[i] = GatedBlock(block, density)
                n += 1
    if n == 0:
        raise ValueError(f"{type(base).__name__} has no residual blocks (conv1, bn1, conv2, bn2, shortcut) in "
                         "nn.Sequential stages: FBS here gates the CIFAR ResNets of reprolib.models")
    for attr in ("registry_name", "registry_kwargs"):
        model.__dict__.pop(attr, None)
    return model


def gates(model: nn.Module) -> list[ChannelGate]:
    return [m for m in model.modules() if isinstance(m, ChannelGate)]


def set_density(model: nn.Module, density: float) -> nn.Module:
    """Every gate of ``model`` at ``density`` (in place; returns the model)."""
    winners(1, density)
    for g in gates(model):
        g.density = density
    return model


def penalty(strength: float):
    """The L1 penalty on the saliencies of the last forward pass, for ``train.fit(penalty=...)``:
    ``strength * sum over gates of mean over images of ||g||_1``."""
    if strength < 0:
        raise ValueError(f"penalty strength must be >= 0, got {strength}")

    def fn(model: nn.Module) -> torch.Tensor:
        return strength * sum(g.saliency.float().abs().sum(1).mean() for g in gates(model) if g.saliency is not None)
    return fn


# --------------------------------------------------------------------------- real FLOPs per image

def gated_conv_flops(conv: nn.Conv2d, in_active, out_active, out_hw: int):
    """MACs of ``conv`` computing only ``out_active`` filters from ``in_active`` input channels, on an output
    map of ``out_hw`` pixels (its bias, if any, on the computed filters). Tensors or ints."""
    kk = conv.kernel_size[0] * conv.kernel_size[1]
    flops = in_active * out_active * kk * out_hw // conv.groups
    return flops + (out_active * out_hw if conv.bias is not None else 0)


def gate_flops(in_active, in_hw: int, out_channels: int, out_active, out_hw: int):
    """The gate's own work: L1 pooling of its active input channels (one add per value), the FC on them
    (``in_active * out_channels`` MACs and ``out_channels`` bias adds) and the boost (one multiply per value of
    the computed output channels). The k-WTA selection (comparisons, no MACs) is not counted."""
    return in_active * in_hw + in_active * out_channels + out_channels + out_active * out_hw


@torch.no_grad()
def flops_per_image(model: nn.Module, x: torch.Tensor, base_flops: dict | None = None) -> dict:
    """The work of the gated ``model`` on each image of the batch ``x`` when skipped channels are not computed:
    a gated conv computes its nonzero-``pi`` filters from its nonzero input channels (the residual stream into
    ``conv1`` counts as dense; ``conv2`` reads only ``conv1``'s computed channels), plus every gate's cost
    (``gate_flops``), plus the dense layers outside the blocks (stem conv, classifier: from ``counting.count``,
    or ``base_flops``, its result for one image, when given).

    Returns per-image tensors ``{"total", "convs", "gates", "fixed"}`` (int64) and per gate its mean number of
    computed channels (``"active"``, ``{gate name: mean}``)."""
    names = {m: n for n, m in model.named_modules()}
    blocks = [m for m in model.modules() if isinstance(m, GatedBlock)]
    if not blocks:
        raise ValueError("the model has no gated blocks: make it with reprolib.fbs.gated")
    seen = {}
    hooks = [g.register_forward_hook(lambda m, inp, out: seen.__setitem__(m, (inp[0].shape, out)))
             for b in blocks for g in (b.gate1, b.gate2)]
    was = model.training
    try:
        model.eval()(x)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    b = x.shape[0]
    convs = torch.zeros(b, dtype=torch.int64, device=x.device)
    gate = torch.zeros_like(convs)
    active = {}
    for blk in blocks:
        (s1, p1), (s2, p2) = seen[blk.gate1], seen[blk.gate2]
        n1, n2 = (p1 > 0).sum(1), (p2 > 0).sum(1)
        hw_in, hw_out = s1[2] * s1[3], s2[2] * s2[3]  # conv1's input map, conv1's (and conv2's) output map
        convs += gated_conv_flops(blk.conv1, blk.conv1.in_channels, n1, hw_out) + gated_conv_flops(blk.conv2, n1, n2, hw_out)
        gate += gate_flops(blk.gate1.fc.in_features, hw_in, blk.gate1.fc.out_features, n1, hw_out)
        gate += gate_flops(n1, hw_out, blk.gate2.fc.out_features, n2, hw_out)
        active[names[blk.gate1]] = float(n1.double().mean())
        active[names[blk.gate2]] = float(n2.double().mean())
    if base_flops is None:
        base_flops = count(model, (1, *x.shape[1:]))
    in_blocks = {f"{names[blk]}.{c}" for blk in blocks for c in ("conv1", "conv2")}
    gate_fcs = {f"{names[g]}.fc" for blk in blocks for g in (blk.gate1, blk.gate2)}
    fixed = sum(l["flops"] for l in base_flops["layers"] if l["name"] not in in_blocks | gate_fcs)
    return {"total": convs + gate + fixed, "convs": convs, "gates": gate,
            "fixed": torch.full_like(convs, fixed), "active": active}


# --------------------------------------------------------------------------- the skipping implementation

def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight.detach() * torch.rsqrt(bn.running_var + bn.eps)
    bias = bn.bias.detach() - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias.detach() * scale
    return (conv.weight.detach() * scale.view(-1, 1, 1, 1)).contiguous(), bias.contiguous()


def _kept(g: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (ascending) and values of the nonzero winners of one image's saliencies ``g`` [C]."""
    idx = wta_mask(g[None], k)[0].nonzero().flatten()
    idx = idx[g[idx] > 0]
    return idx, g[idx]


class Sliced(nn.Module):
    """An inference copy of a gated network that really skips: image by image, each gated conv runs on the
    kept input channels with the kept filters only (weights gathered per image; BN folded into the convs),
    and the residual addition adds the computed channels into the shortcut (``index_add``). Outputs equal the
    masked network's in eval mode (up to float rounding). Any batch size: images are taken one at a time."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if not any(isinstance(m, GatedBlock) for m in model.modules()):
            raise ValueError("Sliced needs a gated network (reprolib.fbs.gated)")
        model = copy.deepcopy(model).eval()
        w, b = _fold(model.conv1, model.bn1)
        self.register_buffer("stem_w", w)
        self.register_buffer("stem_b", b)
        self.stem_stride, self.stem_pad = model.conv1.stride, model.conv1.padding
        self.blocks = []
        for i, blk in enumerate(m for m in model.modules() if isinstance(m, GatedBlock)):
            entry = {"shortcut": blk.shortcut, "stride": blk.conv1.stride, "pad1": blk.conv1.padding,
                     "pad2": blk.conv2.padding, "k1": blk.gate1.k, "k2": blk.gate2.k}
            for j, (conv, bn, gate) in enumerate(((blk.conv1, blk.bn1, blk.gate1), (blk.conv2, blk.bn2, blk.gate2)), 1):
                w, b = _fold(conv, bn)
                for key, t in ((f"w{j}", w), (f"b{j}", b), (f"gw{j}", gate.fc.weight.detach().contiguous()),
                               (f"gb{j}", gate.fc.bias.detach().contiguous())):
                    self.register_buffer(f"block{i}_{key}", t)
            self.blocks.append(entry)
        self.head = copy.deepcopy(model.fc)

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.conv2d(x, self.stem_w, self.stem_b, self.stem_stride, self.stem_pad))
        for i, e in enumerate(self.blocks):
            t = {key: getattr(self, f"block{i}_{key}") for key in ("w1", "b1", "gw1", "gb1", "w2", "b2", "gw2", "gb2")}
            short = e["shortcut"](x)
            g1 = F.relu(t["gw1"] @ x[0].abs().mean((1, 2)) + t["gb1"])
            i1, p1 = _kept(g1, e["k1"])
            if len(i1):
                h = F.relu(F.conv2d(x, t["w1"][i1], t["b1"][i1], e["stride"], e["pad1"]) * p1[None, :, None, None])
                g2 = F.relu(t["gw2"][:, i1] @ h[0].abs().mean((1, 2)) + t["gb2"])
            else:  # nothing computed: conv2 reads an all-zero input
                h, g2 = None, F.relu(t["gb2"])
            i2, p2 = _kept(g2, e["k2"])
            if not len(i2):
                x = F.relu(short)
                continue
            if h is None:  # a conv of zeros is its bias (the folded BN shift)
                out = t["b2"][i2].view(1, -1, 1, 1).expand(1, -1, *short.shape[2:])
            else:
                out = F.conv2d(h, t["w2"][i2][:, i1], t["b2"][i2], 1, e["pad2"])
            x = F.relu(short.index_add(1, i2, out * p2[None, :, None, None]))
        return self.head(x.mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._one(x[i:i + 1]) for i in range(x.shape[0])])
