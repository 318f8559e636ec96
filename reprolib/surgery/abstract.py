"""Which channels of every tensor really matter: Algorithm 1 of Tessier et al. (2022).

The network is traced with ``torch.fx`` and run as its *abstract copy*: every Conv2d / Linear weight
replaced by its mask (kept filters positive, pruned filters zero), normalisations and activations
removed, max-pooling replaced by average pooling, an identity 1x1 convolution inserted in front of
each operand of every addition, and an all-ones input. The copy is linear with non-negative
coefficients, so nothing cancels: a channel of a tensor is non-zero iff some path of kept weights
reaches it from the input (``fwd``), and it influences the output iff its gradient is non-zero
(``bwd``). The gradients of the masks give the document's m' (step 10) and the diagonals of the
identity convolutions' gradients give the index lists of its indexation-addition (step 12).

One deviation, on by default (``exact=True``): the document removes biases from the copy, so a kept
filter whose inputs are all pruned is dropped although its BN bias still adds a constant map
downstream (the document measures that this barely moves accuracy). With ``exact=True`` biases and
BN shifts stay in the copy as non-negative sources (zero for pruned filters, as ``apply_masks``
zeroes them), so such channels are kept and the shrunk network computes exactly what the masked one
does. ``exact=False`` is the document's reading.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

ZERO_PRESERVING = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.GELU, nn.SiLU, nn.Dropout, nn.Identity)
ADD = (operator.add, operator.iadd, torch.add)
RELU_FUNCTIONS = (F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.dropout)
# Linear maps with non-negative coefficients: run as they are in the abstract copy.
PASS_FUNCTIONS = (operator.getitem, F.pad, torch.flatten, F.adaptive_avg_pool2d, F.avg_pool2d)
PASS_METHODS = ("flatten", "view", "reshape", "contiguous", "size", "dim")


def unsupported(what: str) -> NotImplementedError:
    return NotImplementedError(
        f"surgery does not know how channels flow through {what}; supported: Conv2d (groups=1), Linear, "
        f"BatchNorm, ReLU-like activations, pooling, flatten, spatial indexing, zero padding, additions")


@dataclass
class Liveness:
    """The outcome of one abstract pass: per traced node, which channels are non-zero / used."""
    fwd: dict[str, torch.Tensor]        # node name -> bool (channels,): may be non-zero
    bwd: dict[str, torch.Tensor]        # node name -> bool (channels,): reaches the output
    weight_masks: dict[str, torch.Tensor]  # m' of the document: kept weights of each Conv2d/Linear
    add_index: dict[str, tuple[torch.Tensor, torch.Tensor]]  # add node -> (i^a, i^b): used channels

    def live(self, name: str) -> torch.Tensor:
        return self.fwd[name] & self.bwd[name]


def _channels(t: torch.Tensor) -> torch.Tensor:
    """Bool per channel (dim 1): any non-zero entry."""
    return (t != 0).transpose(0, 1).reshape(t.shape[1], -1).any(1)


def bn_after(gm: fx.GraphModule) -> dict[str, str]:
    """BatchNorm module name -> the Conv2d / Linear module that feeds it directly."""
    out = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.modules.batchnorm._BatchNorm):
            src = node.args[0]
            if isinstance(src, fx.Node) and src.op == "call_module" and \
                    isinstance(gm.get_submodule(src.target), (nn.Conv2d, nn.Linear)):
                out[node.target] = src.target
    return out


class _AbstractRun(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, keep: dict[str, torch.Tensor], exact: bool):
        super().__init__(gm)
        self.keep, self.exact, self.bn_src = keep, exact, bn_after(gm)
        self.values: dict[str, torch.Tensor] = {}
        self.masks: dict[str, torch.Tensor] = {}
        self.identities: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def run_node(self, n: fx.Node):
        self.current = n
        out = super().run_node(n)
        if isinstance(out, torch.Tensor) and out.requires_grad and out.dim() >= 2:
            out.retain_grad()
            self.values[n.name] = out
        return out

    def _keep(self, name: str, size: int) -> torch.Tensor:
        k = self.keep.get(name)
        return torch.ones(size, dtype=torch.bool) if k is None else k

    def call_module(self, target, args, kwargs):
        m, x = self.fetch_attr(target), args[0]
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if isinstance(m, nn.Conv2d) and m.groups != 1:
                raise unsupported(f"grouped convolution {target!r} (groups={m.groups})")
            keep = self._keep(target, m.weight.shape[0]).to(torch.float64)
            # Mask as weights; divided by the fan-in so that 50+ layers of ones do not overflow.
            w = keep.view(-1, *[1] * (m.weight.dim() - 1)).expand_as(m.weight) / m.weight[0].numel()
            w = w.clone().requires_grad_(True)
            self.masks[target] = w
            b = keep if (self.exact and m.bias is not None) else None
            if isinstance(m, nn.Linear):
                return F.linear(x, w, b)
            return F.conv2d(x, w, b, m.stride, m.padding, m.dilation)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if not self.exact:
                return x.clone()
            src = self.bn_src.get(target)
            shift = self._keep(src, x.shape[1]) if src is not None else torch.ones(x.shape[1], dtype=torch.bool)
            return x + shift.to(x.dtype).view(1, -1, *[1] * (x.dim() - 2))
        if isinstance(m, ZERO_PRESERVING):
            return x.clone()
        if isinstance(m, nn.MaxPool2d):
            if m.dilation not in (1, (1, 1)):
                raise unsupported(f"dilated max-pooling {target!r}")
            return F.avg_pool2d(x, m.kernel_size, m.stride, m.padding, m.ceil_mode)
        if isinstance(m, nn.AdaptiveMaxPool2d):
            return F.adaptive_avg_pool2d(x, m.output_size)
        if isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten)):
            return m(x)
        raise unsupported(f"module {target!r} ({type(m).__name__})")

    def call_function(self, target, args, kwargs):
        if target in ADD:
            a, b = args[0], args[1]
            if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
                raise unsupported(f"addition of a tensor and a constant at node {self.current.name!r}")
            ia = torch.eye(a.shape[1], dtype=a.dtype, requires_grad=True)
            ib = torch.eye(b.shape[1], dtype=b.dtype, requires_grad=True)
            self.identities[self.current.name] = (ia, ib)
            mix = lambda w, t: torch.einsum("oc,nc...->no...", w, t)  # identity 1x1 convolution
            return mix(ia, a) + mix(ib, b)
        if target in RELU_FUNCTIONS:
            return args[0].clone()
        if target is F.pad and (kwargs.get("value", 0) or 0) != 0:
            raise unsupported(f"non-zero padding at node {self.current.name!r}")
        if target in PASS_FUNCTIONS:
            return super().call_function(target, args, kwargs)
        raise unsupported(f"function {getattr(target, '__name__', target)!r} at node {self.current.name!r}")

    def call_method(self, target, args, kwargs):
        if target in ("relu", "relu_"):
            return args[0].clone()
        if target in PASS_METHODS:
            return super().call_method(target, args, kwargs)
        raise unsupported(f"method .{target}() at node {self.current.name!r}")


@torch.enable_grad()  # the pass reads gradients of the masks: it must work inside a caller's torch.no_grad()
def liveness(gm: fx.GraphModule, keep: dict[str, torch.Tensor], input_size, exact: bool = True) -> Liveness:
    """Run the abstract copy of ``gm`` under the keep-masks ``keep`` (module name -> bool per filter).
    Only the masks and the input need gradients, so the model's own parameters may be frozen."""
    run = _AbstractRun(gm, keep, exact)
    x = torch.ones(tuple(input_size), dtype=torch.float64, requires_grad=True)
    out = run.run(x)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    sum(o.sum() for o in outs if isinstance(o, torch.Tensor)).backward()
    fwd, bwd = {}, {}
    for name, t in run.values.items():
        fwd[name] = _channels(t.detach())
        bwd[name] = _channels(t.grad) if t.grad is not None else torch.zeros(t.shape[1], dtype=torch.bool)
    nz = lambda p: (p.grad != 0) if p.grad is not None else torch.zeros_like(p, dtype=torch.bool)
    weight_masks = {name: nz(w) & (w.detach() != 0) for name, w in run.masks.items()}
    add_index = {name: (nz(ia).diagonal(), nz(ib).diagonal()) for name, (ia, ib) in run.identities.items()}
    return Liveness(fwd, bwd, weight_masks, add_index)
