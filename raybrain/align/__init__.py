"""Alignment objectives between model and brain representations (pure torch).

Transfer losses are registered in :data:`TRANSFER_LOSSES` by name; each entry is called
as ``fn(model_emb, brain_emb, mask, temperature) -> scalar tensor`` with embeddings of
shape (..., E) and a bool mask of shape (...) or None.

============== ==================================== ============================
name           function                             B2M equation
============== ==================================== ============================
"contrastive"  :func:`info_nce`                     eq. 2 (brain contrastive)
"latent"       :func:`latent_transfer`              eq. 3 (brain latent transfer)
============== ==================================== ============================

:func:`mix_losses` combines a task loss and a transfer loss (eq. 1).

Alignment diagnostics (numpy/scipy, no gradient) live in :mod:`raybrain.align.diagnostics`:
:func:`rdm`, :func:`rsa`, :func:`linear_cka`, :func:`subsample_items`.

Time-resolved RDM objectives of CLIP-HBA-MEG live in :mod:`raybrain.align.temporal`:
:func:`pearson_rdm`, :func:`rdm_pearson_loss`, :func:`rdm_mse_loss`,
:func:`time_generalization`, :func:`time_generalization_loss`, :class:`MEGLoss`, and the
evaluation :func:`temporal_rsa`, :func:`rsa_area`, :func:`individual_differences`.
Structural alignment (the brain-in-the-loop method; torch + POT):

- :mod:`raybrain.align.transport`: log-domain Sinkhorn plans through POT, the OT and CE
  correspondence terms, dustbin, putative (mutual) matches;
- :mod:`raybrain.align.gw`: Gromov-Wasserstein loss (envelope or fully unrolled) and
  distance between RDMs;
- :mod:`raybrain.align.neighbourhoods`: Gumbel K-neighbourhoods (straight-through) and the
  local-structure cross-entropy;
- :mod:`raybrain.align.concept_metrics`: matching rate, silhouette, one-shot accuracy.
Brain-guided language models: :mod:`raybrain.align.predictivity` (cross-validated ridge
predictivity per layer as a fraction of the split-half noise ceiling; joint model-brain
directions by PLS/CCA and their random control; numpy + scikit-learn, imported lazily)
and :mod:`raybrain.align.steering` (the fine-tuning term pulling states along the joint
directions, torch).

This package must not import ray, mlflow or optuna; torch is imported lazily inside the
functions, so importing the package (e.g. to list the registry) does not load torch.
"""

from __future__ import annotations

from raybrain.align.concept_metrics import (category_one_shot_accuracy, one_shot_accuracy,
                                            permutation_null, silhouette_by_category,
                                            topk_matching_rate)
from raybrain.align.contrastive import info_nce
from raybrain.align.diagnostics import linear_cka, rdm, rsa, subsample_items
from raybrain.align.gw import gw_distance, gw_loss, gw_plan, normalise_cost
from raybrain.align.latent import latent_mse, latent_transfer
from raybrain.align.mixing import mix_losses
from raybrain.align.temporal import (
    MEGLoss,
    individual_differences,
    pearson_rdm,
    rdm_mse_loss,
    rdm_pearson_loss,
    rsa_area,
    temporal_rsa,
    time_generalization,
    time_generalization_loss,
)
from raybrain.align.neighbourhoods import (gumbel_topk, local_structure_ce,
                                           neighbour_cross_entropy, neighbourhood_overlap)
from raybrain.align.transport import (add_dustbin, correspondence_ce, ot_matching_loss,
                                      putative_matches, sinkhorn_log_plan)
from raybrain.registry import Registry

TRANSFER_LOSSES: Registry = Registry("transfer loss")
TRANSFER_LOSSES.register("contrastive")(info_nce)
TRANSFER_LOSSES.register("latent")(latent_transfer)

__all__ = [
    "add_dustbin",
    "category_one_shot_accuracy",
    "correspondence_ce",
    "gumbel_topk",
    "gw_distance",
    "gw_loss",
    "gw_plan",
    "individual_differences",
    "info_nce",
    "latent_mse",
    "latent_transfer",
    "linear_cka",
    "local_structure_ce",
    "MEGLoss",
    "mix_losses",
    "neighbour_cross_entropy",
    "neighbourhood_overlap",
    "normalise_cost",
    "one_shot_accuracy",
    "ot_matching_loss",
    "pearson_rdm",
    "permutation_null",
    "putative_matches",
    "rdm",
    "rdm_mse_loss",
    "rdm_pearson_loss",
    "rsa",
    "rsa_area",
    "silhouette_by_category",
    "sinkhorn_log_plan",
    "subsample_items",
    "temporal_rsa",
    "time_generalization",
    "time_generalization_loss",
    "topk_matching_rate",
    "TRANSFER_LOSSES",
]
