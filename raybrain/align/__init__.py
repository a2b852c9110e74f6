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

This package must not import ray, mlflow or optuna; torch is imported lazily inside the
functions, so importing the package (e.g. to list the registry) does not load torch.
"""

from __future__ import annotations

from raybrain.align.contrastive import info_nce
from raybrain.align.diagnostics import linear_cka, rdm, rsa, subsample_items
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
from raybrain.registry import Registry

TRANSFER_LOSSES: Registry = Registry("transfer loss")
TRANSFER_LOSSES.register("contrastive")(info_nce)
TRANSFER_LOSSES.register("latent")(latent_transfer)

__all__ = [
    "MEGLoss",
    "TRANSFER_LOSSES",
    "individual_differences",
    "info_nce",
    "latent_mse",
    "latent_transfer",
    "linear_cka",
    "mix_losses",
    "pearson_rdm",
    "rdm",
    "rdm_mse_loss",
    "rdm_pearson_loss",
    "rsa",
    "rsa_area",
    "subsample_items",
    "temporal_rsa",
    "time_generalization",
    "time_generalization_loss",
]
