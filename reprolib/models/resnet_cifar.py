"""CIFAR ResNets (He et al. 2016, Sec. 4.2) as in the HRank code: 3 stages of 16/32/64
channels, option-A shortcut (stride-2 subsampling + zero-padded channels), 6n+2 layers."""
import torch.nn as nn
import torch.nn.functional as F

from . import register


class PadShortcut(nn.Module):
    """Option-A shortcut: keep every other pixel, pad planes // 4 zero channels on each side."""

    def __init__(self, planes: int):
        super().__init__()
        self.planes = planes

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.planes // 4, self.planes // 4))


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)  # after the residual addition
        self.shortcut = PadShortcut(planes) if stride != 1 or inplanes != planes else nn.Identity()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """``zero_init_residual=True`` starts every block's ``bn2`` weight at 0 (torchvision's option). With the
    option-A shortcut that is a trap, kept only so that the guard test can show it: the channels the
    shortcut zero-pads are then exactly 0 on both paths, ReLU passes no gradient at 0, and those ``bn2``
    channels never train (576 of 1,008 in ResNet-56). The default is the standard initialisation of He et
    al. and HRank's code (every BN weight 1); the baselines warm the learning rate up instead."""

    def __init__(self, depth: int, num_classes: int = 10, zero_init_residual: bool = False):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        inplanes, stages = 16, []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(inplanes, planes, stride if i == 0 else 1))
                inplanes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if zero_init_residual and isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


for _depth in (20, 32, 56, 110):
    register(f"resnet{_depth}")(lambda num_classes=10, zero_init_residual=False, _d=_depth:
                                ResNetCifar(_d, num_classes, zero_init_residual))
