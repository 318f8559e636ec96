"""Really remove filters from a VGG-style network: the one surgery shared by ThiNet and the
gradient-outlier method (``criteria.thinet``, ``criteria.gradient_outlier``).

A "VGG-style network" is what ``reprolib.models.vgg`` builds: a ``features`` nn.Sequential of
Conv2d -> BatchNorm2d -> ReLU (-> MaxPool2d) blocks, then a ``classifier`` nn.Sequential whose
first nn.Linear reads the flattened last feature map. In such a chain, removing filters of conv k
means three slices, and nothing else depends on them:

* the kept rows of conv k (weight and bias);
* the same channels of the BatchNorm2d right after it (affine parameters and running statistics);
* the same input channels of the next consumer: the next Conv2d, or, for the last conv, the
  columns of the classifier's first Linear (one group of ``in_features / channels`` columns per
  channel, in ``flatten`` order).

Optional per-channel ``scales`` are folded into the consumer's kept input weights (ThiNet's
least-squares reconstruction). The modules are replaced by smaller ones, so parameter counts,
FLOPs and latency are those of a really smaller network. Residual networks need dependency
resolution and are out of scope here (``reprolib.surgery``).
"""
from __future__ import annotations

import torch
import torch.nn as nn


def conv_names(model: nn.Module) -> list[str]:
    """Qualified names of the Conv2d modules of ``model.features``, in forward order."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential) or not isinstance(getattr(model, "classifier", None), nn.Sequential):
        raise TypeError(f"{type(model).__name__} is not a VGG-style network: it needs `features` and "
                        "`classifier` nn.Sequential attributes (build it with reprolib.models.create('vgg16'))")
    return [f"features.{i}" for i, m in enumerate(features) if isinstance(m, nn.Conv2d)]


def _position(model: nn.Module, name: str) -> int:
    names = conv_names(model)
    if name not in names:
        raise ValueError(f"{name!r} is not a conv layer of model.features; choose one of {names}")
    return int(name.split(".")[1])


def consumer(model: nn.Module, name: str) -> str:
    """The module that reads conv ``name``'s channels: the next Conv2d, or the classifier's first
    Linear when ``name`` is the last conv."""
    names = conv_names(model)
    _position(model, name)  # checks the name
    k = names.index(name)
    if k + 1 < len(names):
        return names[k + 1]
    for i, m in enumerate(model.classifier):
        if isinstance(m, nn.Linear):
            return f"classifier.{i}"
    raise TypeError(f"the classifier has no nn.Linear reading {name!r}'s channels")


def _batchnorm_after(model: nn.Module, name: str) -> str | None:
    i = _position(model, name)
    if i + 1 < len(model.features) and isinstance(model.features[i + 1], nn.BatchNorm2d):
        return f"features.{i + 1}"
    return None


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of module ``name``, its parameters frozen where the old ones were."""
    old = model.get_submodule(name)
    for p_name, p in new.named_parameters(recurse=False):
        p.requires_grad_(getattr(old, p_name).requires_grad)
    parent, child = name.rsplit(".", 1)
    setattr(model.get_submodule(parent), child, new)


def _as_index(keep, n: int, name: str) -> torch.Tensor:
    """``keep`` (indices or a boolean mask) -> sorted unique int64 indices, checked."""
    keep = torch.as_tensor(keep)
    if keep.dtype == torch.bool:
        if keep.shape != (n,):
            raise ValueError(f"boolean keep-mask for {name} has shape {tuple(keep.shape)}, expected ({n},)")
        keep = keep.nonzero().flatten()
    keep = keep.flatten().long()
    if keep.numel() == 0:
        raise ValueError(f"keep for {name} is empty: a layer must keep at least one filter")
    if keep.unique().numel() != keep.numel() or keep.min() < 0 or keep.max() >= n:
        raise ValueError(f"keep for {name} must be distinct indices in [0, {n}); got {keep.tolist()}")
    return keep.sort().values


def _conv_like(conv: nn.Conv2d, cin: int, cout: int) -> nn.Conv2d:
    w = conv.weight
    if conv.groups != 1:
        raise ValueError("grouped convolutions are not supported by VGG surgery")
    new = nn.Conv2d(cin, cout, conv.kernel_size, conv.stride, conv.padding, conv.dilation, 1,
                    conv.bias is not None, conv.padding_mode, device=w.device, dtype=w.dtype)
    return new.train(conv.training)


@torch.no_grad()
def remove_filters(model: nn.Module, name: str, keep, scales=None) -> nn.Module:
    """Keep only filters ``keep`` of conv ``name`` (indices or a boolean mask), with its BN channels
    and the consumer's input channels; multiply the consumer's kept input weights by ``scales``
    (one per kept channel, in ascending channel order; default 1). Modifies ``model`` in place
    (smaller modules replace the old ones) and returns it."""
    conv = model.get_submodule(name)
    keep = _as_index(keep, conv.out_channels, name)
    k = keep.numel()
    s = torch.ones(k) if scales is None else torch.as_tensor(scales).flatten()
    if s.numel() != k:
        raise ValueError(f"scales for {name} have {s.numel()} entries, expected one per kept filter ({k})")

    new = _conv_like(conv, conv.in_channels, k)
    new.weight.copy_(conv.weight[keep])
    if conv.bias is not None:
        new.bias.copy_(conv.bias[keep])
    _replace(model, name, new)

    bn_name = _batchnorm_after(model, name)
    if bn_name is not None:
        bn = model.get_submodule(bn_name)
        nbn = nn.BatchNorm2d(k, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                             device=conv.weight.device, dtype=conv.weight.dtype).train(bn.training)
        if bn.affine:
            nbn.weight.copy_(bn.weight[keep])
            nbn.bias.copy_(bn.bias[keep])
        if bn.track_running_stats:
            nbn.running_mean.copy_(bn.running_mean[keep])
            nbn.running_var.copy_(bn.running_var[keep])
            nbn.num_batches_tracked.copy_(bn.num_batches_tracked)
        _replace(model, bn_name, nbn)

    nxt_name = consumer(model, name)
    nxt = model.get_submodule(nxt_name)
    if isinstance(nxt, nn.Conv2d):
        s = s.to(nxt.weight).view(1, k, 1, 1)
        nn_ = _conv_like(nxt, k, nxt.out_channels)
        nn_.weight.copy_(nxt.weight[:, keep] * s)
    else:  # the classifier's Linear: columns grouped by channel (flatten of [C, h, w])
        if nxt.in_features % conv.out_channels:
            raise ValueError(f"{nxt_name} has {nxt.in_features} inputs, not a multiple of {name}'s "
                             f"{conv.out_channels} channels")
        per = nxt.in_features // conv.out_channels
        s = s.to(nxt.weight).view(1, k, 1)
        nn_ = nn.Linear(k * per, nxt.out_features, nxt.bias is not None, device=nxt.weight.device,
                        dtype=nxt.weight.dtype).train(nxt.training)
        w = nxt.weight.view(nxt.out_features, conv.out_channels, per)[:, keep] * s
        nn_.weight.copy_(w.reshape(nxt.out_features, k * per))
    if nxt.bias is not None:
        nn_.bias.copy_(nxt.bias)
    _replace(model, nxt_name, nn_)
    return model


def _block_params(model: nn.Module, name: str, cin: int, cout: int) -> int:
    """Parameters of conv ``name`` with ``cin`` -> ``cout`` channels, plus its BN."""
    conv = model.get_submodule(name)
    kh, kw = conv.kernel_size
    n = cin * cout * kh * kw + (cout if conv.bias is not None else 0)
    bn = _batchnorm_after(model, name)
    if bn is not None and model.get_submodule(bn).affine:
        n += 2 * cout
    return n


def param_count(model: nn.Module, kept: dict[str, int] | None = None) -> int:
    """Parameters of ``model`` (every tensor of ``model.parameters()``) after keeping ``kept[name]``
    filters of each named conv (the others keep theirs): the count the surgery would produce,
    computed without doing it (the gradient-outlier method checks its ratio filter by filter)."""
    kept = kept or {}
    names = conv_names(model)
    unknown = set(kept) - set(names)
    if unknown:
        raise ValueError(f"kept names {sorted(unknown)} are not conv layers of model.features: {names}")
    total = sum(p.numel() for p in model.parameters())
    cin_now = cin_new = model.get_submodule(names[0]).in_channels
    for name in names:
        cout_now = model.get_submodule(name).out_channels
        cout_new = kept.get(name, cout_now)
        total += _block_params(model, name, cin_new, cout_new) - _block_params(model, name, cin_now, cout_now)
        cin_now, cin_new = cout_now, cout_new
    fc = model.get_submodule(consumer(model, names[-1]))
    per = fc.in_features // cin_now
    return total + fc.out_features * per * (cin_new - cin_now)
