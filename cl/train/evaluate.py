"""Evaluation: accuracy of the current model on experiences' test data, with one host read at the end."""
from __future__ import annotations

import torch


@torch.no_grad()
def evaluate(strategy, exps, preprocess, batch_size: int, task_aware: bool, device, class_masks=None) -> list[float]:
    """Accuracy on each experience's test data; one host read at the end."""
    model = strategy.model
    was_training = model.training
    model.eval()
    correct = []
    for j, exp in enumerate(exps):
        c = torch.zeros((), dtype=torch.long, device=device)
        x_all, y_all = exp.test_x, exp.test_y
        for i in range(0, len(y_all), batch_size):
            x = preprocess(x_all[i:i + batch_size])
            y = y_all[i:i + batch_size]
            logits = strategy.predict(x, exp.task_id)
            if task_aware and class_masks is not None:
                logits = logits.masked_fill(~class_masks[j], float("-inf"))
            c += (logits.argmax(1) == y).sum()
        correct.append(c)
    model.train(was_training)
    counts = torch.stack(correct).cpu().tolist() if correct else []
    return [c / max(1, len(e.test_y)) for c, e in zip(counts, exps)]


def class_masks(scenario, device) -> list[torch.Tensor]:
    """Per experience, the boolean mask of its classes (task-aware evaluation masks the other logits)."""
    masks = []
    for e in scenario.experiences:
        m = torch.zeros(scenario.n_classes, dtype=torch.bool, device=device)
        m[e.classes] = True
        masks.append(m)
    return masks
