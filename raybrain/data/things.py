"""Real CLIP-HBA-Behavior targets from a THINGS folder (``../shared/data/things`` here).

Files read (see that folder's README):

- ``spose_embedding_66d_sorted.txt``: SPoSE, 1,854 concepts x 66 dimensions;
- ``labels_66.txt``: the 66 dimension labels (the text prompts), in column order;
- ``unique_id.txt``, ``words.txt``: concept id and word per SPoSE row;
- ``RDM48_triplet.mat`` (key ``RDM48_triplet``): the fully sampled behavioural RDM of 48
  objects; ``rdm48_concepts_in_order.tsv``: its rows' THINGS indices and image names;
- ``test_triplets_things_order.npy``: 20,000 human odd-one-out trials, int (20000, 5):
  three SPoSE rows, the chosen odd one out at position 1..3, a participant number.

The THINGS images are not in that folder; a user who has them passes the image folder and
an order file (:mod:`raybrain.data.images`) whose lines are the ``image_name`` column of
the 48-object table (test set) or of their own training table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raybrain.data.behaviour import rescale_spose
from raybrain.data.embeddings import load_spose
from raybrain.errors import SpecError

__all__ = ["ThingsTargets", "load_things_targets"]


@dataclass
class ThingsTargets:
    """THINGS behavioural targets.

    Attributes
    ----------
    spose : np.ndarray of float32, shape (1854, 66)
        SPoSE embedding, rounding negatives (down to -0.00052) clipped to 0.
    spose_raw : np.ndarray of float64, shape (1854, 66)
        The file's values, unclipped (what the CLIP-HBA targets are rescaled from).
    labels : list of str, length 66
    unique_ids, words : list of str, length 1854
    lo, hi : float
        Global min and max of the raw embedding *before* clipping (the CLIP-HBA rescaling
        constants: -0.00052, 2.7415).
    rdm48 : np.ndarray of float64, shape (48, 48)
    rdm48_index : np.ndarray of int64, shape (48,)
        SPoSE row of each RDM48 row.
    rdm48_images : list of str, length 48
        THINGS image file of each RDM48 row (e.g. ``pizza_01b.jpg``).
    triplets : np.ndarray of int64, shape (20000, 3)
        SPoSE rows of each human trial.
    odd : np.ndarray of int64, shape (20000,)
        Position (0, 1, 2) of the chosen odd one out.
    participants : np.ndarray of int64, shape (20000,)
    """

    spose: np.ndarray
    spose_raw: np.ndarray
    labels: list[str]
    unique_ids: list[str]
    words: list[str]
    lo: float
    hi: float
    rdm48: np.ndarray
    rdm48_index: np.ndarray
    rdm48_images: list[str]
    triplets: np.ndarray
    odd: np.ndarray
    participants: np.ndarray

    def rescaled(self, rows=None) -> np.ndarray:
        """CLIP-HBA targets ``(raw - lo) / (hi - lo) * 100`` of the given rows (None: all).

        Computed from the unclipped values, as the CLIP-HBA authors' CSV files.

        Returns
        -------
        np.ndarray of float64, shape (n_rows, 66)
        """
        v = self.spose_raw if rows is None else self.spose_raw[np.asarray(rows)]
        return rescale_spose(v, self.lo, self.hi)


def _need(root: Path, name: str) -> Path:
    p = root / name
    if not p.is_file():
        raise SpecError(f"THINGS folder '{root}' has no {name}; expected the files listed in "
                        f"raybrain.data.things")
    return p


def load_things_targets(root: str | os.PathLike) -> ThingsTargets:
    """Read the THINGS behavioural targets from ``root``.

    Raises
    ------
    SpecError
        A missing file or one whose shape does not fit the others.
    """
    import scipy.io

    r = Path(root)
    if not r.is_dir():
        raise SpecError(f"THINGS folder '{r}' not found; expected a directory")
    emb = load_spose(_need(r, "spose_embedding_66d_sorted.txt"), _need(r, "labels_66.txt"),
                     _need(r, "words.txt"))
    ids = [ln.strip() for ln in _need(r, "unique_id.txt").read_text().splitlines() if ln.strip()]
    raw = np.loadtxt(_need(r, "spose_embedding_66d_sorted.txt"), dtype=np.float64, ndmin=2)
    n = emb.values.shape[0]
    if len(ids) != n:
        raise SpecError(f"THINGS unique_id.txt has {len(ids)} lines but the SPoSE embedding has "
                        f"{n} rows; expected one id per row")
    rdm = np.asarray(scipy.io.loadmat(_need(r, "RDM48_triplet.mat"))["RDM48_triplet"], float)
    rows = [ln.split("\t") for ln in _need(r, "rdm48_concepts_in_order.tsv").read_text()
            .splitlines()[1:] if ln.strip()]
    idx = np.array([int(x[1]) for x in rows], dtype=np.int64)
    if rdm.shape != (len(idx), len(idx)) or idx.max(initial=0) >= n:
        raise SpecError(f"THINGS RDM48 has shape {rdm.shape} for {len(idx)} listed concepts; "
                        f"expected a square RDM with one row per concept")
    trials = np.load(_need(r, "test_triplets_things_order.npy"), allow_pickle=False)
    if trials.ndim != 2 or trials.shape[1] != 5 or trials[:, :3].max() >= n or not np.isin(
            trials[:, 3], (1, 2, 3)).all():
        raise SpecError(f"THINGS test triplets must be int (n, 5) with rows < {n} and the odd "
                        f"one out in 1..3, got shape {trials.shape}")
    return ThingsTargets(
        spose=emb.values, spose_raw=raw, labels=emb.labels, unique_ids=ids, words=emb.words or [],
        lo=float(raw.min()), hi=float(raw.max()), rdm48=rdm, rdm48_index=idx,
        rdm48_images=[x[3] for x in rows], triplets=trials[:, :3].astype(np.int64),
        odd=(trials[:, 3] - 1).astype(np.int64), participants=trials[:, 4].astype(np.int64))
