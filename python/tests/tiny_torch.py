"""A tiny PyTorch model for the tests, importable as ``tiny_torch:TinyNet``."""

import torch


class TinyNet(torch.nn.Module):
    """One hidden layer: ``n_features`` inputs, ``n_outputs`` outputs (class scores or a value)."""

    def __init__(self, n_features: int = 64, n_hidden: int = 16, n_outputs: int = 10) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(n_features, n_hidden)
        self.out = torch.nn.Linear(n_hidden, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))
