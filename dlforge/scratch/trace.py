"""Watch one training step: statistics for each of the four steps of backpropagation.

trace_step(net, x, y) runs forward / loss / backward / step exactly as training does and
records: per-layer output statistics (forward), the loss, per-layer gradient norms (backward),
per-layer update sizes ||dW|| and ||dW|| / ||W|| (update). format_trace() prints them.
"""
from __future__ import annotations

import numpy as np

from dlforge.scratch.layers import Dense
from dlforge.scratch.network import MLP

HEADINGS = ("Step 1 - forward pass", "Step 2 - loss calculation",
            "Step 3 - backward pass (chain rule)", "Step 4 - weight update")


def layer_names(net: MLP) -> list[str]:
    """dense1, relu1, dense2, relu2, dense3: an activation takes its Dense layer's number."""
    names, k = [], 0
    for layer in net.layers:
        k += isinstance(layer, Dense)
        names.append(f"dense{k}" if isinstance(layer, Dense) else f"{layer.name}{k}")
    return names


def _stats(name: str, h: np.ndarray, is_relu: bool) -> dict:
    row = {"layer": name, "shape": tuple(h.shape), "mean": float(h.mean()), "std": float(h.std()),
           "min": float(h.min()), "max": float(h.max())}
    if is_relu:                       # a unit is dead on this batch if it is 0 for every sample
        row["zeros"] = float((h <= 0).mean())
        row["dead"] = float((h <= 0).all(axis=0).mean())
    return row


def trace_step(net: MLP, x: np.ndarray, y: np.ndarray) -> dict:
    """One full training step (it does update the weights), with statistics of each step."""
    logits = net.forward(x)                                          # 1. forward
    names = layer_names(net)
    forward = [_stats("input", np.asarray(x, dtype=net.dtype), False)]
    forward += [_stats(n, h, n.startswith("relu")) for n, h in zip(names, net.outputs)]
    loss = net.loss(logits, y)                                       # 2. loss
    net.backward()                                                   # 3. backward
    dense = [(n, l) for n, l in zip(names, net.layers) if isinstance(l, Dense)]
    backward = [{"layer": n, "grad_W": float(np.linalg.norm(l.W.grad)),
                 "grad_b": float(np.linalg.norm(l.b.grad))} for n, l in reversed(dense)]
    before = [l.W.data.copy() for _, l in dense]
    net.step()                                                       # 4. update
    update = []
    for (n, l), w0 in zip(dense, before):
        dw, w = float(np.linalg.norm(l.W.data - w0)), float(np.linalg.norm(w0))
        update.append({"layer": n, "W_norm": w, "delta_W": dw, "relative": dw / max(w, 1e-30)})
    return {"forward": forward, "loss": loss, "loss_name": net.criterion.name,
            "backward": backward, "update": update,
            "optimizer": type(net.optimizer).__name__, "lr": net.optimizer.lr}


def _forward_table(rows: list[dict]) -> list[str]:
    out = [f"  {'layer':<10}{'output':>12}{'mean':>10}{'std':>10}{'min':>10}{'max':>10}"
           f"{'zeros':>9}{'dead units':>12}"]
    for r in rows:
        line = (f"  {r['layer']:<10}{str(r['shape']):>12}{r['mean']:>10.4f}{r['std']:>10.4f}"
                f"{r['min']:>10.4f}{r['max']:>10.4f}")
        if "dead" in r:
            line += f"{r['zeros']:>9.1%}{r['dead']:>12.1%}"
        out.append(line)
    return out


def format_trace(info: dict) -> str:
    """The trace as text, under one heading per step of backpropagation."""
    lines = [f"=== {HEADINGS[0]}: x -> Dense (z = x W + b) -> activation -> ... -> logits ==="]
    lines += _forward_table(info["forward"])
    lines += [f"=== {HEADINGS[1]} ===", f"  {info['loss_name']} loss = {info['loss']:.6f}"]
    lines += [f"=== {HEADINGS[2]}: dL/dW = x^T dL/dz, dL/dx = dL/dz W^T ===",
              f"  {'layer':<10}{'||dL/dW||':>14}{'||dL/db||':>14}"]
    lines += [f"  {r['layer']:<10}{r['grad_W']:>14.6g}{r['grad_b']:>14.6g}"
              for r in info["backward"]]
    lines += [f"=== {HEADINGS[3]}: {info['optimizer']} (lr = {info['lr']:g}) ===",
              f"  {'layer':<10}{'||W||':>12}{'||ΔW||':>14}{'||ΔW||/||W||':>16}"]
    lines += [f"  {r['layer']:<10}{r['W_norm']:>12.4f}{r['delta_W']:>14.6g}{r['relative']:>16.3e}"
              for r in info["update"]]
    return "\n".join(lines)
