"""Writes tests/fixtures/optim.safetensors: PyTorch's AdamW and SGD (momentum, weight decay) with
parameter groups, clip_grad_norm_ and a LambdaLR warm-up + cosine schedule, run on a fixed sequence
of gradients. The Rust optimizer tests replay the same gradients and must land on the same values.

Run from anywhere: python3 tests/reference/optim/gen_optim.py
"""

import math
import os

import torch
from safetensors.torch import save_file

torch.manual_seed(1234)
DT = torch.float64
STEPS = 6
WARMUP = 2
MIN_FACTOR = 0.05
MAX_NORM = 1.0
BACKBONE_LR_SCALE = 0.1

SHAPES = {
    "backbone.conv.weight": (3, 2),
    "backbone.bn.weight": (3,),
    "head.fc.weight": (2, 3),
    "head.fc.bias": (2,),
}
NAMES = list(SHAPES)


def factor(step):
    """The schedule's multiplier at optimizer step `step` (0-based), same rule as schedule.rs."""
    if step < WARMUP:
        return (step + 1) / WARMUP
    progress = min(1.0, (step - WARMUP) / max(1, STEPS - WARMUP))
    return MIN_FACTOR + (1 - MIN_FACTOR) * 0.5 * (1 + math.cos(math.pi * progress))


init = {n: torch.randn(*s, dtype=DT) for n, s in SHAPES.items()}
# Gradient scales vary so clipping is active on some steps and not on others.
scales = [0.2, 3.0, 0.5, 2.0, 0.1, 4.0]
grads = [{n: torch.randn(*s, dtype=DT) * scales[k] for n, s in SHAPES.items()} for k in range(STEPS)]

out = {}
for n in NAMES:
    out[f"init.{n}"] = init[n]
    for k in range(STEPS):
        out[f"grad.{k}.{n}"] = grads[k][n]


def groups(params, wd):
    # Rank-1 tensors (biases, BatchNorm weights) get no decay; the backbone a lower LR.
    g = []
    for backbone in (True, False):
        for decay in (True, False):
            ps = [params[n] for n in NAMES if n.startswith("backbone.") == backbone and (params[n].dim() > 1) == decay]
            if ps:
                g.append({"params": ps, "weight_decay": wd if decay else 0.0,
                          "lr": BASE_LR * (BACKBONE_LR_SCALE if backbone else 1.0)})
    return g


def run(tag, make_opt, base_lr):
    global BASE_LR
    BASE_LR = base_lr
    params = {n: torch.nn.Parameter(init[n].clone()) for n in NAMES}
    opt = make_opt(params)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    lrs, norms = [], []
    for k in range(STEPS):
        for n in NAMES:
            params[n].grad = grads[k][n].clone()
        norm = torch.nn.utils.clip_grad_norm_([params[n] for n in NAMES], MAX_NORM)
        norms.append(float(norm))
        # The head group's LR (the unscaled one) is what the schedule reports.
        lrs.append(opt.param_groups[-1]["lr"])
        opt.step()
        sched.step()
        for n in NAMES:
            out[f"{tag}.param.{k}.{n}"] = params[n].detach().clone()
        if k == STEPS // 2 - 1:
            # State after the first half: the Rust resume test restarts from here.
            st = opt.state_dict()["state"]
            for i, n in enumerate(ordered(opt, params)):
                for key, val in st[i].items():
                    if key != "step":
                        out[f"{tag}.state{k}.{key}.{n}"] = val.clone().to(DT)
    out[f"{tag}.lr"] = torch.tensor(lrs, dtype=DT)
    out[f"{tag}.norm"] = torch.tensor(norms, dtype=DT)


def ordered(opt, params):
    by_id = {id(p): n for n, p in params.items()}
    return [by_id[id(p)] for g in opt.param_groups for p in g["params"]]


run("sgd", lambda p: torch.optim.SGD(groups(p, 0.1), lr=0.1, momentum=0.9, nesterov=False), 0.1)
run("adamw", lambda p: torch.optim.AdamW(groups(p, 0.05), lr=0.01, betas=(0.9, 0.999), eps=1e-8), 0.01)

out = {k: v.contiguous() for k, v in out.items()}
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
save_file(out, os.path.join(root, "crates", "trainer", "tests", "fixtures", "optim.safetensors"),
          metadata={"steps": str(STEPS), "warmup": str(WARMUP), "min_factor": str(MIN_FACTOR),
                    "max_norm": str(MAX_NORM), "backbone_lr_scale": str(BACKBONE_LR_SCALE)})
print("wrote", len(out), "tensors")
