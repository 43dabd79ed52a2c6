"""Times PyTorch's conv + BatchNorm + ReLU, one trunk conv at a time, the way `cargo xtask
bench-convs` times ours.

The xtask calls it once per config with the trunk's distinct convs as JSON:

    python3 tests/reference/bench/bench_convs.py --batch 64 --steps 10 --threads 2 \
        --shapes-json '[{"in_channels": 32, "out_channels": 32, "kernel": 3, "stride": 1,
                         "padding": 1, "in_size": 24, "input_grad": true}]'

For each shape, in float32 and NCHW (as bench_pytorch.py's model): a bias-free Conv2d, a
train-mode BatchNorm2d and a ReLU on a random batch. The forward is timed; then, untimed,
loss = (y * r).sum() with a fixed random r; then loss.backward() is timed (the gradients of the
weight, BatchNorm's affine pair and, where "input_grad" is true, the input). 2 warm-up rounds,
then the median of --steps timed ones. Prints one JSON array: forward_ms and backward_ms per shape,
in the order given.
"""

import argparse
import json
import statistics
import time

import torch

WARMUP = 2


def time_shape(s, batch, steps):
    conv = torch.nn.Conv2d(s["in_channels"], s["out_channels"], s["kernel"], s["stride"],
                           s["padding"], bias=False)
    bn = torch.nn.BatchNorm2d(s["out_channels"])
    size = s["in_size"]
    x = torch.randn(batch, s["in_channels"], size, size, requires_grad=s["input_grad"])
    out = (size + 2 * s["padding"] - s["kernel"]) // s["stride"] + 1
    r = torch.randn(batch, s["out_channels"], out, out)
    fwd, bwd = [], []
    for i in range(WARMUP + steps):
        conv.zero_grad(set_to_none=True)
        bn.zero_grad(set_to_none=True)
        x.grad = None
        t = time.perf_counter()
        y = torch.relu(bn(conv(x)))
        f = time.perf_counter() - t
        loss = (y * r).sum()
        t = time.perf_counter()
        loss.backward()
        b = time.perf_counter() - t
        if i >= WARMUP:
            fwd.append(f)
            bwd.append(b)
    return {"forward_ms": statistics.median(fwd) * 1e3, "backward_ms": statistics.median(bwd) * 1e3}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes-json", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    shapes = json.loads(a.shapes_json)
    print(json.dumps([time_shape(s, a.batch, a.steps) for s in shapes]))


if __name__ == "__main__":
    main()
