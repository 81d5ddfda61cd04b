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


def train(features, labels, seed: int = 0, steps: int = 30) -> TinyNet:
    """A TinyNet trained ``steps`` full-batch Adam steps on ``features`` (rows) and ``labels``."""
    x = torch.tensor(features, dtype=torch.float32)
    y = torch.tensor(labels)
    torch.manual_seed(seed)
    net = TinyNet(n_features=x.shape[1])
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    return net.eval()
