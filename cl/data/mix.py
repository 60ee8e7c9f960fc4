"""CutMix (Yun et al., ICCV 2019): paste a random box of a shuffled copy of the batch into each image and mix
the two labels by the box's area.  GDumb's retraining uses it (drimpossible/GDumb ``src/utils.py``,
``cutmix_data`` / ``rand_bbox``: lambda ~ Beta(alpha, alpha), a box of side sqrt(1 - lambda) of the image centred
at a uniform pixel and clipped to the image, lambda then recomputed from the clipped area).  The draws come from
torch's global generator (numpy's there), so a seeded run repeats them.

``loss = lam * CE(model(x_mixed), y) + (1 - lam) * CE(model(x_mixed), y_pasted)``."""
from __future__ import annotations

import torch


def box(h: int, w: int, lam: float) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a box of about (1 - lam) of an h x w image at a uniform centre, clipped."""
    rat = (1.0 - lam) ** 0.5
    ch, cw = int(h * rat), int(w * rat)
    cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
    return max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)


def cutmix(x: torch.Tensor, y: torch.Tensor, alpha: float = 1.0):
    """(mixed images, the pasted images' labels, lam = the share of each image left as it was); ``x`` (N, C, H, W)
    is not modified."""
    if x.dim() != 4:
        raise ValueError(f"cutmix needs image batches (N, C, H, W), got shape {tuple(x.shape)}")
    lam = float(torch.distributions.Beta(float(alpha), float(alpha)).sample())
    perm = torch.randperm(len(y)).to(x.device)
    t, b, l, r = box(x.shape[2], x.shape[3], lam)
    out = x.clone()
    out[:, :, t:b, l:r] = x[perm, :, t:b, l:r]
    return out, y[perm], 1.0 - (b - t) * (r - l) / (x.shape[2] * x.shape[3])
