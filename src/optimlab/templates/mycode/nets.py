"""A small convolutional network for 1x28x28 images (MNIST-like), with BatchNorm and no Dropout."""

from __future__ import annotations

from torch import nn


class SmallCNN(nn.Module):
    """conv 3x3 (``channels``) - BatchNorm - ReLU - max-pool 2, conv 3x3 (2 x ``channels``) - BatchNorm -
    ReLU - max-pool 2, then a linear classifier.

    ``num_classes`` and ``input_shape`` (per sample, ``(C, H, W)``) are filled in by optimlab from the
    data set (their names in the signature are what asks for them); ``channels`` and ``hidden`` come
    from ``[model_options]``. ``hidden = 0``: no hidden dense layer.
    """

    def __init__(self, num_classes: int, channels: int = 8, hidden: int = 0,
                 input_shape: tuple[int, ...] = (1, 28, 28)):
        super().__init__()
        c, h, w = input_shape
        # bias=False: a convolution feeding a BatchNorm has its bias subtracted again by the batch mean,
        # so the bias gets only rounding-noise gradients (~1e-9), which Adam-like optimizers (dividing by
        # sqrt(v)) and sign-based ones amplify into full-size steps of noise. BatchNorm's own shift
        # (beta) plays the bias's part.
        self.features = nn.Sequential(
            nn.Conv2d(c, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1, bias=False), nn.BatchNorm2d(2 * channels),
            nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        flat = 2 * channels * (h // 4) * (w // 4)
        self.classifier = (nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
                           if hidden else nn.Linear(flat, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))
