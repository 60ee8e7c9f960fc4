"""Task-incremental (multi-head) support for strategies that need the task id: PNN, PackNet, HAT, RMN, HNET.

The engine passes ``t = exp.task_id`` to ``train_step(x, y, t)`` and ``predict(x, t)`` and, in
``setting=task``, masks the evaluation logits to the task's classes.  What is left to a strategy, and
lives here so that every isolation method does it the same way:

* :func:`require_task_ids` -- a clear :class:`ConfigError` when the run has no task ids
  (``setting`` is not ``task``), naming the setting it needs.
* :func:`class_mask` / :func:`restrict` -- the current task's classes as a device-resident boolean
  mask, and logits restricted to them.  Training on restricted logits is what makes one shared
  ``IncrementalLinear`` a multi-head classifier: rows of other tasks' classes get exactly zero gradient
  (their logits are -inf constants), so with a per-task optimiser they stay bitwise unchanged.
* :func:`split_stages` -- a plain sequential backbone (``mlp``, ``cnn``) cut into stages
  ``(main, post)``: ``main`` is the Linear / Conv2d layer, ``post`` the modules after it up to the next
  one (BatchNorm, ReLU, pooling, flattening).  PNN's lateral connections and HAT's unit gates act on
  the stages.
* :func:`freeze_batchnorm` -- BatchNorm trained on the first task only (PackNet, HAT, RMN): running
  statistics and affine parameters shared by every task cannot change after task 0 or earlier tasks'
  outputs would drift (PackNet's authors do the same in their code).
"""
from __future__ import annotations

import torch
from torch import nn

from cl.core.registry import ConfigError

SEQUENTIAL_BACKBONES = ("cnn", "mlp")


def require_task_ids(info, name: str) -> None:
    if getattr(info, "setting", "class") != "task":
        raise ConfigError(f"strategy {name!r} needs task ids at training and test time (task-incremental, "
                          f"multi-head); this run has setting={info.setting!r}. Run it with "
                          f"--set scenario.setting=task")


def task_index(t) -> int:
    """The task id as a Python int (the engine passes an int; a tensor of one task id is accepted)."""
    if t is None:
        raise ConfigError("this strategy needs task ids; run it with --set scenario.setting=task")
    if isinstance(t, torch.Tensor):
        t = t.reshape(-1)[0].item()
    return int(t)


def class_mask(classes, n_classes: int, device) -> torch.Tensor:
    """Boolean mask over all classes, True for ``classes`` (a plain tensor: checkpoints hold it as is)."""
    m = torch.zeros(n_classes, dtype=torch.bool, device=device)
    m[torch.as_tensor(list(classes), dtype=torch.long, device=device)] = True
    return m


def restrict(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits of the classes outside ``mask`` set to -inf (zero gradient to their head rows)."""
    return logits.masked_fill(~mask, float("-inf"))


def split_stages(backbone: nn.Module, strategy: str) -> tuple[nn.Module, list[tuple[nn.Module, nn.Module]]]:
    """``(pre, [(main, post), ...])`` of a sequential backbone whose ``net`` is an ``nn.Sequential`` of
    Linear / Conv2d layers with activations, normalisation and pooling between them."""
    net = getattr(backbone, "net", None)
    if not isinstance(net, nn.Sequential) or not any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in net):
        raise ConfigError(f"strategy {strategy!r} needs a sequential backbone (its layers are isolated one by "
                          f"one); valid backbones: {', '.join(SEQUENTIAL_BACKBONES)}")
    pre, stages, cur = [], [], None
    for m in net:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            cur = [m, []]
            stages.append(cur)
        elif cur is None:
            pre.append(m)
        else:
            cur[1].append(m)
    return nn.Sequential(*pre), [(main, nn.Sequential(*post)) for main, post in stages]


def batchnorms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_batchnorm(module: nn.Module) -> None:
    """Put every BatchNorm of ``module`` in eval mode (statistics fixed); call after ``model.train()``."""
    for m in batchnorms(module):
        m.eval()


def drop_batchnorm_grads(module: nn.Module) -> None:
    """No update for BatchNorm affine parameters (their grads set to None: the optimiser skips them)."""
    for m in batchnorms(module):
        for p in m.parameters(recurse=False):
            p.grad = None


def drop_shared_grads(backbone: nn.Module) -> None:
    """After the first task: no update for the backbone's biases and BatchNorm parameters (PackNet's
    ``train_bias=False, train_bn=False``; RMN) -- grads set to None, so the optimiser skips them."""
    drop_batchnorm_grads(backbone)
    for n, p in backbone.named_parameters():
        if n.endswith("bias"):
            p.grad = None
