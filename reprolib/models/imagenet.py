"""torchvision's ImageNet ResNet-50, random init (used for structure studies only)."""
import torchvision

from . import register


@register("resnet50")
def resnet50(num_classes: int = 1000):
    return torchvision.models.resnet50(weights=None, num_classes=num_classes)
