"""Brain-data preparation: what a sweep pays once, and what every trial pays after that.

For the quick driving spec's data (a synthetic 64-channel BDF drive written through MNE,
read, filtered, paired with its frames) this measures, in one invocation:

- cold: the first preparation (read + clean + pair + write the cache entry);
- warm: a trial's load of the same entry (fingerprint the inputs + read the cache);
- fingerprint of a 16 GiB (sparse) file, the size of the THINGS-MEG RDM stack, which is
  what the cache key costs for a large input (sampled, never hashed whole).

It prints the ratios cold / warm and, for a sweep of N trials, the preparation time of
"prepare in every trial" over "prepare once" = (N * cold) / (cold + (N - 1) * warm).

    .venv/bin/python bench/prepare_once.py [--trials 200]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raybrain.data.cache import file_fingerprint  # noqa: E402
from raybrain.data.driving import prepare_driving_pairs, synthesize_driving_session  # noqa: E402
from raybrain.data.eeg import EEGPrep  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        session = synthesize_driving_session(Path(tmp) / "s", n_frames=1024, seed=0,
                                             sfreq=256.0, image_size=(48, 96))
        synth = time.perf_counter() - t0
        prep = EEGPrep(picks="eeg", reference="average", l_freq=0.1, h_freq=40.0)
        t0 = time.perf_counter()
        first = prepare_driving_pairs([session], prep=prep, image_size=(48, 96))
        cold = time.perf_counter() - t0
        assert first.computed
        warm_times = []
        for _ in range(5):
            t0 = time.perf_counter()
            again = prepare_driving_pairs([session], prep=prep, image_size=(48, 96))
            warm_times.append(time.perf_counter() - t0)
            assert not again.computed
        warm = min(warm_times)
        big = Path(tmp) / "big.npy"
        with open(big, "wb") as fh:
            fh.truncate(16 * 2**30)
        t0 = time.perf_counter()
        file_fingerprint(big)
        fp = time.perf_counter() - t0
    n = args.trials
    every = n * cold
    once = cold + (n - 1) * warm
    out = {"synthesize_s": round(synth, 2), "cold_prepare_s": round(cold, 3),
           "warm_load_s": round(warm, 4), "cold_over_warm": round(cold / warm, 1),
           "trials": n, "prepare_every_trial_s": round(every, 1),
           "prepare_once_s": round(once, 1), "every_over_once": round(every / once, 1),
           "fingerprint_16GiB_s": round(fp, 4)}
    print(json.dumps(out, indent=1))
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "prepare_once.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
