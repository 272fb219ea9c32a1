"""Framework training epoch vs a hand-written PyTorch loop doing the same work.

Same model, data (in-memory uint8 images), batch size, optimizer (timm AdamW with the same
parameter groups), normalisation on the device. Epochs alternate between the two to
cancel drift; the ratio of medians is printed (target <= 1.03).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from common import compose, median, report

from transfersweep import data as data_mod
from transfersweep import engine
from transfersweep.config import StageData


def plain_epoch(model, images, labels, batch_size, mean, std, opt, gen, device) -> float:
    t0 = time.perf_counter()
    model.train()
    order = torch.randperm(len(labels), generator=gen)
    for idx in order.split(batch_size):
        x = images[idx].to(device, non_blocking=True)
        y = labels[idx].to(device, non_blocking=True)
        x = (x.float() - mean) / std
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(backbone: str = "resnet18", rounds: int = 5) -> float:
    import timm
    from timm.optim import create_optimizer_v2

    cfg = compose([f"backbone={backbone}", "optimizer.scheduler=none", "trainer.precision=fp32"])
    rt = engine.Runtime.from_cfg(cfg.trainer)
    data = data_mod.build(cfg, need_source=True)
    n_classes = data.num_classes(StageData.source)
    torch.manual_seed(0)
    model = timm.create_model(cfg.backbone.name, num_classes=n_classes).to(rt.device)
    mean_t, std_t = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    prep = data_mod.Preprocess(mean_t, std_t).to(rt.device)
    train = data.train_batches(StageData.source, cfg, seed=0)
    val = data.eval_batches(StageData.source, "val", cfg)
    images, labels = data.source.train.images, data.source.train.labels
    mean = torch.tensor(mean_t, device=rt.device).view(1, -1, 1, 1) * 255
    std = torch.tensor(std_t, device=rt.device).view(1, -1, 1, 1) * 255
    opt = create_optimizer_v2(
        model, opt="adamw", lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay
    )
    gen = torch.Generator().manual_seed(0)
    ours, plain = [], []
    for r in range(rounds + 1):  # round 0 warms up both
        res = engine.fit(model, train, val, prep, rt, cfg, epochs=1)
        p = plain_epoch(model, images, labels, cfg.data.batch_size, mean, std, opt, gen, rt.device)
        if r:
            ours.append(res.train_seconds)
            plain.append(p)
    ratio = median(ours) / median(plain)
    n = len(labels)
    report(
        f"training epoch, framework / plain loop ({backbone}, {n} images, bs {cfg.data.batch_size}, {rt.device})",
        f"{ratio:.3f}",
        "<= 1.03",
        f"{median(ours):.2f}s vs {median(plain):.2f}s per epoch",
    )
    return ratio


if __name__ == "__main__":
    main()
