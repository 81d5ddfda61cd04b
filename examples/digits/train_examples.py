"""Trains the models of the Java examples (A/B, cascade, per-key models, PyTorch).

Writes to OUTPUT_DIR, next to what train_model.py writes there (run it first):
  digits_b.pkl            a second classifier for the A/B example: a shallow decision tree
  cascade_high.pkl        stage two of the cascade: from the softmax of stage one's class
                          probabilities (digits.pkl), whether the digit is 5 or more (0/1)
  region_0..2.pkl         per-key models, each trained on a third of the training rows
  digits.ts               a small PyTorch network (TorchScript) giving class scores
  digits_state.pt         the same network's weights (a state_dict of digits_net:DigitsNet)
  digits.onnx             digits.pkl exported to ONNX (class probabilities)
  digits.skops,           digits.pkl and region_0.pkl in skops' safe format
  region_0.skops
All models take pixels / 16, as the examples' Step.scale(1/16) gives them.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier
from train_model import PIXEL_SCALE, split


def _save(model, path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(model, f)


def _torch_net(train_x, train_y, out: Path) -> None:
    import torch
    from digits_net import DigitsNet

    torch.manual_seed(0)
    net = DigitsNet(hidden=32)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    x = torch.tensor(train_x, dtype=torch.float32)
    y = torch.tensor(train_y)
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    torch.jit.script(net.eval()).save(str(out / "digits.ts"))
    torch.save(net.state_dict(), out / "digits_state.pt")


def _safe_formats(digits_model, out: Path) -> None:
    import skops.io
    from skl2onnx import to_onnx

    onnx_model = to_onnx(digits_model, np.zeros((1, 64), np.float32), options={id(digits_model): {"zipmap": False}})
    (out / "digits.onnx").write_bytes(onnx_model.SerializeToString())
    skops.io.dump(digits_model, out / "digits.skops")
    with open(out / "region_0.pkl", "rb") as f:
        skops.io.dump(pickle.load(f), out / "region_0.skops")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", type=Path)
    args = parser.parse_args()
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    train_x, _, train_y, _ = split()
    train_x = train_x * PIXEL_SCALE

    _save(DecisionTreeClassifier(max_depth=6, random_state=0).fit(train_x, train_y), out / "digits_b.pkl")
    with open(out / "digits.pkl", "rb") as f:
        stage_one = pickle.load(f)
    probabilities = stage_one.predict_proba(train_x)
    # The cascade applies Step.softmax() to stage one's output before stage two.
    softmax = np.exp(probabilities - probabilities.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    _save(LogisticRegression(max_iter=2000).fit(softmax, (train_y >= 5).astype(int)), out / "cascade_high.pkl")
    for i, rows in enumerate(np.array_split(np.arange(len(train_y)), 3)):
        _save(LogisticRegression(max_iter=2000).fit(train_x[rows], train_y[rows]), out / f"region_{i}.pkl")
    _torch_net(train_x, train_y, out)
    _safe_formats(stage_one, out)
    print(f"trained the example models into {out}")


if __name__ == "__main__":
    main()
