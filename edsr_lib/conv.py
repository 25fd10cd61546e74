"""The network's convolution layer, kept in one swappable place.

Every 3x3 convolution in the model is made by `make_conv`; a faster CPU kernel can replace it here without touching
the model definition. Parameters are always named and shaped as `nn.Conv2d` (`weight` [out, in, k, k], `bias`),
so checkpoints are interchangeable whatever kernel runs.
"""
from mindspore import nn


def make_conv(in_channels, out_channels, kernel_size=3):
    """Stride 1, 'same' zero padding, with bias: the only convolution EDSR uses."""
    return nn.Conv2d(
        in_channels, out_channels, kernel_size, stride=1, pad_mode="pad", padding=kernel_size // 2, has_bias=True
    )
