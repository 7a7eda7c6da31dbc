"""DeepOBS's ``fmnist_2c2d`` test problem (Schneider, Balles & Hennig, ICLR 2019) written as user code:
the network as an ``nn.Module`` that a study names by import path (``fmnist_2c2d:Net2c2d``, with this
folder on ``python_path``), on optimlab's built-in ``fashion-mnist``.

The network: conv 5x5, 32 filters, "same" padding, ReLU, max-pool 2/2; conv 5x5, 64 filters, "same"
padding, ReLU, max-pool 2/2; dense 1024, ReLU; dense 10. Weights truncated normal with std 0.05, cut at
2 std; biases 0.05. Cross-entropy loss (optimlab's classification task); batch 128, 100 epochs in
DeepOBS (fmnist_2c2d.toml runs a much shorter budget).

Data: ``optimlab data list`` says whether Fashion-MNIST is found. On Debian/Ubuntu ``apt-get install
dataset-fashion-mnist`` installs it where optimlab looks; elsewhere optimlab downloads it on first use
when a network is there, or put the four ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` files in
``DATA_DIR/fashion-mnist/`` and pass ``--data-dir DATA_DIR``.

    optimlab study run examples/own_code/fmnist_2c2d.toml --report
"""

from __future__ import annotations

import torch
from torch import nn


def _truncated_normal_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """TensorFlow's truncated normal: N(0, std^2) redrawn outside +-2 std (as DeepOBS initializes)."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2 * std, b=2 * std)


class Net2c2d(nn.Module):
    """DeepOBS's 2c2d network for 28x28 grey images (``input_shape`` and ``num_classes`` from the data)."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28)):
        super().__init__()
        c, h, w = input_shape
        if h % 4 or w % 4:
            raise ValueError(f"Net2c2d needs images whose sides divide by 4; got {h}x{w}")
        self.features = nn.Sequential(
            nn.Conv2d(c, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),  # padding 2: "same" for 5x5
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Linear(64 * (h // 4) * (w // 4), 1024), nn.ReLU(),
                                        nn.Linear(1024, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                _truncated_normal_(m.weight, std=0.05)
                nn.init.constant_(m.bias, 0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
