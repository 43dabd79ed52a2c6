"""Reference fixtures for fer-attention, computed with PyTorch in float64.

Run from the repository root:  python3 tests/reference/attention/gen.py
Writes crates/attention/tests/fixtures/<case>.safetensors with keys
  param.<name>        the block's weights, PyTorch names and shapes
  input               the block's input
  out.<k>             each output (v/alpha, z/beta)
  probe.<k>           fixed random tensors; the scalar loss is sum_k (out.<k> * probe.<k>).sum()
  grad.input          d loss / d input
  grad.param.<name>   d loss / d weight
The blocks are written with Conv2d/Linear modules on purpose, independently of the Rust code
(which computes 1x1 convolutions as matmuls).
"""

import os

import torch
from safetensors.torch import save_file
from torch import nn

OUT = os.path.join("crates", "attention", "tests", "fixtures")


class PositionAttention(nn.Module):
    def __init__(self, c, d, a):
        super().__init__()
        self.proj = nn.Conv2d(c, d, 1)
        self.score_w = nn.Conv2d(d, a, 1)
        self.score_v = nn.Conv2d(a, 1, 1, bias=False)
        self.fuse = nn.Linear(2 * d, d)

    def forward(self, f):
        b, _, h, w = f.shape
        p = self.proj(f)  # [B, d, H, W]
        e = self.score_v(torch.tanh(self.score_w(p)))  # [B, 1, H, W]
        alpha = torch.softmax(e.flatten(1), dim=1)  # [B, H*W]
        pf = p.flatten(2)  # [B, d, H*W]
        u = (pf * alpha[:, None, :]).sum(2)
        g = pf.mean(2)
        v = self.fuse(torch.cat([u, g], dim=1))
        return {"v": v, "alpha": alpha.reshape(b, h, w)}


class GlobalPool(nn.Module):
    def __init__(self, c, d):
        super().__init__()
        self.proj = nn.Conv2d(c, d, 1)

    def forward(self, f):
        b, _, h, w = f.shape
        v = self.proj(f).mean((2, 3))
        alpha = torch.full((b, h, w), 1.0 / (h * w), dtype=f.dtype)
        return {"v": v, "alpha": alpha}


class LayerSelfAttention(nn.Module):
    def __init__(self, dim, width):
        super().__init__()
        self.w1 = nn.Linear(dim, width)
        self.w2 = nn.Linear(width, 1, bias=False)

    def forward(self, h):
        s = self.w2(torch.tanh(self.w1(h))).squeeze(-1)  # [B, L]
        beta = torch.softmax(s, dim=1)
        z = (beta[:, :, None] * h).sum(1)
        return {"z": z, "beta": beta}


def case(name, module, x):
    # Widen the weights beyond the default init so that tanh and softmax are far from linear.
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(2.0)
    x = x.clone().requires_grad_(True)
    out = module(x)
    probes = {k: torch.randn_like(v) for k, v in out.items()}
    loss = sum((out[k] * probes[k]).sum() for k in out)
    params = dict(module.named_parameters())
    grads = torch.autograd.grad(loss, [x] + list(params.values()), allow_unused=True)
    t = {"input": x.detach()}
    for k in out:
        t[f"out.{k}"] = out[k].detach()
        t[f"probe.{k}"] = probes[k]
    t["grad.input"] = grads[0]
    for (pname, p), g in zip(params.items(), grads[1:]):
        t[f"param.{pname}"] = p.detach()
        t[f"grad.param.{pname}"] = g
    t = {k: v.contiguous() for k, v in t.items()}
    save_file(t, os.path.join(OUT, f"{name}.safetensors"))
    print(name, {k: list(v.shape) for k, v in t.items() if k.startswith("param.")})


def main():
    torch.manual_seed(20181129)
    torch.set_default_dtype(torch.float64)
    os.makedirs(OUT, exist_ok=True)
    case("position_b2", PositionAttention(6, 8, 4), torch.randn(2, 6, 3, 5))
    case("position_b1", PositionAttention(5, 7, 3), torch.randn(1, 5, 2, 1))
    case("position_1x1", PositionAttention(4, 3, 2), torch.randn(2, 4, 1, 1))
    case("globalpool_b2", GlobalPool(6, 8), torch.randn(2, 6, 3, 5))
    case("layer_b2_l3", LayerSelfAttention(10, 6), torch.randn(2, 3, 10))
    case("layer_b1_l1", LayerSelfAttention(6, 5), torch.randn(1, 1, 6))
    case("layer_b2_l5", LayerSelfAttention(7, 3), torch.randn(2, 5, 7))


if __name__ == "__main__":
    main()
