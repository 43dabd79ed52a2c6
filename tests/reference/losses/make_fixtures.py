#!/usr/bin/env python3
"""Writes the reference fixtures of the fer-losses tests.

Losses and their gradients come from PyTorch (float64), metrics from NumPy, SciPy and
scikit-learn. Run from the repository root:

    python3 tests/reference/losses/make_fixtures.py

It rewrites crates/losses/tests/fixtures/{losses,metrics}.json deterministically.
"""
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

OUT = os.path.join("crates", "losses", "tests", "fixtures")
CCC_EPS = 1e-8  # must equal fer_losses::CCC_EPS
rng = np.random.default_rng(20181129)
torch.set_default_dtype(torch.float64)


def tl(x):
    return np.asarray(x).tolist()


# ---------------------------------------------------------------- cross-entropy
def ce_case(name, b, k, targets, weights, smoothing, scale=2.0):
    logits = rng.normal(0.0, scale, size=(b, k))
    x = torch.tensor(logits, requires_grad=True)
    w = None if weights is None else torch.tensor(weights)
    y = torch.tensor(targets, dtype=torch.long)
    loss = F.cross_entropy(x, y, weight=w, label_smoothing=smoothing, ignore_index=-1)
    loss.backward()
    return dict(name=name, logits=tl(logits), targets=list(targets),
                weights=None if weights is None else list(weights),
                label_smoothing=smoothing, loss=loss.item(), grad=tl(x.grad.numpy()))


ce_cases = [
    ce_case("plain", 6, 5, [0, 4, 2, 2, 1, 3], None, 0.0),
    ce_case("weighted", 7, 4, [3, 0, 1, 1, 2, 0, 3], [0.5, 2.0, 1.0, 3.0], 0.0),
    ce_case("smoothing_ignored", 6, 5, [1, -1, 4, 0, -1, 2], None, 0.1),
    ce_case("weights_smoothing_ignored", 8, 8,
            [7, -1, 0, 3, 3, -1, 5, 1], [1.0, 0.2, 1.7, 0.9, 3.0, 0.0, 1.1, 2.5], 0.2),
    ce_case("large_logits", 4, 3, [2, 0, 1, 1], None, 0.05, scale=30.0),
]


# ---------------------------------------------------------------- regression losses
def ccc_t(p, t):
    mp, mt = p.mean(), t.mean()
    vp = ((p - mp) ** 2).mean()
    vt = ((t - mt) ** 2).mean()
    cov = ((p - mp) * (t - mt)).mean()
    return 2 * cov / (vt + vp + (mt - mp) ** 2 + CCC_EPS)


def reg_case(name, pred, target, mask):
    """Masked terms computed on the selected samples only (independent of masking by products)."""
    pred, target, mask = map(np.asarray, (pred, target, mask))
    sel = torch.tensor(mask.astype(bool))
    out = dict(name=name, pred=tl(pred), target=tl(target), mask=tl(mask))
    for key, fn in [("mse", lambda p, t: ((p - t) ** 2).mean()),
                    ("ccc", ccc_t),
                    ("ccc_loss", lambda p, t: 1 - ccc_t(p, t))]:
        p = torch.tensor(pred, requires_grad=True)
        v = fn(p[sel], torch.tensor(target)[sel])
        v.backward()
        out[key] = v.item()
        out[key + "_grad"] = tl(p.grad.numpy())
    return out


n = 16
mask16 = (rng.random(n) > 0.3).astype(float)
t16 = rng.uniform(-1, 1, n)
t16[mask16 == 0] = -2.0  # AffectNet's "no value" placeholder must not leak in
reg_cases = [
    reg_case("masked", 0.6 * t16 + rng.normal(0, 0.3, n), t16, mask16),
    reg_case("all_valid", rng.uniform(-1, 1, 9), rng.uniform(-1, 1, 9), np.ones(9)),
    reg_case("single_valid", [0.3, -0.7, 0.1], [0.5, -2.0, -2.0], [1.0, 0.0, 0.0]),
    reg_case("constant_pred", [0.25] * 6, rng.uniform(-1, 1, 6), np.ones(6)),
    reg_case("anti_correlated", np.linspace(-1, 1, 8), -np.linspace(-1, 1, 8) * 0.8,
             np.ones(8)),
]


# ---------------------------------------------------------------- va loss and stages
def va_t(vp, ap, v, a, sel):
    vt, at = torch.tensor(v)[sel], torch.tensor(a)[sel]
    return (((vp[sel] - vt) ** 2).mean() + ((ap[sel] - at) ** 2).mean()
            + (1 - ccc_t(vp[sel], vt)) + (1 - ccc_t(ap[sel], at)))


b, k = 10, 8
va_mask = (rng.random(b) > 0.25).astype(float)
va_mask[0] = 1.0
v = rng.uniform(-1, 1, b)
a = rng.uniform(-1, 1, b)
v[va_mask == 0] = -2.0
a[va_mask == 0] = -2.0
vp0 = np.tanh(v + rng.normal(0, 0.4, b))
ap0 = np.tanh(0.5 * a + rng.normal(0, 0.4, b))
logits0 = rng.normal(0, 1.5, (b, k))
aux0 = rng.normal(0, 1.5, (b, k))
targets = [int(x) for x in rng.integers(0, k, b)]
targets[3] = -1
targets[7] = -1
# multiples of 1/64: exact in f32, since LossConfig stores the weights as f32
weights = [float(x) for x in np.round(rng.uniform(0.3, 3.0, k) * 64) / 64]
cfg = dict(lambda_=0.5, class_weights=weights, label_smoothing=0.1, aux_weight=0.7)
sel = torch.tensor(va_mask.astype(bool))

stages = {}
for stage in ["categorical", "dimensional", "joint", "va-only"]:
    vp = torch.tensor(vp0, requires_grad=True)
    ap = torch.tensor(ap0, requires_grad=True)
    lg = torch.tensor(logits0, requires_grad=True)
    ax = torch.tensor(aux0, requires_grad=True)
    y = torch.tensor(targets)
    w = torch.tensor(weights)
    ce = lambda z: F.cross_entropy(z, y, weight=w, label_smoothing=cfg["label_smoothing"],
                                   ignore_index=-1)
    va = va_t(vp, ap, v, a, sel)
    if stage == "categorical":
        total = ce(lg) + cfg["aux_weight"] * ce(ax)
    elif stage == "va-only":
        total = va
    else:
        total = va + cfg["lambda_"] * ce(lg) + cfg["aux_weight"] * ce(ax)
    total.backward()
    g = lambda t: tl(np.zeros(t.shape) if t.grad is None else t.grad.numpy())
    stages[stage] = dict(total=total.item(), grad_valence=g(vp), grad_arousal=g(ap),
                         grad_logits=g(lg), grad_aux=g(ax))

stage_fixture = dict(
    config=dict(**{"lambda": cfg["lambda_"]}, class_weights=weights,
                label_smoothing=cfg["label_smoothing"], aux_weight=cfg["aux_weight"]),
    valence_pred=tl(vp0), arousal_pred=tl(ap0), valence=tl(v), arousal=tl(a),
    va_mask=tl(va_mask), logits=tl(logits0), aux_logits=tl(aux0), targets=targets,
    va=va_t(torch.tensor(vp0), torch.tensor(ap0), v, a, sel).item(),
    stages=stages)

# ---------------------------------------------------------------- metrics
def reg_metrics(name, p, t):
    p, t = np.asarray(p, float), np.asarray(t, float)
    mp, mt = p.mean(), t.mean()
    vp, vt = p.var(), t.var()  # population (ddof=0)
    cov = ((p - mp) * (t - mt)).mean()
    den = vt + vp + (mt - mp) ** 2
    ccc = 2 * cov / den if den > 0 else 1.0
    if np.all(p == p[0]) or np.all(t == t[0]):
        scipy_pcc, pcc = None, 0.0  # SciPy: NaN + ConstantInputWarning; we report 0
    else:
        scipy_pcc = pcc = float(pearsonr(p, t).statistic)
    return dict(name=name, pred=tl(p), target=tl(t), ccc=float(ccc), pcc=pcc,
                scipy_pcc=scipy_pcc, rmse=float(np.sqrt(np.mean((p - t) ** 2))),
                sagr=float(np.mean(np.sign(p) == np.sign(t))))


t300 = np.clip(rng.normal(0.1, 0.45, 300), -1, 1)
reg_metric_cases = [
    reg_metrics("correlated", np.clip(0.7 * t300 + rng.normal(0.05, 0.25, 300), -1, 1), t300),
    reg_metrics("with_zeros", [0.0, 0.2, -0.1, 0.0, 0.5, -0.3, 0.0],
                [0.0, -0.1, -0.4, 0.3, 0.0, -0.2, 0.0]),
    reg_metrics("constant_pred", [0.1] * 5, [0.3, -0.2, 0.9, 0.0, -0.5]),
    reg_metrics("single", [0.4], [-0.3]),
    reg_metrics("offset_large_mean", 0.9 + 0.01 * rng.normal(size=50),
                0.9 + 0.01 * rng.normal(size=50)),
]


def cls_metrics(name, pred, truth, k):
    pred, truth = list(map(int, pred)), list(map(int, truth))
    return dict(name=name, k=k, pred=pred, truth=truth,
                accuracy=float(accuracy_score(truth, pred)),
                macro_f1=float(f1_score(truth, pred, average="macro", zero_division=0)),
                macro_f1_all_labels=float(f1_score(truth, pred, average="macro",
                                                   labels=list(range(k)), zero_division=0)),
                confusion=confusion_matrix(truth, pred, labels=list(range(k))).tolist())


truth = rng.integers(0, 8, 400)
noisy = np.where(rng.random(400) < 0.6, truth, rng.integers(0, 8, 400))
cls_cases = [
    cls_metrics("eight_classes", noisy, truth, 8),
    # classes 5..7 never occur; class 4 only predicted, class 3 only true
    cls_metrics("absent_classes", [0, 1, 1, 2, 4, 0, 2, 2, 4, 1],
                [0, 1, 2, 2, 3, 0, 3, 2, 1, 1], 8),
    cls_metrics("single", [2], [2], 7),
    cls_metrics("all_wrong", [1, 0, 1], [0, 1, 0], 3),
]

# a whole "evaluation set" with masks and missing classes, for the streaming accumulator
ns = 137
s_mask = (rng.random(ns) > 0.2).astype(float)
s_v = rng.uniform(-1, 1, ns)
s_a = rng.uniform(-1, 1, ns)
s_vp = np.clip(0.8 * s_v + rng.normal(0, 0.3, ns), -1, 1).astype(np.float32).astype(float)
s_ap = np.clip(0.5 * s_a + rng.normal(0, 0.3, ns), -1, 1).astype(np.float32).astype(float)
s_v = s_v.astype(np.float32).astype(float)
s_a = s_a.astype(np.float32).astype(float)
s_v[s_mask == 0] = -2.0
s_a[s_mask == 0] = -2.0
s_t = rng.integers(0, 8, ns)
s_t[rng.random(ns) < 0.15] = -1
s_logits = (rng.normal(0, 1, (ns, 8)) + 2.0 * np.eye(8)[np.clip(s_t, 0, 7)]).astype(np.float32)
s_pred = s_logits.argmax(1)
has = s_t >= 0
m = s_mask == 1
stream = dict(
    valence_pred=tl(s_vp), arousal_pred=tl(s_ap), valence=tl(s_v), arousal=tl(s_a),
    va_mask=tl(s_mask), logits=tl(s_logits.astype(float)), targets=tl(s_t),
    valence_metrics=reg_metrics("valence", s_vp[m], s_v[m]),
    arousal_metrics=reg_metrics("arousal", s_ap[m], s_a[m]),
    class_metrics=cls_metrics("classes", s_pred[has], s_t[has], 8),
)
for key in ("valence_metrics", "arousal_metrics"):
    for drop in ("pred", "target", "name"):
        stream[key].pop(drop)
for drop in ("pred", "truth", "name"):
    stream["class_metrics"].pop(drop)

os.makedirs(OUT, exist_ok=True)
for fname, data in [
    ("losses.json", dict(ccc_eps=CCC_EPS, cross_entropy=ce_cases, regression=reg_cases,
                         stages=stage_fixture)),
    ("metrics.json", dict(regression=reg_metric_cases, classification=cls_cases,
                          stream=stream)),
]:
    path = os.path.join(OUT, fname)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    print("wrote", path)
