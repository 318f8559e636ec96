"""VGG-16 for CIFAR with batch norm, as in the HRank code: 13 conv layers (3x3, BN, ReLU),
max-pooling after stages 1-4, a 2x2 average pool, then FC 512-512 (BN, ReLU) and FC 512-classes."""
import torch.nn as nn

from . import register

CFG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class VGG(nn.Module):
    def __init__(self, cfg=CFG16, num_classes: int = 10):
        super().__init__()
        layers, cin = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1, bias=True), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d(2)
        self.classifier = nn.Sequential(nn.Linear(cin, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                        nn.Linear(512, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register("vgg16")
def vgg16(num_classes: int = 10):
    return VGG(CFG16, num_classes)
