"""Sensitivity-driven regularisation (reprolib.sensitivity, Tartaglione et al. 2018) on cases computed by hand."""
import pytest
import torch
import torch.nn as nn

from reprolib import data, train
from reprolib.models import create
from reprolib.sensitivity import SensitivityRegulariser, insensitivity, prune_below, sensitivity


def _tied():
    """Linear(3 -> 2), no bias, both rows equal: the two logits are equal, so softmax = (1/2, 1/2) for every
    input and d p_t / d W_kj = p_t (delta_kt - p_k) x_j = +-x_j / 4."""
    model = nn.Sequential(nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.3, -0.7, 0.5], [0.3, -0.7, 0.5]]))
    return model


def test_sensitivity_of_a_tied_layer_by_hand():
    x = torch.tensor([[8.0, 1.0, 0.0], [8.0, 1.0, 0.0]])
    # labels 0 and 1: the two images' gradients are opposite; the mean of |.| is x_j / 4, the |mean| would be 0
    S = sensitivity(_tied(), ["0"], x, torch.tensor([0, 1]))["0"]
    assert torch.allclose(S, torch.tensor([[2.0, 0.25, 0.0], [2.0, 0.25, 0.0]]))
    assert torch.allclose(insensitivity(S), torch.tensor([[0.0, 0.75, 1.0], [0.0, 0.75, 1.0]]))


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_sensitivity_equals_the_mean_of_per_image_gradient_magnitudes(name):
    torch.manual_seed(0)
    model = create(name).train()
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    x, y = torch.rand(5, 1, 28, 28), torch.tensor([0, 3, 3, 7, 9])
    S = sensitivity(model, layers, x, y)
    weights = [model.get_submodule(n).weight for n in layers]
    model.eval()
    expected = [torch.zeros_like(w) for w in weights]
    for xi, yi in zip(x, y):  # brute force: one backward pass per image, through the model's own weights
        grads = torch.autograd.grad(model(xi[None]).softmax(1)[0, yi], weights)
        for e, g in zip(expected, grads):
            e += g.abs() / len(x)
    for n, e in zip(layers, expected):
        torch.testing.assert_close(S[n], e, rtol=1e-4, atol=1e-8)
    assert model.get_submodule(layers[0]).weight.grad is None


def test_the_step_leaves_sensitive_weights_and_shrinks_insensitive_ones():
    model, lam = _tied(), 0.1
    before = model[0].weight.detach().clone()
    reg = SensitivityRegulariser(["0"], lam)
    reg(1, model, torch.tensor([[8.0, 1.0, 0.0]]), torch.tensor([0]))
    after = model[0].weight.detach()
    assert torch.equal(after[:, 0], before[:, 0])  # S = 2 >= 1: untouched
    assert torch.allclose(after[:, 1], before[:, 1] * (1 - lam * 0.75))  # S = 1/4
    assert torch.allclose(after[:, 2], before[:, 2] * (1 - lam))  # x_2 = 0: S = 0, the full shrink
    assert reg.last["0"].item() == pytest.approx((0 + 0.75 + 1) / 3)
    l2 = _tied()
    SensitivityRegulariser(["0"], lam, variant="l2")(1, l2, torch.zeros(1, 3), torch.tensor([0]))
    assert torch.allclose(l2[0].weight, before * (1 - lam))  # the control: a plain decoupled decay


def _train_two_pixel_task(variant):
    """Linear(4 -> 2) on 2 x 2 images: pixel 0 is the label, pixel 3 noise, pixels 1 and 2 zero."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (160,), generator=g)
    x = torch.zeros(160, 1, 2, 2, dtype=torch.uint8)
    x[:, 0, 0, 0] = (y * 255).to(torch.uint8)
    x[:, 0, 1, 1] = torch.randint(0, 256, (160,), generator=g).to(torch.uint8)
    d = data.Cifar10(x[:128], y[:128], x[128:], y[128:], "synthetic")
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    history = train.fit(model, d, epochs=30, lr=0.5, batch_size=32, weight_decay=0.0, momentum=0.0, bf16=False,
                        channels_last=False, on_step=SensitivityRegulariser(["1"], 0.02, variant=variant))
    return model, history


def test_in_training_insensitive_weights_shrink_and_sensitive_ones_are_spared():
    model, history = _train_two_pixel_task("specific")
    assert history[-1]["test_acc"] == 1.0
    w = model[1].weight.detach().abs()
    assert w[:, 3].max() < 0.2 * w[:, 0].min()  # the noise input shrank, the informative one did not
    control, _ = _train_two_pixel_task("l2")  # the same shrink on every weight, sensitivity ignored
    assert (w[:, 0] > 1.05 * control[1].weight.detach().abs()[:, 0]).all()  # the sensitive weights kept more
    masks = prune_below(model, ["1"], float(w[:, 3].max()) * 1.01)
    assert masks["1"][:, 0].all() and not masks["1"][:, 3].any() and not model[1].weight[:, 3].any()


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="unknown variant 'unspecific'"):
        SensitivityRegulariser(["0"], 0.1, variant="unspecific")
    with pytest.raises(ValueError, match="0 <= lam < 1"):
        SensitivityRegulariser(["0"], 1.5)
    with pytest.raises(ValueError, match="as many labels"):
        sensitivity(_tied(), ["0"], torch.zeros(2, 3), torch.tensor([0]))
