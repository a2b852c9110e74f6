"""Brain and stimulus data: task simulators, synthetic brains, controls and loaders.

Numpy-level code only (no ray, mlflow or optuna). Real recordings (imported from their
modules, which load MNE, CEBRA, h5py or nibabel only when used):

- :mod:`raybrain.data.eeg` - EEG/MEG through MNE (FIF, EDF, BDF, BrainVision, EEGLAB);
- :mod:`raybrain.data.eeg_rdm` - time-resolved RDMs from a recording's epochs;
- :mod:`raybrain.data.spikes` - spike files, binning, B2M alignment, CEBRA embeddings;
- :mod:`raybrain.data.memory_spikes` - spike sessions to memory-task embeddings;
- :mod:`raybrain.data.rdm` - RDM files (memory-mapped when large, condensed or in MATLAB
  struct arrays) and validation;
- :mod:`raybrain.data.matfile` - MATLAB ``.mat`` structs and cells by field path (v5, v7.3);
- :mod:`raybrain.data.layout` - which layout an ``.npz`` holds, from its keys;
- :mod:`raybrain.data.rdm_compute` - correlation and decoding RDMs from patterns and epochs;
- :mod:`raybrain.data.embeddings` - SPoSE embeddings and fMRI voxel arrays;
- :mod:`raybrain.data.cache` - the prepared-data cache (atomic, built once);
- :mod:`raybrain.data.driving`, :mod:`raybrain.data.driving_scenes` - the B2M driving
  protocol's frame/EEG pairs, synthetic drives and procedural scenes;
- :mod:`raybrain.data.concepts` - concept-level brain and model data for the
  brain-in-the-loop method: synthetic hierarchy (informative / null), user files, THINGS,
  the shuffled and spectrum-surrogate controls.

For CLIP-HBA:

- :mod:`raybrain.data.images` - stimulus images from a folder + order file or an array
  file, resized and normalised (THINGS or CLIP statistics);
- :mod:`raybrain.data.things` - the THINGS behavioural targets (SPoSE, RDM48, triplets);
- :mod:`raybrain.data.behaviour` - SPoSE target rescaling, odd-one-out accuracy, RDM
  Spearman;
- :mod:`raybrain.data.meg_targets` - time-resolved target checks, batches and the
  alpha/beta/noise curves;
- :mod:`raybrain.data.clip_synthetic` - procedural images with teacher targets
  (informative or null, per participant).

For brain-guided language models:

- :mod:`raybrain.data.reasoning` - deductive-reasoning problems (generator with a known
  answer, JSONL problem sets), brain responses per problem (synthetic informative/null,
  user ``.npy``/``.npz``/HDF5 with problem ids) and the ``shuffled`` control.

For the B2M memory task:

- :mod:`raybrain.data.memory_task` - episode simulator, task rule and input encoding;
- :mod:`raybrain.data.synthetic_brain` - synthetic brain embeddings with a known answer;
- :mod:`raybrain.data.controls` - transforms for the ``shuffled`` and ``noise`` arms;
- :mod:`raybrain.data.npz` - the npz layout for user-supplied embeddings.
"""

from raybrain.data.controls import phase_randomise, shuffle_steps
from raybrain.data.memory_task import (
    DISTRACTOR,
    N_INPUTS,
    NO_STIMULUS,
    Episodes,
    MemoryTaskConfig,
    encode_inputs,
    episodes_from_sequences,
    simulate_episodes,
    step_bins_to_time,
    time_to_step_bins,
)
from raybrain.data.npz import NPZ_KEYS, load_memory_npz, save_memory_npz
from raybrain.data.synthetic_brain import synthetic_brain

__all__ = [
    "DISTRACTOR",
    "N_INPUTS",
    "NO_STIMULUS",
    "NPZ_KEYS",
    "Episodes",
    "MemoryTaskConfig",
    "encode_inputs",
    "episodes_from_sequences",
    "load_memory_npz",
    "phase_randomise",
    "save_memory_npz",
    "shuffle_steps",
    "simulate_episodes",
    "step_bins_to_time",
    "synthetic_brain",
    "time_to_step_bins",
]
