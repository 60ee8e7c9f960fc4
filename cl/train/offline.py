"""The offline protocol: ``epochs`` passes over each experience in shuffled mini-batches.

Batches are index slices of a device permutation; losses stay on the device and are read once per epoch.
"""
from __future__ import annotations

import torch

from cl.train.loop import Loop, check_finite


class OfflineLoop(Loop):
    def run_experience(self, i: int, exp) -> int:
        ctx, p = self.ctx, self.ctx.protocol
        strategy, preprocess = ctx.strategy, ctx.preprocess
        x_all, y_all = strategy.train_data(exp)
        n, bs = len(y_all), p.batch_size
        steps = (n + bs - 1) // bs
        ctx.events.experience_start(i, len(ctx.scenario), steps * p.epochs)
        dev = y_all.device
        t = exp.task_id
        for epoch in range(p.epochs):
            perm = torch.randperm(n, device=dev)
            losses = torch.zeros(steps, device=dev)
            for s in range(steps):
                idx = perm[s * bs:(s + 1) * bs]
                losses[s] = strategy.train_step(preprocess(x_all[idx]), y_all[idx], t)
                ctx.events.step()
            if steps:  # a strategy may train on nothing in an experience (first-session methods)
                check_finite(losses.mean(), f"epoch {epoch}", i)  # one host read per epoch
        return n * p.epochs
