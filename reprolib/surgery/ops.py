"""The small modules a shrunk network is made of, besides smaller Conv2d / Linear / BatchNorm."""
from __future__ import annotations

import torch
import torch.nn as nn


def _index(values) -> torch.Tensor:
    return torch.as_tensor(list(values), dtype=torch.long)


class IndexAdd(nn.Module):
    """Indexation-addition (Eq. 1 of Tessier et al. 2022): an addition of tensors that keep different
    channels. ``out[:, pos_a] += a[:, sel_a]`` and ``out[:, pos_b] += b[:, sel_b]``, ``out`` has
    ``n`` channels. Where ``a`` already is the whole output, it is added into in place of zeros."""

    def __init__(self, n: int, n_a: int, sel_a, pos_a, n_b: int, sel_b, pos_b):
        super().__init__()
        self.n, self.n_a, self.n_b = n, n_a, n_b
        for k, v in dict(sel_a=sel_a, pos_a=pos_a, sel_b=sel_b, pos_b=pos_b).items():
            self.register_buffer(k, _index(v), persistent=False)
        whole = lambda n_x, sel, pos: n_x == n and list(sel) == list(range(n)) and list(pos) == list(range(n))
        self.a_whole, self.b_whole = whole(n_a, sel_a, pos_a), whole(n_b, sel_b, pos_b)
        self.all_a, self.all_b = list(sel_a) == list(range(n_a)), list(sel_b) == list(range(n_b))

    def _part(self, x, sel, every):
        return x if every else x.index_select(1, sel)

    def forward(self, a, b):
        if self.a_whole and self.b_whole:
            return a + b
        # A new tensor even where one operand passes through unchanged: an in-place ReLU after the
        # addition must not overwrite a tensor the autograd graph still needs.
        if self.a_whole:
            return a.clone() if len(self.pos_b) == 0 else a.index_add(1, self.pos_b, self._part(b, self.sel_b, self.all_b))
        if self.b_whole:
            return b.clone() if len(self.pos_a) == 0 else b.index_add(1, self.pos_a, self._part(a, self.sel_a, self.all_a))
        ref = a if a.shape[1] else b
        out = ref.new_zeros(ref.shape[0], self.n, *ref.shape[2:])
        if len(self.pos_a):
            out = out.index_add(1, self.pos_a, self._part(a, self.sel_a, self.all_a))
        if len(self.pos_b):
            out = out.index_add(1, self.pos_b, self._part(b, self.sel_b, self.all_b))
        return out

    def extra_repr(self):
        return f"n={self.n}, a: {len(self.pos_a)}/{self.n_a} used, b: {len(self.pos_b)}/{self.n_b} used"


class Expand(nn.Module):
    """Put the ``len(pos)`` channels of ``x`` back at positions ``pos`` of ``n`` zero channels (the
    network's output keeps its original width)."""

    def __init__(self, n: int, pos):
        super().__init__()
        self.n = n
        self.register_buffer("pos", _index(pos), persistent=False)

    def forward(self, x):
        out = x.new_zeros(x.shape[0], self.n, *x.shape[2:])
        return out.index_copy(1, self.pos, x) if len(self.pos) else out


class ConstantMap(nn.Module):
    """A layer whose inputs were all pruned: its output is its bias, the same at every position."""

    def __init__(self, bias: torch.Tensor, spatial: tuple[int, ...]):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone())
        self.spatial = tuple(spatial)

    def forward(self, x):
        shape = (1, len(self.bias)) + (1,) * len(self.spatial)
        return self.bias.to(x.dtype).view(shape).expand(x.shape[0], len(self.bias), *self.spatial).contiguous()


class Empty(nn.Module):
    """A tensor that lost all its channels (torch has no zero-channel convolution)."""

    def __init__(self, spatial: tuple[int, ...]):
        super().__init__()
        self.spatial = tuple(spatial)

    def forward(self, x):
        return x.new_zeros(x.shape[0], 0, *self.spatial)
