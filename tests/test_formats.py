"""formats: each network's memory format and precision picked by measuring."""
import pytest
import torch

from reprolib import formats, surgery
from reprolib.models import create


def test_formatted_network_computes_the_same_and_accepts_nchw_input():
    torch.manual_seed(0)
    model = create("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    net = formats.prepare(model, {"memory_format": "channels_last", "bf16": False})
    with torch.no_grad():
        assert torch.allclose(net(x), model(x), atol=1e-5)
        assert net.module.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        y16, y = formats.prepare(model, {"memory_format": "contiguous", "bf16": True})(x), model(x)
    assert y16.dtype == torch.float32 and 0 < (y16 - y).abs().max().item() < 0.05 * y.abs().max().item()


def test_pick_inference_times_every_variant_in_every_format():
    torch.manual_seed(0)
    model = create("resnet20").eval()
    best, ms = formats.pick_inference({"plain": model, "fold": surgery.fold_bn(model)}, (2, 3, 32, 32),
                                      repeats=1, warmup=0, threads=1)
    assert set(ms) == {"plain|fp32", "plain|fp32+cl", "fold|fp32", "fold|fp32+cl"}
    assert best["ms"] == min(ms.values()) and f"{best['variant']}|{formats.name(best)}" in ms


def test_pick_training_trains_copies_only():
    torch.manual_seed(0)
    model = create("resnet20")
    before = [p.detach().clone() for p in model.parameters()]
    best, ips = formats.pick_training(model, batch_size=4, repeats=1, warmup=0, threads=1)
    assert set(ips) == {"fp32", "fp32+cl", "bf16", "bf16+cl"} and all(v > 0 for v in ips.values())
    assert best["images_per_s"] == max(ips.values())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_bad_formats_are_named():
    with pytest.raises(ValueError, match="unknown memory_format 'nhwc'"):
        formats.name({"memory_format": "nhwc", "bf16": False})
    with pytest.raises(ValueError, match="keys 'memory_format' and 'bf16'"):
        formats.prepare(create("resnet20"), {"memory_format": "contiguous"})
    with pytest.raises(ValueError, match="at least one variant"):
        formats.pick_inference({}, (1, 3, 32, 32))
