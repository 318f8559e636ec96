"""LeNet-300-100 and LeNet-5 (the Caffe variant used by Han et al. 2015) for 28x28 grey images."""
import torch.nn as nn

from . import register


@register("lenet300")
def lenet300(num_classes: int = 10):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(inplace=True),
                         nn.Linear(300, 100), nn.ReLU(inplace=True), nn.Linear(100, num_classes))


@register("lenet5")
def lenet5(num_classes: int = 10):
    return nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(800, 500), nn.ReLU(inplace=True), nn.Linear(500, num_classes))
