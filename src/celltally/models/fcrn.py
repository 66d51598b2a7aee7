"""Fully convolutional regression networks FCRN-A and FCRN-B (Xie, Noble & Zisserman 2016).

Both regress a density map at the input's resolution; the count is its sum / scale.

FCRN-A follows the paper exactly: three conv3x3+ReLU+maxpool blocks (32, 64, 128 maps), a
512-map conv3x3 "fully connected" layer, three bilinear-upsample + conv3x3 + ReLU blocks (128, 64,
32) and a 1x1 convolution to one map: 1,365,825 parameters, a 38x38 receptive field.

FCRN-B: the paper says VGG-style, pooling after every two convolutions, up to 256 maps, 5x5
upsampling kernels and a 32x32 receptive field, but does not list every width. We read it as the
first three VGG blocks with the third cut to two convolutions (64, 64, pool, 128, 128, pool, 256,
256: six 3x3 convolutions and two poolings give exactly the 32x32 field), then two learned 5x5
upsampling layers (transposed convolutions of stride 2, 256 and 128 maps) and a 1x1 convolution:
3,603,521 parameters, the paper's "about 3.6 M". A learned 5x5 upsampling kernel is the
paper's "upsampling" for FCRN-B (FCRN-A's is fixed bilinear); as a transposed convolution it costs
a quarter of an upsample-then-convolve layer with the same weights.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from celltally.models.base import CountingModel, map_and_variance, variance_head
from celltally.models.config import ModelConfig
from celltally.models.registry import register_model


def conv_relu(in_maps: int, out_maps: int, kernel: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_maps, out_maps, kernel, padding=kernel // 2)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_maps))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def upsample_conv_relu(in_maps: int, out_maps: int, batch_norm: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        *conv_relu(in_maps, out_maps, 3, batch_norm),
    )


def learned_upsample_relu(in_maps: int, out_maps: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.ConvTranspose2d(in_maps, out_maps, 5, stride=2, padding=2, output_padding=1)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_maps))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class FCRN(CountingModel):
    """Shared by both FCRNs: ``build_layers(in_maps, bn)`` lists the layers, ending in the 1x1
    ``density`` convolution to the map."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.layers = nn.Sequential(self.build_layers(config.in_channels, config.batch_norm))
        self.init_weights()
        self.log_variance = variance_head(config, self.layers.density.in_channels)

    @staticmethod
    def build_layers(in_maps: int, bn: bool) -> OrderedDict[str, nn.Module]:
        raise NotImplementedError

    def forward(self, x):
        return map_and_variance(self.layers, self.log_variance, x)

    @property
    def readout(self) -> nn.Conv2d | None:
        return self.layers.density


@register_model("fcrn_a")
class FCRNA(FCRN):
    stride = 8
    tile_margin = 64
    min_size = 16

    @property
    def size_layer(self) -> nn.Module:
        return self.layers.conv4

    @staticmethod
    def build_layers(in_maps: int, bn: bool) -> OrderedDict[str, nn.Module]:
        return OrderedDict(
            conv1=conv_relu(in_maps, 32, 3, bn),
            pool1=nn.MaxPool2d(2),
            conv2=conv_relu(32, 64, 3, bn),
            pool2=nn.MaxPool2d(2),
            conv3=conv_relu(64, 128, 3, bn),
            pool3=nn.MaxPool2d(2),
            conv4=conv_relu(128, 512, 3, bn),
            up5=upsample_conv_relu(512, 128, bn),
            up6=upsample_conv_relu(128, 64, bn),
            up7=upsample_conv_relu(64, 32, bn),
            density=nn.Conv2d(32, 1, 1),
        )


@register_model("fcrn_b")
class FCRNB(FCRN):
    stride = 4
    tile_margin = 64
    min_size = 16

    @property
    def size_layer(self) -> nn.Module:
        return self.layers.conv6

    @staticmethod
    def build_layers(in_maps: int, bn: bool) -> OrderedDict[str, nn.Module]:
        return OrderedDict(
            conv1=conv_relu(in_maps, 64, 3, bn),
            conv2=conv_relu(64, 64, 3, bn),
            pool1=nn.MaxPool2d(2),
            conv3=conv_relu(64, 128, 3, bn),
            conv4=conv_relu(128, 128, 3, bn),
            pool2=nn.MaxPool2d(2),
            conv5=conv_relu(128, 256, 3, bn),
            conv6=conv_relu(256, 256, 3, bn),
            up7=learned_upsample_relu(256, 256, bn),
            up8=learned_upsample_relu(256, 128, bn),
            density=nn.Conv2d(128, 1, 1),
        )
