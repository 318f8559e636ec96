"""Sensitivity-driven regularisation (Tartaglione, Lepsøy, Fiandrotti & Francini, NeurIPS 2018, "Learning
sparse neural networks via sensitivity-driven regularization"; the survey's Section 1.1, Eqs. (5)-(11)).

The sensitivity of the network output y to a weight w is how much y moves when w does (Eqs. 5-6),
S = sum_k alpha_k |d y_k / d w|. We use the paper's **specific** variant (Eq. 7): alpha is the one-hot
encoding of the true class, so S = |d y_t / d w| with t the label. The bounded insensitivity
(Eq. 8) is S_b = max(0, 1 - S) in [0, 1], and each step moves every weight towards zero in proportion to it
(Eq. 9, the last term):

    w <- w - eta dL/dw - lambda * w * S_b(w).

This is the gradient step of the regulariser R = sum_w w^2 / 2 * (1 - S) (Eq. 11, which the paper derives
for ReLU networks), with the insensitivity held constant; weights with S >= 1 are not touched. After the
training, weights whose magnitude is below a threshold are set to zero (``prune_below``; the experiments
choose the threshold that gives each target sparsity, so that the curves compare at equal sparsity).

Ours, stated:
* y is the softmax output (probabilities: Eq. 7 weights the outputs by the one-hot desired output y*, a
  vector of the same kind; the summary does not say more), and S over a batch is the mean over its images of
  each image's |d y_t / d w| (per-image gradients); the paper defines S for one input. The bound at 1 makes S's
  scale matter: a probability moves little with one weight (d y_t / d z_t = y_t (1 - y_t) <= 1/4 at the logits,
  near 0 for confident predictions), so a trained net's weights have S far below 1 and insensitivities near 1
  (the runs record each layer's least insensitivity);
* the shrinking is applied as a separate (decoupled) step right after the optimizer's step, at the weights
  that step produced and on the same batch (``SensitivityRegulariser``, an ``on_step`` hook of
  ``reprolib.train.fit``), so lambda is per step and not multiplied by the learning rate, as in Eq. 9;
* S is computed with the model in eval mode (BatchNorm statistics untouched; LeNets have none), in float32;
* only the weights of the given Conv2d / Linear layers are regularised and pruned, not the biases.
``variant="l2"`` (our control) sets S_b = 1 everywhere: the same step without sensitivity, a decoupled
weight decay of the same lambda.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .criteria.filters import resolve_layers

VARIANTS = ("specific", "l2")


def sensitivity(model: nn.Module, layers, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Eq. (7), the specific variant: ``{layer: S}``, S the mean over the images of ``x`` (normalised images,
    labels ``y``) of |d softmax(f(x))_y / d w| for every weight w of the layer, shaped like its weight.

    One forward and one backward pass: the backward of sum_n p_n (p_n image n's probability of its label)
    gives each image's d p_n / d z at each layer's output z (images do not interact in eval mode), and the
    image's weight gradient is that times its input (Linear: an outer product, so that the sum of magnitudes
    is one matrix product; Conv2d: summed over the positions of the unfolded input), whose magnitude is then
    averaged over the images."""
    mods = resolve_layers(model, layers)
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"sensitivity needs as many labels as images, at least one; got {len(x)} and {len(y)}")
    inputs, outputs = {}, {}

    def keep(name):
        def hook(module, args, out):
            inputs[name], outputs[name] = args[0].detach(), out
            return out.clone()  # an in-place activation after the layer must not overwrite the output we differentiate
        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in mods.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
            xg = x.detach().float().requires_grad_()  # a graph even when the weights are frozen
            prob = model(xg).float().softmax(1).gather(1, y.reshape(-1, 1)).sum()
            deltas = dict(zip(mods, torch.autograd.grad(prob, [outputs[n] for n in mods])))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = {}
    for n, m in mods.items():
        a, d = inputs[n].float(), deltas[n].float()
        if isinstance(m, nn.Conv2d):
            if m.groups != 1 or isinstance(m.padding, str) or m.padding_mode != "zeros":
                raise ValueError(f"sensitivity takes ungrouped convolutions with numeric zero padding ({n!r})")
            patches = F.unfold(a, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)  # (B, d, L)
            per_image = torch.bmm(d.flatten(2), patches.transpose(1, 2))  # (B, C_out, d)
        elif a.dim() == 2:  # Linear, one vector per image: |delta x^T| = |delta| |x|^T, summed in one product
            out[n] = (d.abs().T @ a.abs()) / len(x)
            continue
        else:  # Linear on (B, ..., in): one outer product per position, summed over an image's positions
            per_image = torch.bmm(d.reshape(len(d), -1, d.shape[-1]).transpose(1, 2),
                                  a.reshape(len(a), -1, a.shape[-1]))
        out[n] = (per_image.abs().sum(0) / len(x)).reshape(m.weight.shape)
    return out


def insensitivity(S: torch.Tensor) -> torch.Tensor:
    """Eq. (8): the bounded insensitivity max(0, 1 - S), in [0, 1]."""
    return (1.0 - S).clamp_min(0.0)


class SensitivityRegulariser:
    """``on_step`` hook of ``reprolib.train.fit``: after each optimizer step, w <- w - lam * w * S_b with S_b
    the bounded insensitivity on that step's batch (Eq. 9's regularisation term); ``variant="l2"``: S_b = 1.
    ``last`` / ``last_min``: the mean and the least S_b of each layer at the latest step (how much is protected)."""

    def __init__(self, layers: list[str], lam: float, *, variant: str = "specific"):
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}: choose one of {', '.join(VARIANTS)}")
        if not 0 <= lam < 1:
            raise ValueError(f"lam is {lam}: the step w <- w (1 - lam S_b) needs 0 <= lam < 1")
        if not layers:
            raise ValueError("SensitivityRegulariser needs at least one layer")
        self.layers, self.lam, self.variant = list(layers), lam, variant
        self.last: dict[str, torch.Tensor] = {}
        self.last_min: dict[str, torch.Tensor] = {}

    def __call__(self, step: int, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> None:
        mods = resolve_layers(model, self.layers)
        if self.variant == "l2":
            factors = {n: torch.ones_like(m.weight) for n, m in mods.items()}
        else:
            factors = {n: insensitivity(s) for n, s in sensitivity(model, self.layers, xb, yb).items()}
        with torch.no_grad():
            for n, m in mods.items():
                m.weight.mul_(1.0 - self.lam * factors[n].to(m.weight.dtype))
        # 0-d tensors (no wait for the device): the mean and the least insensitivity of each layer at this step
        self.last = {n: f.mean() for n, f in factors.items()}
        self.last_min = {n: f.min() for n, f in factors.items()}


@torch.no_grad()
def prune_below(model: nn.Module, layers, threshold: float) -> dict[str, torch.Tensor]:
    """The paper's final step: set to zero, in place, the weights with |w| < ``threshold``. Returns the
    keep-masks (True = kept)."""
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    masks = {}
    for n, m in resolve_layers(model, layers).items():
        masks[n] = m.weight.abs() >= threshold
        m.weight.masked_fill_(~masks[n], 0.0)
    return masks
