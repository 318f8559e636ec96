"""The small modules a shrunk network is made of, besides smaller Conv2d / Linear / BatchNorm."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _index(values) -> torch.Tensor:
    return torch.as_tensor(list(values), dtype=torch.long)


def _zeros_like(ref: torch.Tensor, n: int) -> torch.Tensor:
    """Zeros shaped like ``ref`` with ``n`` channels, in ``ref``'s memory format (channels_last stays so)."""
    out = ref.new_zeros(ref.shape[0], n, *ref.shape[2:])
    if ref.dim() == 4 and not ref.is_contiguous() and ref.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


class _Operand:
    """How one operand of an ``IndexAdd`` lands in the output: ``kind`` is ``whole`` (it is the output's
    channel layout), ``slice`` (a contiguous block ``x[:, i:i+k]`` lands at ``out[:, s:s+k]``),
    ``index`` (any other pattern) or ``none`` (no channel used)."""

    def __init__(self, n: int, n_x: int, sel: list[int], pos: list[int]):
        self.n, self.n_x, self.sel, self.pos = n, n_x, list(sel), list(pos)
        run = lambda v: v == list(range(v[0], v[0] + len(v))) if v else True
        if not pos:
            self.kind = "none"
        elif n_x == n and self.sel == self.pos == list(range(n)):
            self.kind = "whole"
        elif run(self.sel) and run(self.pos):
            self.kind = "slice"
        else:
            self.kind = "index"
        self.i, self.s, self.k = (self.sel or [0])[0], (self.pos or [0])[0], len(self.pos)
        self.every = self.sel == list(range(n_x))
        # Gather plan: output channel c reads channel gather[c] of x padded with one zero channel (index n_x).
        gather = [n_x] * n
        for i, p in zip(self.sel, self.pos):
            gather[p] = i
        self.gather = gather


class IndexAdd(nn.Module):
    """Indexation-addition (Eq. 1 of Tessier et al. 2022): an addition of tensors that keep different
    channels. ``out[:, pos_a] += a[:, sel_a]`` and ``out[:, pos_b] += b[:, sel_b]``, ``out`` has
    ``n`` channels.

    The index lists are turned into a plan once, at construction. An operand that already is the whole
    output layout is the starting point (added into in place of zeros); one whose channels form a
    contiguous block is added as a slice or zero-padded; only other patterns use ``index_add_``. When
    ``shrink`` has found that an operand's tensor is not read after the addition (``inplace``) and no
    gradient is recorded, it is added into directly, without a copy. While exported
    (``torch.onnx.export``, ``torch.export``) the plan is pure: zero-padding and channel gathers
    (ONNX ``Pad`` / ``Gather``) summed, never scatter operations."""

    def __init__(self, n: int, n_a: int, sel_a, pos_a, n_b: int, sel_b, pos_b):
        super().__init__()
        self.n, self.n_a, self.n_b = n, n_a, n_b
        for k, v in dict(sel_a=sel_a, pos_a=pos_a, sel_b=sel_b, pos_b=pos_b).items():
            self.register_buffer(k, _index(v), persistent=False)
        self.plan = (_Operand(n, n_a, list(sel_a), list(pos_a)), _Operand(n, n_b, list(sel_b), list(pos_b)))
        for k, op in zip("ab", self.plan):
            self.register_buffer(f"gather_{k}", _index(op.gather), persistent=False)
        self.inplace = (False, False)  # set by shrink(): may operand a / b be overwritten?
        # Backwards-compatible names (tests and notebooks read them).
        self.a_whole, self.b_whole = (op.kind == "whole" for op in self.plan)

    def _selected(self, x, op, sel):
        return x if op.every else x.index_select(1, sel)

    def _expand(self, x, op, gather):
        """``x`` on the output's ``n`` channels (zeros where it has none), as a pure function."""
        if op.kind == "whole":
            return x
        if op.kind == "slice":
            return F.pad(x[:, op.i:op.i + op.k], (0, 0) * (x.dim() - 2) + (op.s, self.n - op.s - op.k))
        return F.pad(x, (0, 0) * (x.dim() - 2) + (0, 1)).index_select(1, gather)

    def _add_into(self, out, x, op, sel, pos):
        """``out[:, pos] += x[:, sel]`` in place."""
        if op.kind == "slice":
            out[:, op.s:op.s + op.k] += x[:, op.i:op.i + op.k]
        elif op.kind == "index":
            out.index_add_(1, pos, self._selected(x, op, sel))
        return out

    def forward(self, a, b):
        pa, pb = self.plan
        if a.dtype != b.dtype:  # e.g. under autocast: promote as ``a + b`` would
            dtype = torch.promote_types(a.dtype, b.dtype)
            a, b = a.to(dtype), b.to(dtype)
        exporting = torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()
        recording = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
        if pa.kind == "whole" and pb.kind == "whole":
            if not (exporting or recording) and (self.inplace[0] or self.inplace[1]):
                return a.add_(b) if self.inplace[0] else b.add_(a)
            return a + b
        ga, gb = self.gather_a, self.gather_b
        if exporting:
            terms = [self._expand(x, op, g) for x, op, g in ((a, pa, ga), (b, pb, gb)) if op.kind != "none"]
            if not terms:
                return _zeros_like(a if a.shape[1] else b, self.n)
            return terms[0] + terms[1] if len(terms) == 2 else terms[0]
        ops = [(a, pa, self.sel_a, self.pos_a, self.inplace[0]), (b, pb, self.sel_b, self.pos_b, self.inplace[1])]
        ops.sort(key=lambda o: ("whole", "slice", "index", "none").index(o[1].kind))  # start from the best layout
        (x, op, _, _, may_overwrite), rest = ops[0], ops[1]
        if op.kind == "whole":
            # A new tensor unless x is dead and no gradient is recorded: an in-place ReLU after the
            # addition must not overwrite a tensor the autograd graph still needs.
            out = x if may_overwrite and not recording else x.clone()
        elif op.kind == "slice":
            out = self._expand(x, op, None)  # zero-padded: a new tensor
        else:
            out = self._add_into(_zeros_like(a if a.shape[1] else b, self.n), x, op, ops[0][2], ops[0][3])
        return self._add_into(out, rest[0], rest[1], rest[2], rest[3])

    def extra_repr(self):
        pa, pb = self.plan
        return (f"n={self.n}, a: {len(self.pos_a)}/{self.n_a} used ({pa.kind}), "
                f"b: {len(self.pos_b)}/{self.n_b} used ({pb.kind}), inplace={self.inplace}")


class Expand(nn.Module):
    """Put the ``len(pos)`` channels of ``x`` back at positions ``pos`` of ``n`` zero channels (the
    network's output keeps its original width)."""

    def __init__(self, n: int, pos):
        super().__init__()
        self.n = n
        self.register_buffer("pos", _index(pos), persistent=False)
        self.register_buffer("gather", _index(_Operand(n, len(pos), range(len(pos)), pos).gather), persistent=False)

    def forward(self, x):
        if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():  # a gather, not a scatter
            return F.pad(x, (0, 0) * (x.dim() - 2) + (0, 1)).index_select(1, self.gather)
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
