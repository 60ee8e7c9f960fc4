"""Small from-scratch backbones: an MLP, a small CNN, and the reduced ResNet-18
of the online-CL papers (Lopez-Paz & Ranzato; Mai et al.; nf=20, 160-d features)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cl.core.registry import backbones


@dataclass
class MLPConfig:
    hidden: int = 256
    layers: int = 2


class MLP(nn.Module):
    def __init__(self, cfg: MLPConfig, input_shape):
        super().__init__()
        d, mods = math.prod(input_shape), []
        for _ in range(cfg.layers):
            mods += [nn.Linear(d, cfg.hidden), nn.ReLU(inplace=True)]
            d = cfg.hidden
        self.net = nn.Sequential(nn.Flatten(), *mods)
        self.out_dim = d

    def forward(self, x):
        return self.net(x)


@backbones.register("mlp", MLPConfig)
def mlp(cfg: MLPConfig, input_shape):
    """Fully connected ReLU network on flattened inputs."""
    return MLP(cfg, input_shape)


@dataclass
class CNNConfig:
    channels: int = 32
    blocks: int = 3


class SmallCNN(nn.Module):
    def __init__(self, cfg: CNNConfig, input_shape):
        super().__init__()
        c_in, mods, c = input_shape[0], [], cfg.channels
        ends = []
        for i in range(cfg.blocks):
            mods += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if min(input_shape[1:]) >> (i + 1) >= 1:
                mods.append(nn.MaxPool2d(2, ceil_mode=True))
            ends.append(len(mods) - 1)
            c_in, c = c, c * 2
        self.net = nn.Sequential(*mods, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = c_in
        #: the modules whose outputs are the per-block feature maps (B, C, H, W), in forward order
        #: (read by strategies that distil intermediate maps, e.g. PODNet's forward hooks)
        self.stage_names = [f"net.{i}" for i in ends]

    def forward(self, x):
        return self.net(x)


@backbones.register("cnn", CNNConfig)
def cnn(cfg: CNNConfig, input_shape):
    """Small conv net: blocks of conv-BN-ReLU-maxpool, global average pool."""
    if len(input_shape) != 3:
        raise ValueError(f"cnn needs image input (C, H, W), got shape {input_shape}")
    return SmallCNN(cfg, input_shape)


@dataclass
class ResNetConfig:
    nf: int = 20  # 20 in Mai et al. / PCR; 64 gives the full-width ResNet-18 (ER-FSL)


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.short(x))


class ReducedResNet18(nn.Module):
    """ResNet-18 layout [2,2,2,2] with widths nf, 2nf, 4nf, 8nf and a 3x3 stem;
    features are the global average of the last stage (8*nf, 160-d for nf=20)."""

    def __init__(self, cfg: ResNetConfig, input_shape):
        super().__init__()
        nf = cfg.nf
        self.conv1 = nn.Conv2d(input_shape[0], nf, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(nf)
        layers, c_in = [], nf
        for i, stride in enumerate((1, 2, 2, 2)):
            c_out = nf * 2 ** i
            layers += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.out_dim = c_in
        #: the last block of each of the four stages: its output is the stage's feature map (B, C, H, W)
        self.stage_names = [f"layers.{i}" for i in (1, 3, 5, 7)]

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


@backbones.register("resnet18r", ResNetConfig)
def resnet18r(cfg: ResNetConfig, input_shape):
    """Reduced ResNet-18 of the online-CL papers (nf=20 by default)."""
    if len(input_shape) != 3:
        raise ValueError(f"resnet18r needs image input (C, H, W), got shape {input_shape}")
    return ReducedResNet18(cfg, input_shape)


@dataclass
class IdentityConfig:
    pass


class Identity(nn.Module):
    def __init__(self, input_shape):
        super().__init__()
        self.out_dim = math.prod(input_shape)

    def forward(self, x):
        return x.flatten(1)


@backbones.register("identity", IdentityConfig)
def identity(cfg: IdentityConfig, input_shape):
    """No backbone: flattened inputs are the features (vectors, cached features)."""
    return Identity(input_shape)
