"""Shrunk networks for inference: the widths shrink keeps, checked by brute force; the indexation-
addition's plans (in place, sliced, gathered); BatchNorm folding; the addition fused into convolutions."""
import copy

import pytest
import torch
import torch.nn as nn

from reprolib import surgery
from reprolib.counting import count
from reprolib.models import create
from reprolib.surgery.ops import IndexAdd

SIZE = (1, 3, 32, 32)


from test_surgery import trained_looking  # noqa: E402  (random BN statistics: leaks show)


def resnet20_masks(seed: int = 1) -> dict:
    """Random masks (about half the filters) on every conv of ResNet-20, plus channels that die in the
    residual stream: 2 and 9 pruned in the stem and in every stage-1 conv2 (so also 10 and 17 of stage 2,
    where the option-A shortcut puts them), and 10, 17 pruned in every stage-2 conv2."""
    g = torch.Generator().manual_seed(seed)
    model = create("resnet20")
    masks = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            keep = torch.rand(m.out_channels, generator=g) < 0.5
            keep[torch.randint(m.out_channels, (1,), generator=g)] = True  # no layer empty
            masks[name] = keep
    for name in ["conv1"] + [f"layer1.{i}.conv2" for i in range(3)]:
        masks[name][[2, 9]] = False
    for i in range(3):
        masks[f"layer2.{i}.conv2"][[10, 17]] = False
    return masks


def linearised(model: nn.Module) -> nn.Module:
    """A copy with every ReLU replaced by the identity: whether a channel reaches the output is then a
    property of the weights, not of which values a ReLU happens to clip on the test input."""
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.ReLU):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
    return model


def live_channels(model: nn.Module, module_name: str, x: torch.Tensor) -> int:
    """Brute force: how many channels of ``module_name``'s output change the network's output when set
    to zero. One batched pass: replica k of ``x`` has channel k zeroed, the last replica nothing (the
    reference, from the same pass: kernels may round differently at another batch size). A change
    counts if it exceeds 1e-9 of the output's scale (float64 rounding is ~1e-16; a live channel's
    effect is many orders larger)."""
    mod = model.get_submodule(module_name)
    with torch.no_grad():
        h = mod.register_forward_hook(lambda m, i, o: setattr(m, "_c", o.shape[1]))
        model(x)
        h.remove()
        c, n = mod._c, len(x)

        def zero(m, inp, out):
            out = out.clone()
            for k in range(c):
                out[k * n:(k + 1) * n, k] = 0
            return out
        h = mod.register_forward_hook(zero)
        out = model(x.repeat(c + 1, 1, 1, 1))
        h.remove()
    base = out[c * n:]
    tol = 1e-9 * base.abs().max().item()
    changed = [(out[k * n:(k + 1) * n] - base).abs().max().item() > tol for k in range(c)]
    return sum(changed)


def test_shrunk_widths_params_and_flops_match_a_brute_force_count():
    """Every width of the shrunk ResNet-20 is the number of channels whose zeroing changes the output
    of the masked network (ReLUs made identities, see ``linearised``); params and FLOPs follow from
    those widths by hand. A shrink that keeps too much (e.g. never narrows the residual stream) or too
    little fails here even where outputs still agree."""
    model = trained_looking("resnet20").double()
    masks = resnet20_masks()
    masked = linearised(surgery.apply_masks(model, masks).eval())
    small = surgery.shrink(model, masks)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    stream, size, params, flops = live_channels(masked, "relu", x), 32, 0, 0
    widths = {"conv1": stream}
    params += 3 * stream * 9 + 2 * stream
    flops += 3 * stream * 9 * size * size
    adds = [m for m in small.modules() if isinstance(m, IndexAdd)]
    for stage in (1, 2, 3):
        for i in range(3):
            block = f"layer{stage}.{i}"
            if stage > 1 and i == 0:
                size //= 2
            w1, w2 = live_channels(masked, f"{block}.relu1", x), live_channels(masked, f"{block}.bn2", x)
            new_stream = live_channels(masked, f"{block}.relu2", x)
            widths[f"{block}.conv1"], widths[f"{block}.conv2"] = w1, w2
            widths[f"{block}.add"] = new_stream
            params += stream * w1 * 9 + 2 * w1 + w1 * w2 * 9 + 2 * w2
            flops += (stream * w1 + w1 * w2) * 9 * size * size
            stream = new_stream
    params += stream * 10 + 10
    flops += stream * 10 + 10

    have = {name: small.get_submodule(name).out_channels for name in widths if not name.endswith(".add")}
    have.update({f"layer{s}.{i}.add": adds[3 * (s - 1) + i].n for s in (1, 2, 3) for i in range(3)})
    assert have == widths
    # The chosen masks really kill stream channels, so the check covers the residual stream.
    assert widths["conv1"] < 16 and widths["layer1.2.add"] < 16 and widths["layer2.2.add"] < 32
    n = count(small, SIZE)
    assert (n["params"], n["flops"]) == (params, flops)


def test_shrunk_network_trains_and_matches_the_masked_one_in_train_mode():
    """The recording path (no in-place additions while autograd records): same outputs as the masked
    network with batch statistics, and backward runs."""
    model = trained_looking("resnet20")
    masks = resnet20_masks()
    small, masked = surgery.shrink(model, masks).train(), surgery.apply_masks(model, masks).train()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y_small, y_masked = small(x), masked(x)
    assert (y_small - y_masked).abs().max().item() <= 1e-4
    y_small.square().sum().backward()
    assert all(p.grad is not None for p in small.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- IndexAdd plans

def eq1(op: IndexAdd, a, b):
    """Equation 1 written out channel by channel."""
    out = torch.zeros(a.shape[0], op.n, *a.shape[2:], dtype=a.dtype)
    for sel, pos, x in ((op.sel_a, op.pos_a, a), (op.sel_b, op.pos_b, b)):
        for s, p in zip(sel.tolist(), pos.tolist()):
            out[:, p] += x[:, s]
    return out


CASES = {  # n, (n_a, sel_a, pos_a), (n_b, sel_b, pos_b): every pair of plan kinds
    "whole+index": (6, (6, range(6), range(6)), (3, [0, 1, 2], [0, 2, 5])),
    "index+whole": (6, (4, [1, 3], [4, 0]), (6, range(6), range(6))),
    "whole+whole": (5, (5, range(5), range(5)), (5, range(5), range(5))),
    "slice+index": (8, (4, [0, 1, 2, 3], [2, 3, 4, 5]), (5, [0, 2, 4], [0, 1, 7])),
    "index+slice (subset)": (6, (5, [1, 2, 4], [0, 3, 5]), (4, [1, 2], [2, 3])),
    "index+index": (7, (3, [0, 1, 2], [6, 1, 3]), (3, [0, 2], [5, 0])),
    "whole+none": (4, (4, range(4), range(4)), (3, [], [])),
    "none+slice": (4, (2, [], []), (2, [0, 1], [1, 2])),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("mode", ["grad", "no_grad_inplace", "export"])
def test_index_add_plans_compute_equation_1(case, mode, monkeypatch):
    n, (n_a, sel_a, pos_a), (n_b, sel_b, pos_b) = CASES[case]
    op = IndexAdd(n, n_a, list(sel_a), list(pos_a), n_b, list(sel_b), list(pos_b))
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, n_a, 3, 3, generator=g), torch.randn(2, n_b, 3, 3, generator=g)
    want = eq1(op, a, b)
    if mode == "grad":
        a0, b0 = a.clone().requires_grad_(), b.clone().requires_grad_()
        out = op(a0, b0)
        out.sum().backward()  # every used input channel gets gradient 1, unused ones 0
        for x, sel in ((a0, op.sel_a), (b0, op.sel_b)):
            used = torch.zeros(x.shape[1], dtype=torch.bool)
            used[sel] = True
            grad = x.grad if x.grad is not None else torch.zeros_like(x)  # an operand not used at all: no gradient
            assert torch.equal(grad[:, used], torch.ones_like(grad[:, used]))
            assert not grad[:, ~used].any()
    elif mode == "no_grad_inplace":
        op.inplace = (True, True)
        with torch.no_grad():
            out = op(a.clone(), b.clone())
    else:
        monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
        out = op(a, b)
    assert torch.allclose(out, want, atol=1e-6), case


def test_index_add_leaves_its_operands_alone_unless_allowed():
    op = IndexAdd(4, 4, range(4), range(4), 2, [0, 1], [1, 3])
    a, b = torch.randn(1, 4, 2, 2), torch.randn(1, 2, 2, 2)
    a0 = a.clone()
    with torch.no_grad():
        op(a, b)
    assert torch.equal(a, a0)  # inplace defaults to (False, False)
    op.inplace = (True, False)
    with torch.no_grad():
        out = op(a, b)
    assert out.data_ptr() == a.data_ptr()  # dead operand: added into, no copy


class ReadAfterAdd(nn.Module):
    """``y`` is an operand of the first addition and read again by the second: it must not be overwritten."""

    def __init__(self):
        super().__init__()
        self.conv_a, self.conv_b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.relu(self.conv_b(x))
        s = self.conv_a(x) + y
        return s + y


def test_operand_read_after_the_addition_is_not_overwritten():
    torch.manual_seed(0)
    model = ReadAfterAdd().eval()
    masks = {"conv_a": torch.tensor([True, False, True, False, False, True])}
    small = surgery.shrink(model, masks, (1, 3, 8, 8))
    first, second = [m for m in small.modules() if isinstance(m, IndexAdd)]
    assert first.inplace[1] is False  # y (through the in-place ReLU) is read by the second addition
    assert second.inplace == (True, True)  # after the second addition neither s nor y is read again
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(small(x), surgery.apply_masks(model, masks)(x), atol=1e-6)


# ----------------------------------------------------------------------------- fold_bn, fuse_index_add

def test_fold_bn_keeps_the_function_and_removes_every_batchnorm():
    model = trained_looking("resnet56")
    masks = resnet20_masks()  # resnet20's layer names exist in resnet56 with the same widths
    small = surgery.shrink(model, masks)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for net in (model, small):
        folded = surgery.fold_bn(net)
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
        assert len(folded.folded) == 55
        with torch.no_grad():
            want, got = net.eval()(x), folded(x)
        assert (got - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def test_fold_bn_leaves_a_shared_output_and_refuses_batch_statistics():
    class TwoUsers(nn.Module):
        def __init__(self, stats=True):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=stats)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    folded = surgery.fold_bn(TwoUsers())
    assert folded.folded == [] and isinstance(folded.bn, nn.BatchNorm2d)

    class Single(TwoUsers):
        def forward(self, x):
            return self.bn(self.conv(x))

    with pytest.raises(ValueError, match="running statistics"):
        surgery.fold_bn(Single(stats=False))


@pytest.mark.parametrize("block", [16, None])
def test_fuse_index_add_keeps_the_function(block):
    model = trained_looking("resnet20")
    small = surgery.shrink(model, resnet20_masks())
    folded = surgery.fold_bn(small)
    fused = surgery.fuse_index_add(folded, block=block)
    assert fused.fused, "nothing was fused"
    for conv, k, n in fused.fused:
        assert fused.get_submodule(conv).out_channels == n > k
        if block:
            assert -(-n // block) == -(-k // block)  # no extra 16-channel block
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (fused(x) - small(x)).abs().max().item() <= 1e-4
    assert count(fused, SIZE)["flops"] > count(folded, SIZE)["flops"]  # the zero filters are real work
    with pytest.raises(TypeError, match="GraphModule"):
        surgery.fuse_index_add(model)
