"""Load a model `semiflow export` wrote into PyTorch, built from torchvision's own ResNet blocks.

    import semiflow_torch
    model, meta = semiflow_torch.load("model.safetensors")   # eval mode; sidecar model.json
    logits = model(x)   # x: N×C×H×W float32, RGB pixels / 255 (no mean/std normalization)

For width 1 with the ImageNet stem the module is torchvision's `resnetNN()` itself (with a
TF-"SAME" max-pool, which has no parameters); other widths and the CIFAR stem use torchvision's
`ResNet` class with the widths from the sidecar. Either way the state_dict is loaded with
`strict=True`. Needs torch, torchvision and safetensors.
"""

import json
import math
import os

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet


class TFSameMaxPool(nn.Module):
    """3×3 stride-2 max-pool with TensorFlow's "SAME" padding: the extra row/column at the end
    (torchvision's MaxPool2d(3, 2, padding=1) pads both sides: one pixel off on even sizes).
    Inputs follow a ReLU (≥ 0), so zero padding equals −∞ padding."""

    def forward(self, x):
        h, w = x.shape[-2:]
        ph = max((math.ceil(h / 2) - 1) * 2 + 3 - h, 0)
        pw = max((math.ceil(w / 2) - 1) * 2 + 3 - w, 0)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return F.max_pool2d(x, 3, 2)


def _fc(modules):
    """The `fc` of the sidecar: one Linear (torchvision's) or an nn.Sequential."""
    built = []
    for m in modules:
        kind = m["module"]
        if kind == "Linear":
            built.append(nn.Linear(m["in_features"], m["out_features"], bias=m["bias"]))
        elif kind == "BatchNorm1d":
            built.append(nn.BatchNorm1d(m["num_features"], eps=m["eps"]))
        elif kind == "ReLU":
            built.append(nn.ReLU(inplace=True))
        elif kind == "Identity":
            built.append(nn.Identity())
        else:
            raise ValueError(f"unknown fc module {kind}")
    return built[0] if len(built) == 1 else nn.Sequential(*built)


class ScaledResNet(ResNet):
    """torchvision's ResNet with per-stage widths (semiflow's width multiplier) and either stem;
    forward, blocks and key names are torchvision's."""

    def __init__(self, arch):
        nn.Module.__init__(self)
        eps = arch["bn_eps"]
        self._norm_layer = lambda c: nn.BatchNorm2d(c, eps=eps)
        self.dilation, self.groups, self.base_width = 1, 1, 64
        block = BasicBlock if arch["block"] == "basic" else Bottleneck
        widths, layers, cin = arch["widths"], arch["layers"], arch["in_channels"]
        if arch["stem"] == "cifar":
            self.conv1 = nn.Conv2d(cin, widths[0], 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        elif arch["stem"] == "imagenet":
            self.conv1 = nn.Conv2d(cin, widths[0], 7, 2, 3, bias=False)
            self.maxpool = TFSameMaxPool()
        else:
            raise ValueError(f"stem {arch['stem']} has no torchvision layout (selective kernels?)")
        self.bn1 = self._norm_layer(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.inplanes = widths[0]
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = _fc(arch["fc"])


def build(meta):
    """An untrained module of the sidecar's architecture, torchvision key names."""
    arch = meta["torch"]
    ctor = arch.get("torchvision_constructor")
    fc = arch["fc"]
    if ctor and arch["bn_eps"] == 1e-5:
        model = getattr(torchvision.models, ctor)()
        model.maxpool = TFSameMaxPool()
        model.fc = _fc(fc)
        return model
    return ScaledResNet(arch)


def load(path, sidecar=None):
    """(model in eval mode, sidecar dict) for an exported .safetensors file."""
    sidecar = sidecar or os.path.splitext(path)[0] + ".json"
    with open(sidecar) as f:
        meta = json.load(f)
    if meta["naming"] != "torchvision":
        raise ValueError(f"{path}: exported with {meta['naming']} names; export with --format torchvision")
    model = build(meta)
    model.load_state_dict(load_file(path), strict=True)
    return model.eval(), meta
