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

Brain-guided language models: :mod:`raybrain.align.predictivity` (cross-validated ridge
predictivity per layer as a fraction of the split-half noise ceiling; joint model-brain
directions by PLS/CCA and their random control; numpy + scikit-learn, imported lazily)
and :mod:`raybrain.align.steering` (the fine-tuning term pulling states along the joint
directions, torch).

This package must not import ray, mlflow or optuna; torch is imported lazily inside the
functions, so importing the package (e.g. to list the registry) does not load torch.
"""

from __future__ import annotations

from raybrain.align.contrastive import info_nce
from raybrain.align.diagnostics import linear_cka, rdm, rsa, subsample_items
from raybrain.align.latent import latent_mse, latent_transfer
from raybrain.align.mixing import mix_losses
from raybrain.registry import Registry

TRANSFER_LOSSES: Registry = Registry("transfer loss")
TRANSFER_LOSSES.register("contrastive")(info_nce)
TRANSFER_LOSSES.register("latent")(latent_transfer)

__all__ = [
    "TRANSFER_LOSSES",
    "info_nce",
    "latent_mse",
    "latent_transfer",
    "linear_cka",
    "mix_losses",
    "rdm",
    "rsa",
    "subsample_items",
]
