"""Sweeps: the spec, arms and replicates, Tune/Train glue, MLflow tracking.

Ray, Optuna and MLflow are imported only where a sweep actually runs.
"""

from raybrain.sweep.spec import Spec, SpecWarning, load_spec, parse_spec, validate_spec


def run_sweep(spec, *args, address: str | None = None, **kwargs):
    """Run a sweep here (:func:`raybrain.sweep.driver.run_sweep`), or, for a ``ray://``
    address, with its driver on the cluster (:func:`raybrain.sweep.remote.run_remote`)."""
    if address and address.startswith("ray://") and not kwargs.get("dry_run"):
        from raybrain.sweep.remote import run_remote

        return run_remote(spec, address, *args, **kwargs)
    from raybrain.sweep.driver import run_sweep as _run

    return _run(spec, *args, address=address, **kwargs)


__all__ = ["Spec", "SpecWarning", "load_spec", "parse_spec", "run_sweep", "validate_spec"]
