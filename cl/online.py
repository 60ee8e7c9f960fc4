"""The online protocol: one pass in small batches, test-then-train.

Every incoming batch is first predicted by the current model (in eval mode,
under ``no_grad``) and only then learned, so online accuracy uses the prior
model.  Per-sample correctness stays on the device and is read every
``SYNC_EVERY`` steps.
"""
from __future__ import annotations

import numpy as np
import torch

from . import metrics as M

SYNC_EVERY = 200


class OnlineLoop:
    def __init__(self, strategy, scenario, pcfg, preprocess, device, evaluate, bar, wandb, state):
        self.s, self.scenario, self.p = strategy, scenario, pcfg
        self.preprocess, self.device, self.evaluate = preprocess, device, evaluate
        self.bar, self.wandb = bar, wandb
        if state.get("online") is None:
            state["online"] = {"correct": [], "seen": 0}
        self.state = state["online"]

    @torch.no_grad()
    def _predict(self, x, t):
        m = self.s.model
        m.eval()
        pred = self.s.predict(x, t).argmax(1)
        m.train()
        return pred

    def run_experience(self, i: int, exp) -> int:
        x_all, y_all = self.s.train_data(exp)
        n, bs = len(y_all), self.p.batch_size
        order = torch.randperm(n, device=y_all.device) if self.p.shuffle_within_experience else None
        steps = (n + bs - 1) // bs
        self.bar.start_experience(i, len(self.scenario), steps)
        correct = torch.zeros(n, dtype=torch.bool, device=y_all.device)
        losses = torch.zeros(steps, device=y_all.device)
        t = exp.task_id
        for s in range(steps):
            sl = slice(s * bs, (s + 1) * bs)
            idx = order[sl] if order is not None else sl
            x, y = self.preprocess(x_all[idx]), y_all[idx]
            correct[sl] = self._predict(x, t) == y
            losses[s] = self.s.train_step(x, y, t)
            if (s + 1) % SYNC_EVERY == 0 or s + 1 == steps:
                self._sync(losses[: s + 1], correct[: min(n, (s + 1) * bs)], i, s)
            self.bar.update()
        self.state["correct"].append(correct.cpu().numpy().astype(np.uint8))
        self.state["seen"] += n
        flat = np.concatenate(self.state["correct"])
        self.state["online_acc"] = M.online_accuracy(flat)
        self.state["online_acc_window"] = float(M.windowed_online_accuracy(flat, self.p.window)[-1])
        self.wandb.log({"online_acc": self.state["online_acc"], "samples": self.state["seen"]}, step=i)
        return n

    def _sync(self, losses, correct, i, s):
        from .engine import NonFiniteLoss

        if not torch.isfinite(losses).all().item():
            raise NonFiniteLoss(f"non-finite loss in experience {i} by step {s}: stopping; "
                                f"accuracies up to experience {i - 1} are kept in failed.json")
        prev = sum(len(c) for c in self.state["correct"])
        prev_c = sum(int(c.sum()) for c in self.state["correct"])
        acc = (prev_c + int(correct.sum().item())) / max(1, prev + len(correct))
        self.bar.update(0, online_acc=f"{acc:.3f}")
