"""BatchNorm layers that look trained (gammas, shifts and running statistics away from the identity), for
tests whose answer would be trivially right with BN at its initial values."""
import torch
import torch.nn as nn


def trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` in eval mode with every BatchNorm2d's affine parameters and statistics drawn at random."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.3, 1.2)
            m.bias.data.uniform_(-0.2, 0.3)
            m.running_mean.data.uniform_(-0.2, 0.2)
            m.running_var.data.uniform_(0.5, 2.0)
    return model.eval()
