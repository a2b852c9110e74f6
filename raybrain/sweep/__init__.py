"""Sweeps: the spec, arms and replicates, Tune/Train glue, MLflow tracking.

Ray, Optuna and MLflow are imported only where a sweep actually runs.
"""

from raybrain.sweep.spec import Spec, SpecWarning, load_spec, parse_spec, validate_spec


def run_sweep(*args, **kwargs):
    """See :func:`raybrain.sweep.driver.run_sweep`."""
    from raybrain.sweep.driver import run_sweep as _run

    return _run(*args, **kwargs)


__all__ = ["Spec", "SpecWarning", "load_spec", "parse_spec", "run_sweep", "validate_spec"]
