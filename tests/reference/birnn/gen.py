"""Reference fixtures for fer-birnn, computed with PyTorch's nn.LSTM / nn.GRU in float64.

Run from the repository root:  python3 tests/reference/birnn/gen.py
Writes crates/birnn/tests/fixtures/<case>.safetensors with keys
  param.<name>        weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0 and their _reverse twins
  input               [B, L, d]
  out.h               [B, L, 2h]
  probe.h             fixed random tensor; the scalar loss is (out.h * probe.h).sum()
  grad.input          d loss / d input
  grad.param.<name>   d loss / d weight
"""

import os

import torch
from safetensors.torch import save_file
from torch import nn

OUT = os.path.join("crates", "birnn", "tests", "fixtures")


def case(name, kind, b, l, d, h):
    cls = {"lstm": nn.LSTM, "gru": nn.GRU}[kind]
    rnn = cls(d, h, num_layers=1, batch_first=True, bidirectional=True)
    with torch.no_grad():
        # Larger than the default init so that the gates leave their linear range.
        for p in rnn.parameters():
            p.mul_(2.0)
    x = torch.randn(b, l, d, requires_grad=True)
    out, _ = rnn(x)  # zero initial states
    probe = torch.randn_like(out)
    loss = (out * probe).sum()
    params = dict(rnn.named_parameters())
    grads = torch.autograd.grad(loss, [x] + list(params.values()))
    t = {"input": x.detach(), "out.h": out.detach(), "probe.h": probe, "grad.input": grads[0]}
    for (pname, p), g in zip(params.items(), grads[1:]):
        t[f"param.{pname}"] = p.detach()
        t[f"grad.param.{pname}"] = g
    t = {k: v.contiguous() for k, v in t.items()}
    save_file(t, os.path.join(OUT, f"{name}.safetensors"))
    print(name, sorted(params))


def main():
    torch.manual_seed(20181130)
    torch.set_default_dtype(torch.float64)
    os.makedirs(OUT, exist_ok=True)
    for kind in ("lstm", "gru"):
        case(f"{kind}_b2_l3", kind, b=2, l=3, d=5, h=4)
        case(f"{kind}_b1_l1", kind, b=1, l=1, d=3, h=2)
        case(f"{kind}_b1_l3", kind, b=1, l=3, d=4, h=3)
        case(f"{kind}_b2_l6", kind, b=2, l=6, d=3, h=5)


if __name__ == "__main__":
    main()
