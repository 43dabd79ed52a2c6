"""Times the PyTorch reference of 2Att-2Mt the way `cargo xtask bench-train` times ours.

Run from anywhere (the xtask calls it once per config, each in a fresh process, with
--model-json):

    python3 tests/reference/bench/bench_pytorch.py --depth 18 --size 112 --batch 32 --steps 10 --threads 2
    python3 tests/reference/bench/bench_pytorch.py --size 48 --batch 64 --steps 10 --threads 2 \
        --model-json '{"backbone": {"depth": 18, "width": 0.5, "stem": "small", "stem_stride": 2},
                       "attention": {"d": 128, "a": 64}, "rnn": {"kind": "lstm", "hidden": 64},
                       "att2_width": 32, "cat_hidden": 128, "va_hidden": 64, "num_classes": 7,
                       "aux_head": true}'

Builds model.py's TwoAttTwoMt in float32, from either --depth (model.py's default config, which is
the Rust ModelConfig::default() without the auxiliary head, with that backbone depth: configs a-c)
or --model-json (a Rust ModelConfig in its JSON form, `serde_json` of the xtask's case; keys left
out keep model.py's defaults). Then times, on random inputs, a stage-2 training step (train-mode
forward, L_va + lambda * CE (+ 1.0 * CE of the auxiliary head when the model has one), backward,
AdamW step) and an eval-mode forward under no_grad: 2 warm-up steps, then the median of --steps
timed ones. Prints one JSON object: train_img_s, infer_img_s, peak_rss_mib (ru_maxrss).

With --device cuda everything lives on the GPU and each timed step ends with a synchronize, so the
time is the step's, not the launch's; the JSON then also has peak_gpu_mib.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model"))
from model import TwoAttTwoMt, default_config  # noqa: E402

WARMUP = 2
LAMBDA = 0.5  # fer_losses::LossConfig::default().lambda
AUX_WEIGHT = 1.0  # LossConfig::default().aux_weight (aux_in_stage2 is true by default)
LR, WEIGHT_DECAY, EPS = 1e-4, 5e-4, 1e-8  # the xtask's AdamW settings (trainer defaults but lr)


def ccc(pred, target):
    """Concordance correlation coefficient over the batch (population moments, like fer-losses)."""
    mp, mt = pred.mean(), target.mean()
    dp, dt = pred - mp, target - mt
    return 2 * (dp * dt).mean() / ((dp * dp).mean() + (dt * dt).mean() + (mp - mt) ** 2 + 1e-8)


def stage2_loss(out, classes, valence, arousal):
    """fer_losses::stage_loss(Stage::Dimensional): MSE(v) + MSE(a) + (1 - CCC(v)) + (1 - CCC(a))
    + lambda * CE (+ aux_weight * CE of the auxiliary logits when the model has the head), every
    sample labelled."""
    v, a = out["valence"], out["arousal"]
    l_va = (F.mse_loss(v, valence) + F.mse_loss(a, arousal)
            + (1 - ccc(v, valence)) + (1 - ccc(a, arousal)))
    loss = l_va + LAMBDA * F.cross_entropy(out["logits"], classes)
    if "aux" in out:
        loss = loss + AUX_WEIGHT * F.cross_entropy(out["aux"], classes)
    return loss


def merge(base, over):
    """`base` with the keys of `over` replaced, nested dicts merged (serde's `default` in Rust)."""
    for k, v in over.items():
        if k not in base:
            sys.exit(f"--model-json: unknown key {k!r}")
        base[k] = merge(base[k], v) if isinstance(v, dict) else v
    return base


def median_seconds(steps, fn, sync):
    for _ in range(WARMUP):
        fn()
    sync()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--depth", type=int, choices=[18, 34, 50],
                       help="the default model (no auxiliary head) with this backbone depth")
    which.add_argument("--model-json", help="the model, as a Rust ModelConfig in JSON")
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = default_config()
    if args.model_json is not None:
        cfg = merge(cfg, json.loads(args.model_json))
    else:
        cfg["backbone"]["depth"] = args.depth
    model = TwoAttTwoMt(cfg).float().to(dev)
    # Like trainer::optim: weights of rank >= 2 decayed, biases and BatchNorm parameters not.
    params = list(model.parameters())
    opt = torch.optim.AdamW(
        [{"params": [q for q in params if q.dim() >= 2], "weight_decay": WEIGHT_DECAY},
         {"params": [q for q in params if q.dim() < 2], "weight_decay": 0.0}],
        lr=LR, eps=EPS)

    b, s, k = args.batch, args.size, cfg["num_classes"]
    images = torch.randn(b, 3, s, s, device=dev)
    classes = torch.randint(0, k, (b,), device=dev)
    valence = torch.rand(b, device=dev) * 2 - 1
    arousal = torch.rand(b, device=dev) * 2 - 1

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = stage2_loss(model(images), classes, valence, arousal)
        loss.backward()
        opt.step()

    def infer_step():
        with torch.no_grad():
            model(images)

    model.train()
    train = median_seconds(args.steps, train_step, sync)
    model.eval()
    infer = median_seconds(args.steps, infer_step, sync)
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result = {
        "depth": cfg["backbone"]["depth"], "width": cfg["backbone"]["width"],
        "aux_head": cfg["aux_head"], "num_classes": k, "size": args.size, "batch": b, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "device": args.device,
        "train_img_s": b / train, "infer_img_s": b / infer, "peak_rss_mib": rss_kib / 1024,
    }
    if args.device == "cuda":
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


if __name__ == "__main__":
    main()
