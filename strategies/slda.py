"""Deep SLDA: streaming linear discriminant analysis on frozen features (Hayes & Kanan, CVPR-W 2020,
"Lifelong Machine Learning with Deep Streaming Linear Discriminant Analysis").

Nothing is trained by gradient: every incoming batch updates running class means and one covariance
shared by all classes (``cl.models.slda.StreamingLDAHead``); a sample is classified by the linear
discriminant of the shrunk covariance's precision matrix.  Exemplar-free, rehearsal-free and task-free
(no boundary is used), so it runs under ``protocol=online`` with any ``scenario.boundaries``.

Defaults and choices, from the paper and the authors' code (tyler-hayes/Deep_SLDA ``SLDA_Model.py``;
Avalanche ``avalanche/training/supervised/deep_slda.py`` follows it):

* ``shrinkage = 1e-4`` (both codes' ``shrinkage_param``): ``Lambda = ((1 - s) Sigma + s I)^{-1}``.
* Scores ``x^T Lambda mu_k - 1/2 mu_k^T Lambda mu_k``, no class prior (as both codes).
* The covariance is plastic (the codes' ``streaming_update_sigma=True``).
* Frozen features: the backbone is frozen and run once (the engine's feature cache), as Avalanche's
  ``StreamingLDA`` and CapyMOA use it; the paper uses an ImageNet-pretrained ResNet-18 (features of its
  last layer).  A backbone trained from scratch is not part of the method.

Deviations:

* ``covariance=exact`` (default) updates the pooled within-class covariance exactly, so the streaming
  estimate equals the batch estimate (and sklearn's ``LinearDiscriminantAnalysis``); the paper's per-sample
  recursion, which weights each sample by the total count instead of its class's count, is
  ``covariance=paper`` (cl/models/slda.py has both formulas).
* No base initialisation: the paper fits the first 100 ImageNet classes offline (means, and the
  covariance by OAS) before streaming; here the stream starts from zero counts (``N = 0``), the setting of
  Avalanche's strategy when ``fit_base`` is not called.
* The precision is solved (``torch.linalg.solve``) instead of pseudo-inverted when ``s > 0`` (the matrix is
  positive definite then); ``s = 0`` uses the pseudo-inverse, as the codes.
"""
from __future__ import annotations

from dataclasses import dataclass

from cl.core.strategy import StrategyConfig, register
from cl.models.slda import StreamingLDAHead
from strategies.ncm import NCM


@dataclass
class SLDAConfig(StrategyConfig):
    shrinkage: float = 1e-4  # s in (1 - s) Sigma + s I (Hayes & Kanan's code)
    covariance: str = "exact"  # exact: pooled within-class covariance (= batch) | paper: the paper's recursion


@register("slda", SLDAConfig)
class SLDA(NCM):
    """Streaming LDA on frozen features: running class means + one shared covariance, shrunk precision."""

    @classmethod
    def make_head(cls, cfg, in_dim, n_classes):
        return StreamingLDAHead(in_dim, n_classes, cfg.shrinkage, cfg.covariance)
