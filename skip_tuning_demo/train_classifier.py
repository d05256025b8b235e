"""Train the Fashion-MNIST scoring classifier (CPU, a few minutes).

python -m skip_tuning_demo.train_classifier --epochs 4 --threads 1
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from skip_tuning_demo.classifier import CLASSIFIER_WEIGHTS, FashionClassifier  # type: ignore
    from skip_tuning_demo.data import DEFAULT_DATA_DIR, load_fashion_mnist, to_model_images  # type: ignore
else:
    from .classifier import CLASSIFIER_WEIGHTS, FashionClassifier
    from .data import DEFAULT_DATA_DIR, load_fashion_mnist, to_model_images


@torch.no_grad()
def evaluate(model, x, y, batch=1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch):
        correct += (model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum().item()
    return correct / x.shape[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    p.add_argument("--out", default=CLASSIFIER_WEIGHTS)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    xtr_u8, ytr = load_fashion_mnist("train", args.data_dir)
    xte_u8, yte = load_fashion_mnist("test", args.data_dir)
    xtr, xte = to_model_images(xtr_u8), to_model_images(xte_u8)
    ytr, yte = torch.from_numpy(ytr), torch.from_numpy(yte)

    model = FashionClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    n = xtr.shape[0]
    steps_per_epoch = math.ceil(n / args.batch_size)
    total = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total, pct_start=0.15)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    for ep in range(args.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        losses = []
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
            xb, yb = xtr[idx], ytr[idx]
            # light augmentation: random horizontal flip and +-2 px shifts
            flip = torch.rand(xb.shape[0], generator=gen) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
            dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(xb), yb, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        acc = evaluate(model, xte, yte)
        print(
            f"epoch {ep + 1} loss {float(np.mean(losses)):.4f} test acc {acc:.4f} ({time.time() - t0:.1f}s)",
            flush=True,
        )

    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, args.out, metadata={"test_accuracy": f"{acc:.4f}", "epochs": str(args.epochs)})
    os.chmod(args.out, 0o644)
    print(f"saved {args.out}, test accuracy {acc:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
