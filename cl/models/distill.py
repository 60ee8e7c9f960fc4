"""Distillation losses shared by LwF, LwF.MC, iCaRL, LUCIR, BiC (and, after merge, X-DER / CL2R).

* ``kd_loss(student, teacher, T)``: Hinton-style knowledge distillation as LwF uses it (Li & Hoiem 2017,
  eq. 3 with T = 2): KL(softmax(teacher / T) || softmax(student / T)), summed over classes, mean over the
  batch. The KL form differs from LwF's soft cross-entropy only by the teacher's entropy (a constant, same
  gradient), so it is exactly 0 when student == teacher. No T^2 factor (LwF and PyCIL use none;
  ``scale_t2=True`` multiplies by T^2 as Hinton et al. do).
* ``sigmoid_distill(student, teacher)``: iCaRL's distillation (Rebuffi et al. 2017, Alg. 3): binary
  cross-entropy of the student's sigmoid outputs against the teacher's sigmoid outputs, mean over batch and
  classes (as the authors' code and Mammoth's ``icarl`` / ``lwf_mc`` use ``binary_cross_entropy_with_logits``
  with mean reduction).
* ``feature_distill(student, teacher, kind)``: ``cosine`` = mean over the batch of 1 - cos(f, f_old)
  (LUCIR's less-forget constraint, Hou et al. 2019 eq. 6; what ``nn.CosineEmbeddingLoss`` with target 1 gives);
  ``l2`` = mean squared distance per sample (sum over dimensions, mean over the batch).

Teachers are detached here, whatever the caller passes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cl.core.registry import unknown


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, T: float = 2.0, scale_t2: bool = False) -> torch.Tensor:
    teacher = teacher.detach().float()
    log_p_s = F.log_softmax(student.float() / T, dim=1)
    log_p_t = F.log_softmax(teacher / T, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1).mean()
    return kl * (T * T) if scale_t2 else kl


def sigmoid_distill(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(student.float(), torch.sigmoid(teacher.detach().float()))


FEATURE_DISTILL = ("cosine", "l2")


def feature_distill(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    teacher = teacher.detach().float()
    student = student.float()
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student, teacher, dim=1)).mean()
    if kind == "l2":
        return (student - teacher).pow(2).sum(1).mean()
    raise unknown("feature_distill", kind, FEATURE_DISTILL)
