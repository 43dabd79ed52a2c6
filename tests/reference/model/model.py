"""PyTorch reference of the 2Att-2Mt model, written from docs/ARCHITECTURE.md and the weight names.

Its `state_dict()` uses the same names as the Rust `fer-model` VarMap (minus the BatchNorm
`num_batches_tracked` counters), so weights move between the two unchanged.

The config is a plain dict in the Rust `ModelConfig` JSON form.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.resnet import BasicBlock, Bottleneck

STAGES = ["layer1", "layer2", "layer3", "layer4"]
BLOCKS = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]), 50: (Bottleneck, [3, 4, 6, 3])}


def default_config():
    # aux_head is off here, as when the committed fixtures were generated; the Rust
    # ModelConfig::default() has it on (the from-scratch default) and every config passed in
    # from Rust (bench_pytorch.py --model-json) names it explicitly.
    return {
        "backbone": {"depth": 18, "width": 1.0, "stem": "imagenet", "stem_stride": 1,
                     "taps": ["layer2", "layer3", "layer4"]},
        "attention": {"d": 256, "a": 128},
        "rnn": {"kind": "lstm", "hidden": 128},
        "att2_width": 64, "cat_hidden": 128, "va_hidden": 128, "num_classes": 8,
        "no_att1": False, "no_att2": False, "categorical": True, "aux_head": False,
    }


class Backbone(nn.Module):
    """A torchvision ResNet trunk cut after the deepest tap, returning the tapped maps.

    Full width with the ImageNet stem is torchvision's own module; otherwise the same layout is
    rebuilt from torchvision's blocks with `round(base * width)` channels.
    """

    def __init__(self, cfg):
        super().__init__()
        depth, width, stem = cfg["depth"], cfg["width"], cfg["stem"]
        self.taps = [STAGES.index(t) for t in cfg["taps"]]
        deepest = max(self.taps)
        block, layers = BLOCKS[depth]
        if width == 1.0 and stem == "imagenet":
            net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
            self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
            for s in range(deepest + 1):
                setattr(self, STAGES[s], getattr(net, STAGES[s]))
            return
        ch = lambda base: max(1, int(round(base * width)))
        c = ch(64)
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, c, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(3, c, 3, cfg["stem_stride"], 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        inplanes = c
        for s in range(deepest + 1):
            planes, stride = ch(64 << s), (1 if s == 0 else 2)
            blocks = []
            for i in range(layers[s]):
                st = stride if i == 0 else 1
                down = None
                if st != 1 or inplanes != planes * block.expansion:
                    down = nn.Sequential(
                        nn.Conv2d(inplanes, planes * block.expansion, 1, st, bias=False),
                        nn.BatchNorm2d(planes * block.expansion))
                blocks.append(block(inplanes, planes, st, down))
                inplanes = planes * block.expansion
            setattr(self, STAGES[s], nn.Sequential(*blocks))

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = []
        for s in range(max(self.taps) + 1):
            x = getattr(self, STAGES[s])(x)
            if s in self.taps:
                out.append(x)
        return out


class PositionAttention(nn.Module):
    def __init__(self, c, d, a):
        super().__init__()
        self.proj = nn.Conv2d(c, d, 1)
        self.score_w = nn.Conv2d(d, a, 1)
        self.score_v = nn.Conv2d(a, 1, 1, bias=False)
        self.fuse = nn.Linear(2 * d, d)

    def forward(self, f):
        b, _, h, w = f.shape
        p = self.proj(f)                                        # [B, d, H, W]
        e = self.score_v(torch.tanh(self.score_w(p))).flatten(1)  # [B, HW]
        alpha = torch.softmax(e, dim=1)
        pf = p.flatten(2)                                       # [B, d, HW]
        u = torch.einsum("bn,bdn->bd", alpha, pf)
        g = pf.mean(2)
        return self.fuse(torch.cat([u, g], 1)), alpha.view(b, h, w)


class GlobalPool(nn.Module):
    def __init__(self, c, d):
        super().__init__()
        self.proj = nn.Conv2d(c, d, 1)

    def forward(self, f):
        b, _, h, w = f.shape
        v = self.proj(f).mean((2, 3))
        return v, torch.full((b, h, w), 1.0 / (h * w), dtype=f.dtype)


class LayerSelfAttention(nn.Module):
    def __init__(self, dim, width):
        super().__init__()
        self.w1 = nn.Linear(dim, width)
        self.w2 = nn.Linear(width, 1, bias=False)

    def forward(self, h):
        beta = torch.softmax(self.w2(torch.tanh(self.w1(h))).squeeze(-1), dim=1)
        return torch.einsum("bl,bld->bd", beta, h), beta


class TwoAttTwoMt(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg["backbone"])
        d, a = cfg["attention"]["d"], cfg["attention"]["a"]
        with torch.no_grad():
            probe = self.backbone.eval()(torch.zeros(1, 3, 64, 64))
        self.backbone.train()
        chans = [m.shape[1] for m in probe]
        self.att1 = nn.ModuleList(
            GlobalPool(c, d) if cfg["no_att1"] else PositionAttention(c, d, a) for c in chans)
        h, K = cfg["rnn"]["hidden"], cfg["num_classes"]
        if not cfg["no_att2"]:
            rnn = nn.LSTM if cfg["rnn"]["kind"] == "lstm" else nn.GRU
            self.rnn = rnn(d, h, batch_first=True, bidirectional=True)
            self.att2 = LayerSelfAttention(2 * h, cfg["att2_width"])
            z = 2 * h
        else:
            z = d
        if cfg["categorical"]:
            self.cat_fc = nn.Linear(z, cfg["cat_hidden"])
            self.cat_out = nn.Linear(cfg["cat_hidden"], K)
            va_in = z + cfg["cat_hidden"] + K
        else:
            va_in = z
        self.va_fc = nn.Linear(va_in, cfg["va_hidden"])
        self.va_out = nn.Linear(cfg["va_hidden"], 2)
        if cfg["aux_head"]:
            self.aux_head = nn.Linear(chans[-1], K)

    def forward(self, x):
        cfg = self.cfg
        maps = self.backbone(x)
        vs, alphas = zip(*(att(f) for att, f in zip(self.att1, maps)))
        seq = torch.stack(vs, 1)
        if cfg["no_att2"]:
            z, beta = seq.mean(1), None
        else:
            hs, _ = self.rnn(seq)
            z, beta = self.att2(hs)
        out = {"alpha": list(alphas), "beta": beta}
        if cfg["categorical"]:
            c = F.relu(self.cat_fc(z))
            logits = self.cat_out(c)
            va_in = torch.cat([z, c, torch.softmax(logits, 1)], 1)
            out.update(c=c, logits=logits)
        else:
            va_in = z
        va = torch.tanh(self.va_out(F.relu(self.va_fc(va_in))))
        out.update(valence=va[:, 0], arousal=va[:, 1])
        if cfg["aux_head"]:
            out["aux"] = self.aux_head(maps[-1].mean((2, 3)))
        return out
