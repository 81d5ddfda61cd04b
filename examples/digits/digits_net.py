"""The PyTorch network of the examples, importable as ``digits_net:DigitsNet``.

A ``state_dict`` holds only weights: the service that loads it imports this class, so it runs
with this folder on its import path (``inferbridge-local --python-path=examples/digits``) and
allows the module (``--allow-model-class=digits_net``).
"""

import torch


class DigitsNet(torch.nn.Module):
    """64 pixels in, ``hidden`` ReLU units, 10 class scores out."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(64, hidden)
        self.out = torch.nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))
