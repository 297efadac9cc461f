"""Tiny vision models shared by the test modules (built in milliseconds, seeded)."""

from __future__ import annotations

from pathlib import Path

import torch


class TinyNet(torch.nn.Module):
    """Two named conv layers; its units respond to colour and edges of random images."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(pixels)))


def tiny_vit_directory(folder: Path, size: int) -> Path:
    """A seeded one-layer transformers ViT and its image processor saved in ``folder``."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(
        image_size=size,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=24,
    )
    torch.manual_seed(0)
    ViTModel(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)
    return folder
