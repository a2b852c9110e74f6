"""B2M driving task: a VAE reconstructs driving scenes, its latent pulled toward EEG.

Protocol (B2M paper, section 5 and appendix): the VAE (:class:`~raybrain.models.vae.
DrivingVAE`) is trained on an *artificial* set of driving scenes (here procedural scenes,
:mod:`raybrain.data.driving_scenes`; the paper used CARLA images) in batches of 32. The
*human* set is different but similar: frames of drives that people watched while their
EEG was recorded, each frame paired with the EEG vector recorded with it
(:mod:`raybrain.data.driving`). Since the two sets do not match one to one, the transfer
is *brain latent transfer*: at every optimisation step a paired batch (256) of human
frames goes through the encoder and the MSE between the latent mean ``mu`` and the frame's
(standardised) EEG vector is the transfer term:

    L = (1 - alpha) * (recon_mse + kl_weight * kl)(train batch) + alpha * MSE(mu(frames), eeg)

Adam (lr 1e-4); after every epoch the reconstruction MSE per pixel on held-out test
scenes (``test_loss``, lower is better) and validation scenes (``val_loss``, used to pick
the best L2 arm). A run diverges when ``test_loss`` goes above 1 and never comes back
below it (the paper's rule; pixel values lie in [0, 1], so a per-pixel MSE above 1 is
worse than any image).

Controls: ``shuffled`` permutes the EEG vectors across frames; ``noise`` replaces them by
phase-randomised surrogates of the EEG-vector time series (frames in their recorded
order), keeping each channel's spectrum and the channels' covariance. The alignment
diagnostics (RSA, linear CKA between ``mu`` and the real EEG) use held-out pairs (the
last ``heldout_fraction`` of every session, never trained on), for every arm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from raybrain.align import linear_cka, mix_losses, rsa, subsample_items
from raybrain.align.latent import latent_mse
from raybrain.data.controls import phase_randomise
from raybrain.errors import SpecError
from raybrain.tasks import register
from raybrain.tasks.base import Param, Task, TorchRun


class SessionFiles(BaseModel):
    """One recorded drive: its EEG file, its frames (.npy) and who drove (pseudonymised)."""

    model_config = ConfigDict(extra="forbid")
    eeg: str
    frames: str
    participant: str | None = None


class PrepSettings(BaseModel):
    """EEG cleaning (see :class:`raybrain.data.eeg.EEGPrep`)."""

    model_config = ConfigDict(extra="forbid")
    picks: str | list[str] = "eeg"
    bad_channels: list[str] = []
    interpolate_bads: bool = False
    reference: str | list[str] | None = "average"
    l_freq: float | None = Field(0.1, gt=0)
    h_freq: float | None = Field(40.0, gt=0)
    notch: list[float] = []
    resample: float | None = Field(None, gt=0)

    def to_prep(self):
        from raybrain.data.eeg import EEGPrep

        tup = lambda v: tuple(v) if isinstance(v, list) else v  # noqa: E731
        return EEGPrep(picks=tup(self.picks), bad_channels=tuple(self.bad_channels),
                       interpolate_bads=self.interpolate_bads, reference=tup(self.reference),
                       l_freq=self.l_freq, h_freq=self.h_freq, notch=tuple(self.notch),
                       resample=self.resample)


class DrivingData(BaseModel):
    """The ``data:`` section of a ``b2m-driving`` spec.

    ``source: synthetic`` renders drives and writes their EEG through MNE into
    ``synthetic_dir`` (then reads it back like any recording); ``source: files`` reads the
    user's ``sessions``. The artificial training, validation and test scenes are always
    procedural and drawn from the data seed.
    """

    model_config = ConfigDict(extra="forbid")

    source: Literal["synthetic", "files"] = "synthetic"
    sessions: list[SessionFiles] = []
    synthetic_dir: str = "raybrain_data/driving"
    synthetic_sessions: int = Field(1, ge=1)
    synthetic_frames: int = Field(2048, ge=16)
    synthetic_format: Literal[".bdf", ".edf", ".vhdr", ".set", ".fif"] = ".bdf"
    synthetic_sfreq: float = Field(256.0, gt=0)
    generator: Literal["informative", "null"] = "informative"
    snr: float = Field(1.0, gt=0)
    frame_event: str | int = "frame"
    frame_rate: float = Field(8.0, gt=0)
    prep: PrepSettings = PrepSettings()
    #: EEG channels must equal the latent size; ``pca`` projects them onto that many
    #: principal components (fitted on the training pairs) when they differ
    projection: Literal["none", "pca"] = "none"
    #: z-score each EEG dimension with the training pairs' mean and sd
    standardise: bool = True
    cache_dir: str | None = None
    image_height: int = Field(80, ge=16)
    image_width: int = Field(160, ge=16)
    n_train_scenes: int = Field(12000, ge=1)
    n_val_scenes: int = Field(500, ge=1)
    n_test_scenes: int = Field(2000, ge=1)
    heldout_fraction: float = Field(0.2, gt=0, lt=1)
    diagnostic_pairs: int = Field(400, ge=3)

    @model_validator(mode="after")
    def _check(self):
        if self.source == "files" and not self.sessions:
            raise ValueError("data.source 'files' needs data.sessions: a list of "
                             "{eeg: FILE, frames: FILE.npy, participant: ID}")
        if self.source == "synthetic" and self.sessions:
            raise ValueError("data.sessions is read only with data.source 'files'")
        if self.image_height % 16 or self.image_width % 16:
            raise ValueError(f"data.image_height and image_width must be multiples of 16 (four "
                             f"stride-2 convolutions), got {self.image_height} x "
                             f"{self.image_width}")
        return self

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.image_height, self.image_width)


def _abs(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _sessions(data: DrivingData):
    """The sessions to read (writing the synthetic ones first when needed)."""
    from raybrain.data.driving import DrivingSession, synthesize_driving_session

    if data.source == "files":
        return [DrivingSession(_abs(s.eeg), _abs(s.frames), s.participant) for s in data.sessions]
    out = []
    for i in range(data.synthetic_sessions):
        folder = (Path(data.synthetic_dir).expanduser().resolve()
                  / f"{data.generator}-snr{data.snr:g}-{data.synthetic_frames}f-"
                    f"{data.synthetic_sfreq:g}hz{data.synthetic_format}-"
                    f"{data.image_height}x{data.image_width}" / f"session{i + 1}")
        out.append(synthesize_driving_session(
            folder, n_frames=data.synthetic_frames, seed=1000 + i,
            sfreq=data.synthetic_sfreq, fmt=data.synthetic_format, generator=data.generator,
            snr=data.snr, frame_rate=data.frame_rate, image_size=data.image_size))
    return out


@dataclass
class DrivingTaskData:
    """What every run of a sweep shares.

    ``train``/``val``/``test``: procedural scenes, float32 (n, 3, H, W) in [0, 1].
    ``pair_frames`` uint8 (n_pairs, 3, H, W) and ``pair_eeg`` float32 (n_pairs, latent):
    the training pairs (EEG standardised/projected). ``held_frames``/``held_eeg``: the
    held-out pairs for the diagnostics.
    """

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    pair_frames: torch.Tensor
    pair_eeg: np.ndarray
    held_frames: torch.Tensor
    held_eeg: np.ndarray
    pair_session: np.ndarray
    data_seed: int
    diag_index: np.ndarray
    provenance: dict[str, Any]
    _views: dict[str, torch.Tensor] = field(default_factory=dict)

    def brain_view(self, source: str) -> torch.Tensor:
        """EEG targets of the training pairs, shape (n_pairs, latent), for ``source``."""
        if source not in self._views:
            if source == "real":
                v = self.pair_eeg
            elif source == "shuffled":
                perm = np.random.default_rng([self.data_seed, 11]).permutation(len(self.pair_eeg))
                v = self.pair_eeg[perm]
            elif source == "noise":
                # per session: the EEG-vector series in recorded order, phase-randomised
                v = np.empty_like(self.pair_eeg)
                rng = np.random.default_rng([self.data_seed, 12])
                for s in np.unique(self.pair_session):
                    idx = np.flatnonzero(self.pair_session == s)
                    v[idx] = phase_randomise(self.pair_eeg[idx][None], rng)[0]
            else:
                raise ValueError(f"brain source must be one of real/shuffled/noise, got {source!r}")
            self._views[source] = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
        return self._views[source]


_PARAMS = {
    "base_channels": Param(32, int, low=1, help="first encoder conv width; the encoder is "
                           "[3, c, 2c, 4c, 8c] (the paper: c = 32)"),
    "fc_units": Param(1024, int, low=1, help="fully connected layer width"),
    "latent_dim": Param(64, int, low=1, help="VAE latent size (= EEG channels, or PCA dims)"),
    "dropout": Param(0.1, float, low=0.0, high=0.99, help="dropout in every conv and FC layer"),
    "lr": Param(1e-4, float, low=0.0, help="Adam learning rate"),
    "epochs": Param(100, int, low=1, help="training epochs"),
    "batch_size": Param(32, int, low=1, help="training scenes per optimisation step"),
    "pair_batch_size": Param(256, int, low=1, help="frame/EEG pairs per optimisation step"),
    "steps_per_epoch": Param(0, int, low=0, help="optimisation steps per epoch (0: one pass "
                             "over the training scenes)"),
    "kl_weight": Param(1.0, float, low=0.0, help="weight of the KL term of the VAE loss"),
    "weight_decay": Param(0.0, float, low=0.0, help="L2 penalty (Adam weight_decay)"),
    "alpha": Param(0.0, float, brain=True, low=0.0, high=1.0,
                   help="transfer weight: (1 - alpha) L_vae + alpha L_transfer"),
    "transfer": Param("latent", str, brain=True, choices=("latent",),
                      help="transfer objective (latent MSE: the sets do not match one to one)"),
}


@register("b2m-driving")
class B2MDriving(Task):
    """VAE on driving scenes with brain latent transfer from EEG."""

    params = _PARAMS
    data_model = DrivingData
    primary_metric = "test_loss"
    primary_mode = "min"
    #: ``transfer_loss`` is the latent MSE to the *real* EEG on held-out pairs for every arm;
    #: ``train_transfer`` (brain arms only) the transfer term on the training pairs
    metrics = ("test_loss", "val_loss", "recon_loss", "kl", "task_loss", "transfer_loss",
               "train_transfer", "loss", "align_rsa", "align_cka")
    divergence_metric = "test_loss"
    divergence_threshold = 1.0
    align_metrics = {"align_cka": "max", "align_rsa": "max"}
    data_paths = ("eeg", "frames", "cache_dir", "synthetic_dir")
    smoke = {"data": {"source": "synthetic", "synthetic_dir": "raybrain_data/smoke-driving",
                      "synthetic_frames": 96, "synthetic_sfreq": 128.0, "image_height": 32,
                      "image_width": 64, "n_train_scenes": 32, "n_val_scenes": 8,
                      "n_test_scenes": 8, "diagnostic_pairs": 12,
                      "prep": {"l_freq": 0.1, "h_freq": 30.0}},
             "params": {"base_channels": 2, "fc_units": 16, "latent_dim": 64, "epochs": 2,
                        "batch_size": 16, "pair_batch_size": 16, "lr": 3e-3, "dropout": 0.0,
                        "alpha": 0.2}}

    def check_data(self, data: DrivingData, params: dict[str, Any]) -> None:
        from raybrain.data.driving import frames_header
        from raybrain.data.eeg import EEG_SUFFIXES, _suffix

        latents = params.get("latent_dim", [self.params["latent_dim"].default])
        for s in data.sessions:
            for kind, path in (("eeg", s.eeg), ("frames", s.frames)):
                if not Path(path).expanduser().is_file():
                    raise SpecError(f"data.sessions {kind} file '{path}' not found")
            if _suffix(Path(s.eeg)) not in EEG_SUFFIXES:
                raise SpecError(f"data.sessions eeg file '{s.eeg}' has an unsupported suffix; "
                                f"expected one of {sorted(EEG_SUFFIXES)}")
            frames_header(Path(s.frames).expanduser())  # shape and dtype from the header only
        if data.source == "synthetic" and data.projection == "none":
            bad = [d for d in latents if int(d) != 64]
            if bad:
                raise SpecError(f"the synthetic EEG has 64 channels but params.latent_dim is "
                                f"{bad[0]}; set data.projection: pca or latent_dim: 64")

    # -- preparation (once per sweep, in the driver) ---------------------------------------
    def _pairs(self, data: DrivingData):
        from raybrain.data.driving import prepare_driving_pairs

        sessions = _sessions(data)
        cache = _abs(data.cache_dir) if data.cache_dir else None
        return prepare_driving_pairs(sessions, frame_event=data.frame_event,
                                     frame_rate=data.frame_rate, prep=data.prep.to_prep(),
                                     image_size=data.image_size, cache_dir=cache)

    def prepare(self, data: DrivingData) -> tuple[dict[str, Any], list[str], list[str]]:
        """Write synthetic sessions if needed, read and cache the pairs; absolute paths.

        Returns the data section trials receive, the lines describing what was prepared,
        and the cache entry files (for ``tracking.log_brain_data``).
        """
        pairs = self._pairs(data)
        d = data.model_dump()
        d["synthetic_dir"] = _abs(data.synthetic_dir)
        if data.cache_dir:
            d["cache_dir"] = _abs(data.cache_dir)
        for s in d["sessions"]:
            s["eeg"], s["frames"] = _abs(s["eeg"]), _abs(s["frames"])
        lines = [f"brain data: {len(pairs.eeg)} frame/EEG pairs x {pairs.eeg.shape[1]} channels "
                 f"from {len(set(pairs.session.tolist()))} session(s), frames "
                 f"{tuple(pairs.frames.shape[1:])} "
                 f"({'read and cached' if pairs.computed else 'from the cache'}: "
                 f"{pairs.cache_path.name})"]
        for i, s in enumerate(pairs.provenance.get("sessions", [])):
            rec, cl = s["recording"], s["cleaned"]
            lines.append(f"  session {i + 1}: {rec['n_channels']} channels at {rec['sfreq']:g} Hz, "
                         f"{rec['duration_s']:g} s -> {cl['n_channels']} channels at "
                         f"{cl['sfreq']:g} Hz, {s['n_frames']} frames at {s['frame_rate_hz']:g} Hz")
        return d, lines, [str(pairs.cache_path), str(pairs.cache_path.with_suffix(".json"))]

    def load_data(self, data: DrivingData, data_seed: int) -> DrivingTaskData:
        from raybrain.data.driving_scenes import render_scenes

        pairs = self._pairs(data)
        eeg = pairs.eeg.astype(np.float64)
        # held-out pairs: the last fraction of every session (contiguous, no temporal leak)
        held = np.zeros(len(eeg), dtype=bool)
        for s in np.unique(pairs.session):
            idx = np.flatnonzero(pairs.session == s)
            n_held = max(1, int(round(data.heldout_fraction * len(idx))))
            held[idx[-n_held:]] = True
        train_eeg = eeg[~held]
        if data.projection == "pca":
            mean = train_eeg.mean(0)
            _, _, vt = np.linalg.svd(train_eeg - mean, full_matrices=False)
            basis = vt  # (n_components, channels)
            eeg = (eeg - mean) @ basis.T
            train_eeg = eeg[~held]
        if data.standardise:
            mu, sd = train_eeg.mean(0), train_eeg.std(0)
            eeg = (eeg - mu) / np.where(sd > 0, sd, 1.0)
        eeg = eeg.astype(np.float32)
        h, w = data.image_size
        rng = lambda k: np.random.default_rng([data_seed, k])  # noqa: E731
        scenes = {name: torch.from_numpy(render_scenes(n, rng(k), height=h, width=w).images)
                  for name, n, k in (("train", data.n_train_scenes, 1),
                                     ("val", data.n_val_scenes, 2),
                                     ("test", data.n_test_scenes, 3))}
        frames = torch.from_numpy(pairs.frames)
        diag = subsample_items(int(held.sum()), data.diagnostic_pairs, rng(6))
        return DrivingTaskData(
            train=scenes["train"], val=scenes["val"], test=scenes["test"],
            pair_frames=frames[torch.from_numpy(~held)], pair_eeg=eeg[~held],
            held_frames=frames[torch.from_numpy(held)], held_eeg=eeg[held],
            pair_session=pairs.session[~held], data_seed=data_seed, diag_index=diag,
            provenance=pairs.provenance)

    def build(self, data: DrivingTaskData, params: dict[str, Any], brain_source: str | None,
              seed: int, device: str = "cpu") -> "DrivingRun":
        p = {**self.defaults(), **params}
        if data.pair_eeg.shape[1] != p["latent_dim"]:
            raise SpecError(f"EEG vectors have {data.pair_eeg.shape[1]} dimensions but the VAE "
                            f"latent has {p['latent_dim']}; they must be equal (set "
                            f"params.latent_dim: {data.pair_eeg.shape[1]}, or data.projection: "
                            f"pca to project the EEG onto latent_dim components)")
        self.check_run_params(p, brain_source)
        return DrivingRun(data, p, brain_source, seed, device)


def _to_float(frames: torch.Tensor) -> torch.Tensor:
    return frames.float().div_(255.0)


class DrivingRun(TorchRun):
    """One VAE trained on driving scenes (see :class:`B2MDriving`)."""

    def __init__(self, data: DrivingTaskData, p: dict[str, Any], brain_source: str | None,
                 seed: int, device: str):
        from raybrain.models.vae import DrivingVAE

        c = int(p["base_channels"])
        self._setup(data, p, brain_source, seed, device, lambda: DrivingVAE(
            channels=(3, c, 2 * c, 4 * c, 8 * c), fc_units=int(p["fc_units"]),
            latent_dim=int(p["latent_dim"]), dropout=float(p["dropout"]),
            image_size=tuple(data.train.shape[2:])))
        self.brain_target = data.brain_view(brain_source) if brain_source else None

    def transfer_term(self, frames: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """MSE between the latent mean of ``frames`` (B, 3, H, W) and ``target`` (B, latent)."""
        mu, _ = self._module().encode(frames)
        return latent_mse(mu, target)

    def _train_epoch(self, shard: tuple[int, int]) -> dict[str, float]:
        from raybrain.models.vae import vae_loss

        rank, world = shard
        d = self.data
        order = torch.randperm(len(d.train), generator=self.order_rng)
        if world > 1:
            pad = (-len(order)) % world
            order = torch.cat([order, order[:pad]])[rank::world]
        bs, pbs = int(self.p["batch_size"]), int(self.p["pair_batch_size"])
        starts = list(range(0, len(order), bs))
        if int(self.p["steps_per_epoch"]) > 0:
            starts = [(k * bs) % max(len(order), 1) for k in range(int(self.p["steps_per_epoch"]))]
        n_pairs = len(d.pair_eeg)
        pair_order = torch.randperm(n_pairs, generator=self.order_rng)
        self.model.train()
        sums = dict.fromkeys(("recon_loss", "kl", "task_loss", "train_transfer", "loss"), 0.0)
        for step, start in enumerate(starts):
            idx = order[start:start + bs]
            if len(idx) == 0:
                idx = order[:bs]
            x = d.train[idx].to(self.device)
            recon, mu, logvar = self.model(x)
            task, rec, kl = vae_loss(recon, x, mu, logvar, float(self.p["kl_weight"]))
            if self.alpha > 0:
                k = (step * pbs) % n_pairs
                pidx = pair_order[torch.arange(k, k + pbs) % n_pairs]
                frames = _to_float(d.pair_frames[pidx]).to(self.device)
                transfer = self.transfer_term(frames, self.brain_target[pidx].to(self.device))
                loss = mix_losses(task, transfer, self.alpha)
                transfer_value = float(transfer.detach())
            else:
                loss, transfer_value = task, 0.0
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            for key, v in (("recon_loss", rec), ("kl", kl), ("task_loss", task),
                           ("loss", loss)):
                sums[key] += float(v.detach())
            sums["train_transfer"] += transfer_value
        self.epoch += 1
        n = max(len(starts), 1)
        out = {k: v / n for k, v in sums.items()}
        if self.alpha == 0:
            del out["train_transfer"]
        # comparable across arms: the latent MSE to the real EEG on held-out pairs
        out["transfer_loss"] = self._heldout_transfer()
        return out

    @torch.no_grad()
    def _heldout_transfer(self) -> float:
        """Latent MSE to the real EEG on held-out pairs (what the brain term would read)."""
        self.model.eval()
        frames = _to_float(self.data.held_frames[:256]).to(self.device)
        mu, _ = self._module().encode(frames)
        target = torch.from_numpy(self.data.held_eeg[:256]).to(self.device)
        return float(latent_mse(mu, target))

    @torch.no_grad()
    def _recon(self, images: torch.Tensor, chunk: int = 128) -> float:
        self.model.eval()
        vae = self._module()
        sq, n = 0.0, 0
        for s in range(0, len(images), chunk):
            x = images[s:s + chunk].to(self.device)
            mu, _ = vae.encode(x)
            r = vae.decode(mu)
            sq += float(((r - x) ** 2).sum())
            n += x.numel()
        return sq / n

    def evaluate(self) -> dict[str, float]:
        return {"test_loss": self._recon(self.data.test), "val_loss": self._recon(self.data.val),
                **self._alignment()}

    @torch.no_grad()
    def _alignment(self) -> dict[str, float]:
        """RSA and linear CKA of ``mu`` with the real EEG on held-out pairs (every arm)."""
        self.model.eval()
        idx = torch.from_numpy(self.data.diag_index)
        frames = _to_float(self.data.held_frames[idx]).to(self.device)
        mu = self._module().encode(frames)[0].cpu().numpy()
        brain = self.data.held_eeg[self.data.diag_index]
        if not np.isfinite(mu).all():
            return {"align_rsa": float("nan"), "align_cka": float("nan")}
        return {"align_rsa": rsa(mu, brain), "align_cka": linear_cka(mu, brain)}


__all__ = ["B2MDriving", "DrivingData", "DrivingRun", "DrivingTaskData"]
