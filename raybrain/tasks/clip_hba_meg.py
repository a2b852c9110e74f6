"""CLIP-HBA-MEG: CLIP fitted to time-resolved MEG/EEG RDMs, per group or per participant.

Protocol (CLIP-HBA paper, section 4.3.4): the model
(:class:`~raybrain.models.clip_meg.CLIPHBAMEG`) predicts, for every time point of the target
axis, an embedding of each image from a reweighted mix of its vision tower's per-layer CLS
features (the feature-reweighting matrix, time points x layers, initialised to the last
layer, rows on the simplex, averaged over a sliding window of ``2 * half_width + 1``
samples), scaled by the visual scaler ``alpha_T`` and bound to the label texts with binding
strength ``beta_T``, plus training noise at a level following ``1 - beta_T`` (at most
``noise_scale``). The three curves come from the run's *training* target RDMs
(:mod:`raybrain.data.meg_targets`). The predicted RDMs (``1 - Pearson``) of a batch are
fitted to the batch's target RDMs with ``w1 P/P0 + w2 M/M0 + w3 G/G0``
(:class:`~raybrain.align.temporal.MEGLoss`: Pearson over all time slices, MSE,
time-generalisation), normalised by the terms' values at initialisation on the validation
stimuli. Stage 1 (``stage1_epochs``) trains the reweighting matrix only (``lr``); stage 2
adds the DoRA adapters of the last ``n_vision`` vision blocks (``adapter_lr``). AdamW;
after every step the reweighting rows are projected back onto the simplex. Checkpoints hold
the reweighting matrix and the adapters. Early stopping (after stage 1) watches the
validation RSA area; the run ends on its best validation epoch's state.

``participant`` picks one participant's RDMs (a personal model; ids are pseudonymised in
tracking); empty: the average over participants (the group model). A sweep over
participants (``participant: {grid: [...]}``) trains one model per participant.

Evaluation on held-out stimuli, always against the real RDMs of the run's participant
(or group):

- ``test_rsa_area`` (primary): the temporal RSA curve (Spearman r between predicted and
  target RDMs at each time point) averaged over the time axis (the area per unit of time);
  a time point where the prediction is constant (``alpha_T = 0``, at and before onset)
  scores 0;
- ``rsa_t<ms>``: the curve itself, one metric per time point named by its time in ms
  (``rsa_t-100``, ``rsa_t0``, ``rsa_t20``, ...), drawn by the dashboard's ``curve`` panel;
- ``align_rsa_peak``: the curve's peak; ``align_tg_r``: Pearson r between the predicted and
  target time-generalisation profiles;
- personal runs with >= 2 participants: ``test_own_minus_other_r``: Pearson r between
  the model's held-out RDM time course (all time points' upper triangles, one vector) and
  its own participant's, minus the mean r with the other participants' (the per-model part
  of the paper's individual-differences analysis, section 4.5);
- ``val_rsa_area``: on the validation stimuli against the run's own targets.

Arms: ``brain`` (real RDMs), ``shuffled`` (stimuli permuted among the training and
validation stimuli: rows and columns together), ``noise`` (RDMs of those stimuli mixed by
one random orthogonal matrix in the double-centred domain, each slice then given the real
slice's values: same value distribution, spectrum and time generalisation, no stimulus
correspondence; :mod:`raybrain.data.stimulus_controls`), ``none`` (the untouched backbone:
the model at initialisation, i.e. the last layer's static embedding at every time point).
No brain weight and no L2 arm (the targets are the only loss).

Artifacts (model-derived only): the predicted RDM of the test stimuli at the chosen
``saliency_times_ms`` (``model_rdm_<k>``), RISE saliency maps of the first test image at
those times (``saliency_<k>``, divided by the masks' empirical coverage, with the image as
``saliency_image``), and at the last epoch
the whole held-out RDM stack (``heldout_rdms``, T x n_test x n_test) for the
individual-differences analysis across personal models.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from raybrain.errors import SpecError
from raybrain.tasks import register
from raybrain.tasks._clip_common import (
    BACKBONE_PATHS,
    BackboneImages,
    CLIPRun,
    absolute_paths,
    batches,
    check_adapters,
    check_backbone,
    chunks,
    count_images,
    load_images,
    model_geometry,
    split_stimuli,
)
from raybrain.tasks.b2m_driving import PrepSettings
from raybrain.tasks.base import GENERATOR_NOT_BARE_NULL, Param, Task

#: a noise-arm surrogate above this many bytes is written to data.cache_dir, not held in memory
SURROGATE_IN_MEMORY = 2**30


class RecordingSettings(BaseModel):
    """RDMs computed from a recording's epochs (:func:`raybrain.data.eeg_rdm.prepare_epoch_rdms`).

    ``events`` names one event per condition (stimulus), or one event whose occurrences
    ``labels`` assigns to conditions (one label per occurrence).
    """

    model_config = ConfigDict(extra="forbid")
    path: str
    events: list[str | int]
    labels: list[int] | None = None
    tmin: float = -0.1
    tmax: float = 0.5
    method: Literal["correlation", "decoding"] = "correlation"
    n_folds: int = Field(5, ge=2)
    prep: PrepSettings = PrepSettings()


class MEGData(BackboneImages):
    """The ``data:`` section of a ``clip-hba-meg`` spec.

    Sources: ``synthetic`` (procedural images; per-participant RDMs from a hidden teacher,
    informative, or ``null``: from the teacher looking at unrelated images;
    :mod:`raybrain.data.clip_synthetic`); ``rdm_file`` (a (T, N, N) or (P, T, N, N) stack read
    by :func:`raybrain.data.rdm.load_rdm`, memory-mapped when large, with the user's images
    in RDM row order and the label prompts); ``recording`` (RDMs computed once, in the
    sweep's driver, from an EEG/MEG recording's epochs, cached).
    """

    source: Literal["synthetic", "rdm_file", "recording"] = "synthetic"
    generator: Literal["informative", "null"] = "informative"
    n_images: int = Field(160, ge=12)
    n_dims: int = Field(66, ge=2, le=72)
    n_participants: int = Field(1, ge=1)
    distortion: float = Field(0.3, ge=0)
    rdm_noise: float = Field(0.5, ge=0)
    latency_jitter_ms: float = Field(20.0, ge=0)
    #: [start, stop, step] in ms (stop inclusive): the synthetic axis, and the axis an RDM
    #: file must have; a recording's comes from its epochs (checked against this when given)
    times_ms: list[float] | None = None
    onset_ms: float = 0.0
    rdm_file: str | None = None
    rdm_key: str | None = None
    nan_policy: Literal["error", "zero", "keep"] = "error"
    #: ids of the participant axis of the RDM stack (default "1".."P"; synthetic "s1".."sP")
    participants: list[str] = []
    #: names of the RDM's stimuli, one per line, checked against the order file's
    stimuli_file: str | None = None
    labels_file: str | None = None
    recording: RecordingSettings | None = None
    cache_dir: str | None = None
    val_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    #: scale target RDMs to [0, 1] by the stack's global min and max (the CLIP-HBA code)
    scale_targets: bool = True
    #: [min, max] used for that scaling; left empty it is computed once, in the sweep's
    #: driver (a read of the whole stack, block by block), and handed to the trials
    scale_range: list[float] | None = None
    #: smoothing (samples) of 1 - beta_T before it becomes the noise level (CLIP-HBA: 3)
    noise_sigma: float = Field(3.0, ge=0)
    saliency_times_ms: list[float] = [100.0, 200.0, 400.0]
    saliency_masks: int = Field(200, ge=1)
    saliency_grid: int = Field(7, ge=2)

    _bare_null = GENERATOR_NOT_BARE_NULL

    @model_validator(mode="after")
    def _check(self):
        if self.scale_range is not None and (len(self.scale_range) != 2
                                             or not self.scale_range[1] > self.scale_range[0]):
            raise ValueError(f"data.scale_range must be [min, max] with max > min, got "
                             f"{self.scale_range}")
        if self.times_ms is not None and len(self.times_ms) != 3:
            raise ValueError(f"data.times_ms must be [start, stop, step] in ms, got "
                             f"{self.times_ms}")
        if self.source == "rdm_file":
            if not self.rdm_file or self.times_ms is None:
                raise ValueError("data.source 'rdm_file' needs data.rdm_file and data.times_ms "
                                 "([start, stop, step] of its time axis, ms)")
        if self.source == "recording" and self.recording is None:
            raise ValueError("data.source 'recording' needs data.recording: {path, events, ...}")
        if self.source != "synthetic":
            if not (self.images_dir or self.images_file):
                raise ValueError(f"data.source {self.source!r} needs images in RDM row order: "
                                 f"data.images_dir with data.order_file, or data.images_file")
            if not self.labels_file:
                raise ValueError(f"data.source {self.source!r} needs data.labels_file: the text "
                                 f"prompts (e.g. the 66 SPoSE dimension labels), one per line")
        elif self.images_dir or self.images_file or self.rdm_file or self.recording:
            raise ValueError("data.source 'synthetic' makes its own images and RDMs; drop "
                             "data.images_* / rdm_file / recording")
        return self

    def axis(self) -> np.ndarray | None:
        from raybrain.data.meg_targets import time_axis

        if self.times_ms is None:
            return time_axis(-100, 600, 20) if self.source == "synthetic" else None
        return time_axis(*self.times_ms)


def _participant_ids(data: MEGData, n: int) -> list[str]:
    if data.participants:
        if len(data.participants) != n:
            raise SpecError(f"data.participants lists {len(data.participants)} ids but the RDMs "
                            f"hold {n} participants; expected one id per participant")
        return [str(p) for p in data.participants]
    return [f"s{k + 1}" for k in range(n)] if data.source == "synthetic" else [
        str(k + 1) for k in range(n)]


def _labels(data: MEGData) -> list[str]:
    from raybrain.data.clip_synthetic import synthetic_labels

    if data.source == "synthetic":
        return synthetic_labels(data.n_dims)
    p = Path(data.labels_file)
    if not p.is_file():
        raise SpecError(f"data.labels_file '{p}' not found; expected one label per line")
    labels = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not labels:
        raise SpecError(f"data.labels_file '{p}' is empty; expected one label per line")
    return labels


@dataclass
class TargetView:
    """Target RDMs as a brain source sees them.

    ``stack`` (P, T, M, M) (possibly memory-mapped); ``pos`` (N,) the stack row of every
    stimulus (-1: none, the test stimuli of a control view).
    """

    stack: np.ndarray
    pos: np.ndarray


@dataclass
class MEGTaskData:
    """What every run of a sweep shares.

    ``rdms`` (P, T, N, N) real target RDMs (possibly memory-mapped); ``times`` (T,) s;
    ``train``/``val``/``test`` stimulus indices; ``lo``/``hi`` the scaling range.
    """

    images: Any
    labels: list[str]
    rdms: np.ndarray
    times: np.ndarray
    participants: list[str]
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    lo: float
    hi: float
    data_seed: int
    data: MEGData
    fingerprint: str
    _views: dict[str, TargetView] = field(default_factory=dict)
    _curves: dict[tuple, tuple] = field(default_factory=dict)

    def participant_index(self, participant: str) -> int | None:
        if not participant:
            return None
        if participant not in self.participants:
            raise SpecError(f"params.participant {participant!r} is not one of the data's "
                            f"{len(self.participants)} participants")
        return self.participants.index(participant)

    def view(self, source: str | None) -> TargetView:
        source = source or "real"
        if source not in self._views:
            n = self.rdms.shape[-1]
            pool = np.concatenate([self.train, self.val])
            pos = np.arange(n)
            stack = self.rdms
            if source == "shuffled":
                from raybrain.data.stimulus_controls import stimulus_permutation

                perm = stimulus_permutation(len(pool), np.random.default_rng([self.data_seed, 11]))
                pos = pos.copy()
                pos[pool] = pool[perm]
            elif source == "noise":
                stack = self._surrogate(pool)
                pos = np.full(n, -1)
                pos[pool] = np.arange(len(pool))
            elif source != "real":
                raise ValueError(f"brain source must be one of real/shuffled/noise, got {source!r}")
            self._views[source] = TargetView(stack, pos)
        return self._views[source]

    def _surrogate(self, pool: np.ndarray) -> np.ndarray:
        from raybrain.data.stimulus_controls import rdm_surrogate

        rng = np.random.default_rng([self.data_seed, 12])
        shape = (self.rdms.shape[0], self.rdms.shape[1], len(pool), len(pool))
        if int(np.prod(shape)) * 4 <= SURROGATE_IN_MEMORY:
            return rdm_surrogate(self.rdms, rng, index=pool)
        if not self.data.cache_dir:
            raise SpecError(f"the noise arm's surrogate RDMs {shape} need "
                            f"{np.prod(shape) * 4 / 2**30:.1f} GiB; set data.cache_dir (they "
                            f"are written there once and memory-mapped)")
        from raybrain.data.cache import file_lock

        key = hashlib.sha256(json.dumps([self.fingerprint, self.data_seed,
                                         pool.tolist()]).encode()).hexdigest()[:20]
        d = Path(self.data.cache_dir).expanduser()
        d.mkdir(parents=True, exist_ok=True)
        final = d / f"rdm-noise-{key}.npy"
        with file_lock(d / f"rdm-noise-{key}.lock"):
            if not final.exists():
                tmp = d / f".rdm-noise-{key}.tmp.npy"
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
                rdm_surrogate(self.rdms, rng, index=pool, out=out)
                out.flush()
                del out
                os.replace(tmp, final)
        return np.load(final, mmap_mode="r")

    def targets(self, view: TargetView, idx, participant: int | None) -> np.ndarray:
        """Target RDMs of stimuli ``idx`` (T, B, B), scaled, for one participant or all."""
        from raybrain.data.meg_targets import target_batch

        rows = view.pos[np.asarray(idx, dtype=np.int64)]
        if (rows < 0).any():
            raise ValueError("a control view has no targets for the test stimuli")
        parts = None if participant is None else [participant]
        t = target_batch(view.stack, rows, participants=parts)
        if self.data.scale_targets:
            t = (t - self.lo) / (self.hi - self.lo)
            idx_d = np.arange(t.shape[1])
            t[:, idx_d, idx_d] = 0.0
        return t.astype(np.float32)

    def curves(self, source: str | None, participant: int | None, noise_scale: float):
        """(alpha, beta, noise level) from the training stimuli's targets, each (T,)."""
        from raybrain.data.meg_targets import (
            generalization_curve,
            noise_level_curve,
            richness_curve,
        )

        key = (source or "real", participant)
        if key not in self._curves:
            view = self.view(source)
            stack = view.stack if participant is None else view.stack[participant]
            rows = view.pos[self.train]
            onset = self.data.onset_ms / 1000.0
            alpha = richness_curve(stack, self.times, onset=onset, stimuli=rows)
            beta = generalization_curve(stack, self.times, onset=onset, stimuli=rows)
            self._curves[key] = (alpha, beta)
        alpha, beta = self._curves[key]
        return alpha, beta, noise_level_curve(beta, noise_scale=noise_scale,
                                              sigma=self.data.noise_sigma)


_PARAMS = {
    "rank": Param(32, int, brain=True, low=1, help="DoRA rank r (paper: 32 group, 6 individual)"),
    "dora_alpha": Param(16.0, float, brain=True, low=1e-6,
                        help="DoRA scaling numerator: the update is (dora_alpha / r) B A"),
    "dropout": Param(0.1, float, brain=True, low=0.0, high=0.99, help="DoRA dropout"),
    "placement": Param("attn_out", str, brain=True, choices=("attn_out", "mlp", "both"),
                       help="adapted layers: attention output projection, MLP linears, or both"),
    "n_vision": Param(-1, int, brain=True, low=-1,
                      help="last vision blocks adapted (-1: all, the paper)"),
    "n_text": Param(0, int, brain=True, low=0, help="last text blocks adapted (paper: 0)"),
    "train_magnitude": Param(False, bool, brain=True,
                             help="train the DoRA magnitudes too (the CLIP-HBA MEG code does not)"),
    "lr": Param(3e-3, float, brain=True, low=0.0,
                help="AdamW learning rate of the feature-reweighting matrix (paper: 3e-3)"),
    "adapter_lr": Param(3e-5, float, brain=True, low=0.0,
                        help="AdamW learning rate of the adapters in stage 2 (paper: 3e-5)"),
    "weight_decay": Param(0.01, float, brain=True, low=0.0,
                          help="AdamW weight decay (torch's default)"),
    "batch_size": Param(64, int, brain=True, low=3, help="stimuli per RDM batch (paper: 64)"),
    "epochs": Param(100, int, low=1, help="most epochs (stage 1 included)"),
    "stage1_epochs": Param(5, int, brain=True, low=0,
                           help="epochs training only the reweighting matrix"),
    "patience": Param(5, int, brain=True, low=1,
                      help="epochs after stage 1 without a better validation RSA area"),
    "w1": Param(1.0, float, brain=True, low=0.0, help="weight of the Pearson term"),
    "w2": Param(0.1, float, brain=True, low=0.0, help="weight of the MSE term"),
    "w3": Param(0.15, float, brain=True, low=0.0, help="weight of the time-generalisation term"),
    "half_width": Param(3, int, brain=True, low=0,
                        help="sliding-window half-width in samples (window 2h + 1)"),
    "noise_scale": Param(1.0, float, brain=True, low=0.0,
                         help="largest training-noise level (0: no noise)"),
    "participant": Param("", str, personal=True,
                         help="participant whose RDMs are fitted (empty: the group average)"),
}


@register("clip-hba-meg")
class CLIPHBAMEGTask(Task):
    """CLIP + feature reweighting + DoRA fitted to time-resolved RDMs (group or personal)."""

    params = _PARAMS
    data_model = MEGData
    primary_metric = "test_rsa_area"
    primary_mode = "max"
    metrics = ("test_rsa_area", "val_rsa_area", "align_rsa_peak", "align_tg_r", "loss",
               "pearson_loss", "mse_loss", "generalization_loss")
    align_metrics = {"align_rsa_peak": "max", "align_tg_r": "max"}
    brain_weight = None
    l2_param = None
    data_paths = (*BACKBONE_PATHS, "rdm_file", "stimuli_file", "labels_file", "path",
                  "cache_dir")
    artifact_every = 5
    smoke = {"data": {"model": "raybrain-tiny-vit", "n_images": 24, "n_dims": 8,
                      "n_participants": 2, "times_ms": [-100, 300, 50],
                      "val_fraction": 0.25, "test_fraction": 0.25,
                      "saliency_times_ms": [100, 200], "saliency_masks": 8},
             "params": {"rank": 2, "epochs": 2, "stage1_epochs": 1, "batch_size": 8,
                        "lr": 3e-2, "adapter_lr": 3e-3, "patience": 2, "half_width": 1,
                        "participant": "s1"}}

    # -- checks ------------------------------------------------------------------------
    def check_data(self, data: MEGData, params: dict[str, Any]) -> None:
        from raybrain.data.meg_targets import check_stimuli

        check_backbone(data)
        check_adapters(data.model, params, self.defaults())
        labels = _labels(data)
        if data.source == "synthetic":
            ids = _participant_ids(data, data.n_participants)
            times = data.axis()
        elif data.source == "rdm_file":
            from raybrain.data.rdm import array_header

            p = Path(data.rdm_file)
            if not p.is_file():
                raise SpecError(f"data.rdm_file '{p}' not found; expected an RDM stack "
                                f"(.npy, .npz, .mat, .h5)")
            shape, _ = array_header(p, data.rdm_key)
            if len(shape) not in (3, 4) or shape[-1] != shape[-2]:
                raise SpecError(f"data.rdm_file '{p}' holds shape {tuple(shape)}; expected (T, N, "
                                f"N) or (participants, T, N, N)")
            times = data.axis()
            if shape[-3] != len(times):
                lo, hi, step = data.times_ms
                raise SpecError(f"data.rdm_file '{p}' has {shape[-3]} time points but "
                                f"data.times_ms ({lo:g}..{hi:g} ms every {step:g} ms) gives "
                                f"{len(times)}; expected the same time axis")
            ids = _participant_ids(data, shape[0] if len(shape) == 4 else 1)
            n_img, names = count_images(data)
            stim = None
            if data.stimuli_file:
                from raybrain.data.images import read_order_file

                stim = [Path(s).name for s in read_order_file(data.stimuli_file)]
                if len(stim) != shape[-1]:
                    raise SpecError(f"data.stimuli_file names {len(stim)} stimuli but the RDMs "
                                    f"have {shape[-1]}; expected one name per RDM row")
            check_stimuli(n_img, np.empty((shape[-1], shape[-1]), np.uint8),
                          f"data.rdm_file '{p}'",
                          image_names=None if names is None else [Path(s).name for s in names],
                          stimulus_names=stim)
        else:
            rec = data.recording
            if not Path(rec.path).expanduser().is_file():
                raise SpecError(f"data.recording.path '{rec.path}' not found; expected an "
                                f"EEG/MEG recording")
            ids = _participant_ids(data, 1)
            times = None
        for part in params.get("participant", [""]):
            if part and part not in ids:
                raise SpecError(f"params.participant {part!r} is not one of the data's "
                                f"{len(ids)} participant ids (data.participants)")
        if times is not None:
            for ms in data.saliency_times_ms:
                if not (times[0] * 1000 - 1e-6 <= ms <= times[-1] * 1000 + 1e-6):
                    raise SpecError(f"data.saliency_times_ms: {ms:g} ms lies outside the time "
                                    f"axis {times[0] * 1000:g}..{times[-1] * 1000:g} ms")
        if not labels:  # pragma: no cover - _labels raises first
            raise SpecError("no label prompts")

    # -- data --------------------------------------------------------------------------
    def _recording(self, data: MEGData):
        from raybrain.data.eeg_rdm import prepare_epoch_rdms

        rec = data.recording
        return prepare_epoch_rdms(Path(rec.path).expanduser().resolve(), events=rec.events,
                                  labels=rec.labels, tmin=rec.tmin, tmax=rec.tmax,
                                  method=rec.method, prep=rec.prep.to_prep(),
                                  n_folds=rec.n_folds, cache_dir=data.cache_dir)

    def prepare(self, data: MEGData):
        """Done once, in the sweep's driver: paths made absolute, a recording's RDMs computed
        (and cached), an RDM file read and checked, and the scaling range found (so trials
        never scan a large stack for it)."""
        from raybrain.data.meg_targets import rdm_value_range

        d = absolute_paths(self, data)
        lines: list[str] = []
        if data.source == "synthetic":
            return d, lines, []
        if data.source == "recording":
            out = self._recording(data)
            rdms = out.rdms
            lines.append(f"brain data: {out.rdms.shape[0]} time points x {out.rdms.shape[1]} "
                         f"conditions ({data.recording.method} RDMs, "
                         f"{'computed and cached' if out.computed else 'from the cache'})")
        else:
            from raybrain.data.rdm import is_memory_mapped, load_rdm

            rdms = load_rdm(data.rdm_file, key=data.rdm_key, nan_policy=data.nan_policy)
            lines.append(f"brain data: RDMs {tuple(rdms.shape)} "
                         f"({'memory-mapped' if is_memory_mapped(rdms) else 'in memory'})")
        if data.scale_targets and data.scale_range is None:
            d["scale_range"] = list(rdm_value_range(rdms))
            lines.append(f"  targets scaled by their range {d['scale_range'][0]:.4g} .. "
                         f"{d['scale_range'][1]:.4g}")
        return d, lines, []

    def load_data(self, data: MEGData, data_seed: int) -> MEGTaskData:
        from raybrain.data.images import ImageSet
        from raybrain.data.meg_targets import check_stimuli, check_time_axis, rdm_value_range

        size = model_geometry(data.model)["image_size"]
        labels = _labels(data)
        fingerprint = ""
        if data.source == "synthetic":
            from raybrain.data.clip_synthetic import synthetic_clip_data

            lo, hi, step = data.times_ms or (-100, 600, 20)
            syn = synthetic_clip_data(data.n_images, size=size, n_dims=data.n_dims,
                                      times_ms=(lo, hi, step), n_participants=data.n_participants,
                                      n_triplets=0, informative=data.generator == "informative",
                                      seed=data_seed, distortion=data.distortion,
                                      rdm_noise=data.rdm_noise,
                                      latency_jitter_ms=data.latency_jitter_ms)
            rdms, times = syn.rdms, syn.times
            images = ImageSet(syn.images, [f"image_{k}" for k in range(len(syn.images))],
                              data.normalisation)
            fingerprint = f"synthetic-{data.model_dump_json()}-{data_seed}"
        elif data.source == "rdm_file":
            from raybrain.data.cache import file_fingerprint
            from raybrain.data.rdm import load_rdm

            rdms = load_rdm(data.rdm_file, key=data.rdm_key, nan_policy=data.nan_policy)
            if rdms.ndim == 3:
                rdms = rdms[None]
            times = data.axis()
            check_time_axis(rdms, times, f"data.rdm_file '{data.rdm_file}'")
            images = load_images(data, rdms.shape[-1], size)
            fingerprint = json.dumps(file_fingerprint(data.rdm_file), sort_keys=True)
        else:
            rec = self._recording(data)
            rdms, times = rec.rdms[None], np.asarray(rec.times, dtype=np.float64)
            if data.times_ms is not None:
                check_time_axis(rdms, data.axis(), f"recording '{data.recording.path}'")
            images = load_images(data, rdms.shape[-1], size)
            fingerprint = json.dumps([data.recording.model_dump(), rdms.shape], default=str)
        check_stimuli(len(images), rdms, "target RDMs")
        ids = _participant_ids(data, rdms.shape[0])
        if not data.scale_targets:
            lo_v, hi_v = 0.0, 1.0
        elif data.scale_range is not None:
            lo_v, hi_v = data.scale_range
        else:
            lo_v, hi_v = rdm_value_range(rdms)
        if not hi_v > lo_v:
            raise SpecError(f"target RDMs hold one value only ({lo_v}); nothing to fit")
        train, val, test = split_stimuli(rdms.shape[-1], data.val_fraction, data.test_fraction,
                                         np.random.default_rng([data_seed, 1]))
        return MEGTaskData(images=images, labels=labels, rdms=rdms, times=times,
                           participants=ids, train=train, val=val, test=test, lo=float(lo_v),
                           hi=float(hi_v), data_seed=data_seed, data=data,
                           fingerprint=fingerprint)

    def build(self, data: MEGTaskData, params: dict[str, Any], brain_source: str | None,
              seed: int, device: str = "cpu") -> MEGRun:
        p = {**self.defaults(), **params}
        self.check_run_params(p, brain_source)
        return MEGRun(data, p, brain_source, seed, device)


class MEGRun(CLIPRun):
    """One CLIP-HBA-MEG model (see :class:`CLIPHBAMEGTask`)."""

    def __init__(self, data: MEGTaskData, p: dict[str, Any], brain_source: str | None,
                 seed: int, device: str):
        from raybrain.align.temporal import MEGLoss

        self._init_stopping()
        self.val_metric = "val_rsa_area"
        self.patience = int(p["patience"])
        self.stop_after = int(p["stage1_epochs"])
        self.part = data.participant_index(p["participant"])
        self.view = data.view(brain_source)
        self.real_view = data.view("real")
        alpha, beta, noise = data.curves(brain_source, self.part, float(p["noise_scale"]))
        self._setup(data, p, brain_source, seed, device,
                    lambda: _make_model(data, p, alpha, beta, noise), brain_weight=None)
        self.loss = MEGLoss((float(p["w1"]), float(p["w2"]), float(p["w3"])))
        if brain_source is not None:
            self._with_rng(self._set_normalisers)

    def _set_normalisers(self) -> None:
        """P0, M0, G0: the loss terms of the model at initialisation on the validation stimuli."""
        import torch

        model = self._module()
        model.eval()
        bs = int(self.p["batch_size"])
        pairs = []
        with torch.no_grad():
            for part in chunks(self.data.val, bs):
                if len(part) < 3:
                    continue
                pred = model(self._x(part)).rdms
                target = torch.from_numpy(self.data.targets(self.view, part, self.part))
                pairs.append((pred, target.to(pred)))
        if not pairs:  # fewer than 3 validation stimuli per batch cannot happen (split >= 3)
            pairs.append((model(self._x(self.data.val)).rdms,
                          torch.from_numpy(self.data.targets(self.view, self.data.val, self.part))))
        p0, m0, g0 = self.loss.set_initial_from(pairs)
        # a term that is already 0 at initialisation cannot be normalised by; keep it raw
        self.loss.set_initial(*(v if v > 1e-12 else 1.0 for v in (p0, m0, g0)))

    def make_optimizers(self) -> dict[str, Any]:
        import torch

        model = self._module()
        groups = [{"params": model.reweighting_parameters(), "lr": float(self.p["lr"])},
                  {"params": list(model.adapter_parameters().values()),
                   "lr": float(self.p["adapter_lr"])}]
        return {"main": torch.optim.AdamW(groups, weight_decay=float(self.p["weight_decay"]))}

    def trainable_state(self) -> dict[str, Any]:
        return self._module().trainable_state_dict()

    def load_trainable_state(self, state: dict[str, Any]) -> None:
        self._module().load_trainable_state_dict(state)

    def _x(self, idx):
        import torch

        return torch.from_numpy(self.data.images.batch(np.asarray(idx))).to(self.device)

    def _train_steps(self, shard: tuple[int, int]) -> dict[str, float]:
        import torch

        model = self._module()
        stage2 = self.epoch >= int(self.p["stage1_epochs"])
        model.set_adapters_trainable(stage2, magnitude=bool(self.p["train_magnitude"]))
        d = self.data
        order = torch.randperm(len(d.train), generator=self.order_rng)
        self.model.train()
        sums = dict.fromkeys(("loss", "pearson_loss", "mse_loss", "generalization_loss"), 0.0)
        n = 0
        for b in batches(order, int(self.p["batch_size"]), shard, min_size=3):
            idx = d.train[b.numpy()]
            target = torch.from_numpy(d.targets(self.view, idx, self.part)).to(self.device)
            terms = self.loss(self.model(self._x(idx)).rdms, target)
            self.optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            self.optimizer.step()
            model.project_reweighting_()
            for k, v in terms.items().items():
                sums[k] += v
            n += 1
        return {k: v / max(n, 1) for k, v in sums.items()}

    def _embed(self, idx):
        """Embeddings (T, n, D) of stimuli ``idx`` in eval mode (no training noise)."""
        import torch

        model = self._module()
        model.eval()
        with torch.no_grad():
            return torch.cat([model(self._x(part)).embeddings for part in chunks(idx, 128)],
                             dim=1)

    def _evaluate(self) -> dict[str, float]:
        import torch

        from raybrain.align.temporal import pearson_rdm, temporal_rsa, time_generalization

        d = self.data
        emb = self._embed(np.concatenate([d.val, d.test]))
        if not bool(torch.isfinite(emb).all()):
            nan = float("nan")
            return {"test_rsa_area": nan, "val_rsa_area": nan, "align_rsa_peak": nan,
                    "align_tg_r": nan}
        nv = len(d.val)
        pred_val = pearson_rdm(emb[:, :nv].double())
        pred_test = pearson_rdm(emb[:, nv:].double())
        real_test = d.targets(self.real_view, d.test, self.part)
        curve = np.nan_to_num(temporal_rsa(pred_test, real_test), nan=0.0)
        val_curve = np.nan_to_num(temporal_rsa(pred_val, d.targets(self.view, d.val, self.part)),
                                  nan=0.0)
        g_pred = time_generalization(pred_test).numpy()
        g_real = time_generalization(torch.from_numpy(real_test).double()).numpy()
        tg_r = (float(np.corrcoef(g_pred, g_real)[0, 1])
                if g_pred.std() > 0 and g_real.std() > 0 else 0.0)
        out = {"test_rsa_area": float(curve.mean()), "val_rsa_area": float(val_curve.mean()),
               "align_rsa_peak": float(curve.max()), "align_tg_r": tg_r}
        for t, r in zip(d.times, curve, strict=True):
            out[f"rsa_t{1000 * t:g}"] = float(r)
        if self.part is not None and len(d.participants) > 1:
            out["test_own_minus_other_r"] = self._own_minus_other(pred_test.numpy())
        self._last_test_rdms = pred_test.float().numpy()
        return out

    def _own_minus_other(self, pred: np.ndarray) -> float:
        """r(model, own participant) - mean r(model, other participants), held-out stimuli."""
        d = self.data
        iu = np.triu_indices(pred.shape[-1], k=1)
        vec = pred[:, iu[0], iu[1]].ravel()
        rs = []
        for q in range(len(d.participants)):
            t = d.targets(self.real_view, d.test, q)[:, iu[0], iu[1]].ravel()
            rs.append(float(np.corrcoef(vec, t)[0, 1]) if vec.std() > 0 and t.std() > 0 else 0.0)
        own = rs[self.part]
        others = [r for q, r in enumerate(rs) if q != self.part]
        return own - float(np.mean(others))

    def _time_index(self) -> np.ndarray:
        t = self.data.times * 1000
        return np.array([int(np.argmin(np.abs(t - ms))) for ms in self.data.data.saliency_times_ms])

    def artifacts(self, brain_data: bool = False) -> dict[str, Any]:
        """Predicted test RDMs and RISE maps at the chosen times (model-derived); at the
        last epoch the whole predicted held-out stack ``heldout_rdms`` and, only with
        ``brain_data`` (the spec's ``tracking.log_brain_data``), the run's target stack of
        the same stimuli ``target_rdms`` (for the individual-differences panel)."""
        import torch

        from raybrain.models.saliency import meg_saliency, rise_masks

        rdms = getattr(self, "_last_test_rdms", None)
        if rdms is None or not np.isfinite(rdms).all():
            return {}
        d = self.data
        ti = self._time_index()
        out: dict[str, Any] = {f"model_rdm_{k}": rdms[t] for k, t in enumerate(ti)}
        first = d.test[:1]
        image = torch.from_numpy(d.images.batch(first))[0].to(self.device)
        maps = self._with_rng(lambda: meg_saliency(
            self._module(), image, ti, n_masks=d.data.saliency_masks,
            grid=d.data.saliency_grid, seed=0, batch_size=50))
        # RISE assumes every pixel is kept with probability p_keep; a finite set of masks
        # covers pixels unevenly, and with scores of similar size that unevenness is most
        # of the raw map. Dividing by the masks' own coverage gives the mean score given
        # that the pixel is kept (the same masks: same seed, grid and count).
        masks = rise_masks(d.data.saliency_masks, tuple(image.shape[1:]),
                           grid=d.data.saliency_grid, seed=0)
        coverage = masks.mean(axis=0) / 0.5
        for k in range(len(ti)):
            out[f"saliency_{k}"] = (maps[k] / np.maximum(coverage, 1e-6)).astype(np.float32)
        raw = d.images.pixels[first[0]]
        out["saliency_image"] = (raw.astype(np.float32) / 255.0 if raw.dtype == np.uint8
                                 else np.moveaxis(raw, 0, -1)).astype(np.float32)
        if self.stopped or self.epoch >= self.epochs:
            out["heldout_rdms"] = rdms
            if brain_data:
                out["target_rdms"] = np.asarray(
                    d.targets(d.view("real"), d.test, self.part), dtype=np.float32)
        return out


def _make_model(data: MEGTaskData, p: dict[str, Any], alpha, beta, noise):
    from raybrain.models.clip import tokenize_labels
    from raybrain.models.clip_meg import CLIPHBAMEG
    from raybrain.models.dora import apply_dora
    from raybrain.tasks._clip_common import backbone

    cfg = data.data
    tokens = tokenize_labels(cfg.model, data.labels)
    clip = backbone(cfg)
    n_vis = len(clip.visual.transformer.resblocks) if int(p["n_vision"]) < 0 else int(p["n_vision"])
    apply_dora(clip, placement=p["placement"], n_vision=n_vis, n_text=int(p["n_text"]),
               rank=int(p["rank"]), alpha=float(p["dora_alpha"]), dropout=float(p["dropout"]))
    model = CLIPHBAMEG(clip, tokens, len(data.times), alpha=alpha, beta=beta,
                       noise_level=noise, half_width=int(p["half_width"]))
    model.set_adapters_trainable(False)
    return model


__all__ = ["CLIPHBAMEGTask", "MEGData", "MEGRun", "MEGTaskData", "RecordingSettings",
           "TargetView"]
