"""DCP (Zhuang et al. 2018): the cut of the network at a conv, the auxiliary loss points, and the greedy selection
preferring a channel that carries the label over a louder noise channel that only reconstruction favours."""
import pytest
import torch
import torch.nn as nn

from reprolib import criteria
from reprolib.criteria import dcp
from reprolib.models import create


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    model = create("resnet20").eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def test_aux_points_are_the_ends_of_all_stages_but_the_last(resnet20):
    assert dcp.default_aux_points(resnet20) == ["layer1.2.relu2", "layer2.2.relu2"]


@pytest.mark.parametrize("conv,end", [("layer1.1.conv2", "layer1.2.relu2"), ("layer3.0.conv2", None),
                                      ("layer2.0.conv2", "layer2.2.relu2")])
def test_the_cut_network_computes_what_the_network_does(resnet20, conv, end):
    """prefix then suffix with the conv's own weight = the network up to the loss point; the second output is the
    conv's own output (what the reconstruction loss compares)."""
    seen = {}
    hooks = [resnet20.get_submodule(conv).register_forward_hook(lambda m, i, o: seen.__setitem__("conv", o))]
    if end:
        hooks.append(resnet20.get_submodule(end).register_forward_hook(lambda m, i, o: seen.__setitem__("end", o.clone())))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = resnet20(x)
        split = dcp.Split(resnet20, conv, end)
        live = split.prefix(x)
        out, conv_out = split.suffix(*live, resnet20.get_submodule(conv).weight)
    for h in hooks:
        h.remove()
    assert torch.allclose(out, seen["end"] if end else logits, atol=1e-5)
    assert torch.allclose(conv_out, seen["conv"], atol=1e-5)
    assert split.n_live == 2                                    # the conv's input and the block's input (shortcut)


class LabelOrNoise(nn.Module):
    """conv_a (identity, 2 filters) -> BN -> ReLU -> conv_b (1 x 1) -> BN -> ReLU -> mean -> fc. Input channel 0
    carries the label (2y plus a little noise), channel 1 is louder pure noise; conv_b passes channel 1 with gain 2,
    so reconstructing conv_b's output rewards channel 1 most; the classifier reads only conv_b's filter 0."""

    def __init__(self, gain=2.0):
        super().__init__()
        self.conv_a, self.bn_a, self.relu_a = nn.Conv2d(2, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU()
        self.conv_b, self.bn_b, self.relu_b = nn.Conv2d(2, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv_a.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            self.conv_b.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, gain]]).view(2, 2, 1, 1))
            self.bn_b.bias.fill_(1.0)
            self.fc.weight.copy_(torch.tensor([[-4.0, 0.0], [4.0, 0.0]]))
            self.fc.bias.copy_(torch.tensor([8.0, -8.0]))

    def forward(self, x):
        x = self.relu_a(self.bn_a(self.conv_a(x)))
        return self.fc(self.relu_b(self.bn_b(self.conv_b(x))).mean((2, 3)))


def label_or_noise_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        y = torch.randint(0, 2, (n,), generator=g)
        x = torch.stack([2 * y.float()[:, None, None] + 0.1 * torch.randn(n, 4, 4, generator=g),
                         2 * torch.randn(n, 4, 4, generator=g)], 1)
        out.append((x, y))
    return out


def test_dcp_prefers_the_channel_that_carries_the_label():
    model, batches = LabelOrNoise().eval(), label_or_noise_data()
    with torch.no_grad():
        assert all(bool((model(x).argmax(1) == y).all()) for x, y in batches)   # the network classifies perfectly
    reconstruction_only = criteria.get("dcp")(model, ["conv_a"], batches, softmax_weight=0.0)["conv_a"]
    assert reconstruction_only.tolist() == [1.0, 2.0]          # L_M alone picks the loud noise channel first
    scores = criteria.get("dcp")(model, ["conv_a"], batches)["conv_a"]
    assert scores.tolist() == [2.0, 1.0]                       # the joint loss picks the label channel first


def test_scores_are_the_greedy_order_on_a_resnet(resnet20):
    x = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))]
    flags, rng = [q.requires_grad for q in resnet20.parameters()], torch.get_rng_state()
    s = criteria.get("dcp")(resnet20, ["layer2.2.conv1"], x, head_epochs=1)["layer2.2.conv1"]
    assert sorted(s.tolist()) == list(range(1, 33))            # a full order: C for the first channel chosen ... 1
    assert [q.requires_grad for q in resnet20.parameters()] == flags and all(q.grad is None for q in resnet20.parameters())
    assert torch.equal(torch.get_rng_state(), rng)              # the heads' seeded init leaves the caller's RNG alone
    with pytest.raises(ValueError, match="internal_layers"):
        criteria.get("dcp")(resnet20, ["layer2.2.conv2"], x)
    with pytest.raises(ValueError, match="needs data"):
        criteria.get("dcp")(resnet20, ["layer2.2.conv1"])
