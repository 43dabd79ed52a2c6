"""Reference fixtures for fer-model, computed with the PyTorch model in model.py (float64).

Run from the repository root:  python3 tests/reference/model/gen_fixtures.py
Writes crates/model/tests/fixtures/:

  <case>.safetensors, metadata `config` = the Rust ModelConfig as JSON, tensors
    w.<name>                 the weights (float32), BatchNorm running stats included
    x                        the input images [B, 3, S, S]
    eval.<out> / train.<out> outputs in eval mode, then in train mode (in that order):
                             logits, valence, arousal, alpha.<i>, beta, c, aux
    train.running.<name>     BatchNorm running stats after the train-mode forward
    r.<out>                  fixed random weights; the scalar is
                             sum(r.logits*logits) + sum(r.valence*valence)
                             + sum(r.arousal*arousal) + sum(r.aux*aux)   (train mode)
    grad.<name>              d scalar / d weight for a few named weights

  torchvision_names.json     names and shapes of torchvision's resnet18/resnet50 state dicts
  tiny_resnet.pth            torch.save of a tiny ResNet-18 state dict (with fc and
                             num_batches_tracked), and tiny_resnet.safetensors, the same tensors
                             (without those entries) for comparison
  tiny_resnet_nested.pth     the same dict under the key "state_dict" of a checkpoint dict
  not_a_state_dict.pth       torch.save of a list of ints
"""

import copy
import json
import os
import sys

import torch
import torchvision
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import TwoAttTwoMt, Backbone, default_config  # noqa: E402

OUT = os.path.join("crates", "model", "tests", "fixtures")

SMALL_HEADS = {"attention": {"d": 16, "a": 8}, "rnn": {"kind": "lstm", "hidden": 8},
               "att2_width": 8, "cat_hidden": 8, "va_hidden": 8}


def make_config(backbone, **kw):
    cfg = default_config()
    cfg.update(copy.deepcopy(SMALL_HEADS))
    cfg["backbone"].update(backbone)
    for k, v in kw.items():
        if isinstance(v, dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    return cfg


CASES = {
    # name: (config, batch, size)
    "r18_w0625_lstm_aux": (make_config({"width": 0.0625}, aux_head=True), 3, 64),
    "r18_w0625_small_gru_k7": (make_config({"width": 0.0625, "stem": "small", "taps": ["layer1", "layer3"]},
                                          rnn={"kind": "gru"}, num_classes=7), 2, 32),
    "r18_w0625_small_s2_no_att1": (make_config({"width": 0.0625, "stem": "small", "stem_stride": 2},
                                              no_att1=True), 3, 32),
    "r18_w0625_small_s2_no_att2": (make_config({"width": 0.0625, "stem": "small", "stem_stride": 2},
                                              no_att2=True), 3, 32),
    "r18_w0625_small_s2_va_only": (make_config({"width": 0.0625, "stem": "small", "stem_stride": 2},
                                              categorical=False), 3, 32),
    "r50_w0625_lstm": (make_config({"depth": 50, "width": 0.0625, "taps": ["layer2", "layer3"]}), 3, 64),
    "r34_w0625_gru": (make_config({"depth": 34, "width": 0.0625, "taps": ["layer2", "layer4"]},
                                  rnn={"kind": "gru"}), 2, 64),
    # torchvision's own resnet18 module (full width, ImageNet stem), cut after layer1; its
    # weights are stored as float16 (and the reference computed from the rounded values) to keep
    # the file small.
    "r18_torchvision_layer1": (make_config({"taps": ["layer1"]}), 2, 32, torch.float16),
}

GRAD_NAMES = [
    "backbone.conv1.weight", "backbone.bn1.weight", "backbone.layer1.0.bn2.bias",
    "backbone.layer2.0.downsample.0.weight", "backbone.layer4.1.conv2.weight",
    "backbone.layer3.0.conv3.weight",
    "att1.0.proj.weight", "att1.0.score_w.weight", "att1.0.score_v.weight", "att1.1.fuse.bias",
    "rnn.weight_hh_l0_reverse", "rnn.bias_ih_l0", "att2.w1.weight", "att2.w2.weight",
    "cat_fc.weight", "cat_out.weight", "va_fc.weight", "va_out.bias", "aux_head.weight",
]


def perturb(model):
    """Random BatchNorm affine parameters and running stats, so that eval differs from train
    mode and nothing sits at an identity default."""
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_mean"):
                t.copy_(0.1 * torch.randn_like(t))
            elif name.endswith("running_var"):
                t.copy_(torch.empty_like(t).uniform_(0.5, 1.5))
            elif ".bn" in name or "downsample.1" in name or name.startswith("backbone.bn1"):
                if name.endswith("weight"):
                    t.copy_(torch.empty_like(t).uniform_(0.5, 1.5))
                else:
                    t.copy_(0.1 * torch.randn_like(t))


def outputs(prefix, out):
    t = {}
    for k in ("logits", "valence", "arousal", "beta", "c", "aux"):
        if out.get(k) is not None:
            t[f"{prefix}.{k}"] = out[k]
    for i, a in enumerate(out["alpha"]):
        t[f"{prefix}.alpha.{i}"] = a
    return t


def case(name, cfg, batch, size, weight_dtype=torch.float32):
    model = TwoAttTwoMt(cfg)
    perturb(model)
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.copy_(v.to(weight_dtype))
    weights = {k: v.detach().to(weight_dtype) for k, v in model.state_dict().items()
               if not k.endswith("num_batches_tracked")}
    model = model.double()
    x = torch.randn(batch, 3, size, size)
    t = {f"w.{k}": v for k, v in weights.items()}
    t["x"] = x

    model.eval()
    with torch.no_grad():
        t.update(outputs("eval", model(x.double())))

    model.train()
    out = model(x.double())
    t.update(outputs("train", out))
    scalar = 0.0
    for k in ("logits", "valence", "arousal", "aux"):
        if out.get(k) is not None:
            r = torch.randn(out[k].shape).double()  # float32 values: stored exactly
            t[f"r.{k}"] = r
            scalar = scalar + (out[k] * r).sum()
    scalar.backward()
    params = dict(model.named_parameters())
    for n in GRAD_NAMES:
        if n in params:
            t[f"grad.{n}"] = params[n].grad
    for k, v in model.state_dict().items():
        if k.endswith("running_mean") or k.endswith("running_var"):
            t[f"train.running.{k}"] = v

    t = {k: (v if k.startswith("w.") else v.detach().to(torch.float32)).contiguous()
         for k, v in t.items()}
    path = os.path.join(OUT, f"{name}.safetensors")
    save_file(t, path, metadata={"config": json.dumps(cfg)})
    n_grads = sum(k.startswith("grad.") for k in t)
    print(f"{name}: {os.path.getsize(path) / 1024:.0f} KiB, {len(weights)} weights, {n_grads} grads")


def torchvision_names():
    names = {}
    for depth in (18, 50):
        sd = getattr(torchvision.models, f"resnet{depth}")(weights=None).state_dict()
        names[f"resnet{depth}"] = [[k, list(v.shape)] for k, v in sd.items()]
    with open(os.path.join(OUT, "torchvision_names.json"), "w") as f:
        json.dump(names, f, indent=0)


def tiny_pth():
    cfg = {"depth": 18, "width": 0.0625, "stem": "small", "stem_stride": 1, "taps": ["layer2"]}
    net = Backbone(cfg)
    sd = net.state_dict()
    with torch.no_grad():
        for k, v in sd.items():
            if v.is_floating_point():
                v.copy_(torch.randn_like(v))
    sd = dict(sd)
    sd["fc.weight"] = torch.randn(10, 8)
    sd["fc.bias"] = torch.randn(10)
    torch.save(sd, os.path.join(OUT, "tiny_resnet.pth"))
    # The layout of a training checkpoint: the state dict nested under "state_dict".
    torch.save({"epoch": 3, "state_dict": sd}, os.path.join(OUT, "tiny_resnet_nested.pth"))
    plain = {k: v.contiguous() for k, v in sd.items()
             if not k.endswith("num_batches_tracked") and not k.startswith("fc.")}
    save_file(plain, os.path.join(OUT, "tiny_resnet.safetensors"), metadata={"backbone": json.dumps(cfg)})
    torch.save([1, 2, 3], os.path.join(OUT, "not_a_state_dict.pth"))


def main():
    torch.manual_seed(20181130)
    os.makedirs(OUT, exist_ok=True)
    for name, spec in CASES.items():
        case(name, *spec)
    torchvision_names()
    tiny_pth()


if __name__ == "__main__":
    main()
