"""A 3×3, stride-1, padding-1 convolution whose CPU weight gradient is one matrix product per pair of images.

On a 2-vCPU AMD EPYC with AVX2 (the CI machine's kind), oneDNN computes MY_NET's convolution weight gradients
at about half the speed of their forward pass on channels-last tensors (conv2 at batch 64: 102-139 ms over
four runs, against 40-45 ms; its input gradient takes 37-40 ms), and they are the largest part of the training
step. The same gradient as im2col + GEMM:

    dW[o, c, kh, kw] = Σ_{b,h,w} dY[b, o, h, w] · X_pad[b, c, h + kh, w + kw]
                     = (cols^T @ dY_mat)[(kh, kw, c), o],  cols[(b, h, w), (kh, kw, c)] = X_pad[b, c, h+kh, w+kw]

with cols built from channels-last views (9 strided copies of an image pair into one buffer whose zero borders
are the padding, ~5 MB for conv2: it stays in cache) and MKL's sgemm, took 83-88 ms against oneDNN's 102-120
for conv2 and 64-75 against 72-85 for conv3 (best and median of 6, interleaved, in one run); the whole
training step: benchmarks/peak_ceiling.py --ab. The input gradient stays oneDNN's, and so
does a convolution with few input channels (conv1: 3), where oneDNN is faster. The forward pass is
F.conv2d's. The sums run in another order than oneDNN's, so the weight gradients differ from it in the last
bits (relative 1e-5); the order is fixed, so runs repeat exactly.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

GEMM_MIN_CHANNELS = 16  # below: oneDNN's weight gradient (conv1, 3 channels: 7.6 against 14-17 ms)
IMAGES_PER_PRODUCT = 2


@functools.lru_cache(maxsize=1)
def gemm_weight_grad() -> bool:
    """Whether this CPU takes the product: only where it was measured to win, torch's AVX2 kernels. With AVX-512
    oneDNN's weight gradient ran at 84% of the matmul peak (Sapphire Rapids) and its GEMM at twice MKL's (Zen 4)."""
    return torch.backends.cpu.get_cpu_capability() == "AVX2"


class _Conv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, padding=1)

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, weight = ctx.saved_tensors
        gy = gy.contiguous(memory_format=torch.channels_last)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(gy, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                     [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            gw = weight_grad(x, gy).contiguous(memory_format=torch.channels_last)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum((0, 2, 3))
        return gx, gw, gb


def weight_grad(x: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """The weight gradient of a 3×3, padding-1 convolution: x (B, C, H, W), gy (B, O, H, W), both channels-last
    -> (O, C, 3, 3)."""
    B, C, H, W = x.shape
    O = gy.shape[1]
    xn, g = x.permute(0, 2, 3, 1), gy.permute(0, 2, 3, 1)                         # (B, H, W, C), (B, H, W, O)
    n = min(B, IMAGES_PER_PRODUCT)
    # cols[b, h, w, kh, kw] = x[b, h + kh - 1, w + kw - 1], zero outside the image: the borders are written once
    cols = x.new_zeros(n, H, W, 3, 3, C)
    acc = x.new_zeros(9 * C, O)
    for i in range(0, B, n):
        m = min(n, B - i)
        for kh in range(3):
            h0, h1 = max(0, 1 - kh), min(H, H + 1 - kh)                           # rows whose tap is inside
            for kw in range(3):
                w0, w1 = max(0, 1 - kw), min(W, W + 1 - kw)
                cols[:m, h0:h1, w0:w1, kh, kw].copy_(xn[i:i + m, h0 + kh - 1:h1 + kh - 1, w0 + kw - 1:w1 + kw - 1])
        # out of place: FlopCounterMode counts addmm, not addmm_ (benchmarks/peak_ceiling.py)
        acc = torch.addmm(acc, cols[:m].view(-1, 9 * C).t(), g[i:i + m].reshape(-1, O))
    return acc.view(3, 3, C, O).permute(3, 2, 0, 1)                                # (O, C, 3, 3)


def conv3x3(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) for a 3×3, stride-1, padding-1 nn.Conv2d; while training fp32 channels-last on an AVX2 CPU, with
    the weight gradient above. Anything else (CUDA, AVX-512, autocast, contiguous tensors, few channels, no
    gradient) is conv(x) itself."""
    if (x.device.type == "cpu" and x.dtype == torch.float32 and torch.is_grad_enabled() and gemm_weight_grad()
            and conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and conv.weight.requires_grad and x.shape[1] >= GEMM_MIN_CHANNELS
            and not torch.is_autocast_enabled("cpu") and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()):
        return _Conv3x3.apply(x, conv.weight, conv.bias)
    return conv(x)
