"""A small NumPy backpropagation engine in which the four steps are code you can read:
forward pass, loss calculation, backward pass (chain rule), weight update.

    net = MLP((64, 32, 10), activation="relu")
    net.optimizer = Adam(net.parameters(), lr=1e-3)
    logits = net.forward(x); loss = net.loss(logits, y); net.backward(); net.step()
"""
from dlforge.scratch.activations import ReLU, Sigmoid, Softmax, Tanh, get_activation
from dlforge.scratch.layers import Dense, Parameter
from dlforge.scratch.losses import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss, get_loss
from dlforge.scratch.network import MLP
from dlforge.scratch.optim import SGD, Adam, make_optimizer
from dlforge.scratch.trace import format_trace, trace_step

__all__ = ["MLP", "Dense", "Parameter", "Sigmoid", "ReLU", "Tanh", "Softmax", "get_activation",
           "MSELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "get_loss", "SGD", "Adam",
           "make_optimizer", "trace_step", "format_trace"]
