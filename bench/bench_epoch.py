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


def main(backbone: str = "resnet18", rounds: int = 4) -> dict[str, float]:
    """Blocks of `rounds` epochs in F-P-P-F order (F: one engine.fit call, P: the plain loop),
    each with its own warm-up epoch dropped; per-epoch training time only (no validation)."""
    import timm
    from timm.optim import create_optimizer_v2

    cfg = compose([f"backbone={backbone}", "optimizer.scheduler=none", "trainer.precision=fp32"])
    runtime = engine.Runtime.from_cfg(cfg.trainer)
    runtime.apply()  # as a run does (threads, the kept heap): both loops then run alike
    data = data_mod.build(cfg, need_source=True)
    n_classes = data.num_classes(StageData.source)
    torch.manual_seed(0)
    model = timm.create_model(cfg.backbone.name, num_classes=n_classes).to(runtime.device)
    mean_t, std_t = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    prep = data_mod.Preprocess(mean_t, std_t).to(runtime.device)
    train = data.train_batches(StageData.source, cfg, seed=0)
    val = data.eval_batches(StageData.source, "val", cfg)
    images, labels = data.source.train.images, data.source.train.labels
    mean = torch.tensor(mean_t, device=runtime.device).view(1, -1, 1, 1) * 255
    std = torch.tensor(std_t, device=runtime.device).view(1, -1, 1, 1) * 255
    gen = torch.Generator().manual_seed(0)

    losses: list[float] = []

    def framework_block() -> list[float]:
        res = engine.fit(model, train, val, prep, runtime, cfg, epochs=rounds + 1)
        losses.extend(h.train_loss for h in res.history)
        return [
            len(labels) / h.images_per_s for h in res.history[1:]
        ]  # training part of each epoch

    def plain_block() -> list[float]:
        opt = create_optimizer_v2(
            model, opt="adamw", lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay
        )
        times = [
            plain_epoch(
                model, images, labels, cfg.data.batch_size, mean, std, opt, gen, runtime.device
            )
            for _ in range(rounds + 1)
        ]
        return times[1:]

    ours = framework_block()
    plain = plain_block() + plain_block()
    ours += framework_block()
    ratio = median(ours) / median(plain)
    report(
        f"training epoch, framework / plain loop ({backbone}, {len(labels)} images, bs {cfg.data.batch_size}, {runtime.device})",
        f"{ratio:.3f}",
        "<= 1.03",
        f"{median(ours):.3f}s vs {median(plain):.3f}s per epoch",
    )
    return {"ratio": ratio, "first_loss": losses[0], "last_loss": losses[-1]}


if __name__ == "__main__":
    main()
