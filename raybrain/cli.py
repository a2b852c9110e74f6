"""The raybrain command line: run sweeps, check specs, prepare data, read results.

Every problem a user can fix (a malformed spec, a missing or malformed data file, an
MLflow server that does not answer) is one line on standard error and exit code 2, before
Ray starts and before any MLflow run exists. A sweep stopped by Ctrl-C or SIGTERM exits
with 130 or 143 after printing the command that resumes it; a sweep that failed exits 1.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from raybrain.cli_args import OneLineParser, port, positive_int

DESCRIPTION = """\
Brain-guided training with control arms, seed replicates and calibrated verdicts.

  raybrain sweep SPEC           run a sweep spec and print its verdict
  raybrain validate SPEC        check a spec (files, MLflow, overrides) and print its plan
  raybrain data prepare SPEC    read, clean and cache a spec's brain data
  raybrain data inspect FILE    shapes and rates of brain-data files
  raybrain report NAME          the HTML report of a sweep
  raybrain ui --sweep NAME      the MLflow UI on a sweep's store
  raybrain submit SPEC          run a sweep as a Ray Job on a cluster

Run 'raybrain COMMAND --help' for a command's options."""


def _sweep_options(s: argparse.ArgumentParser) -> None:
    """Options shared by 'sweep' and 'validate' (one preflight checks both)."""
    s.add_argument("spec", help="path to a sweep spec YAML (see search_spaces/)")
    s.add_argument("--address", help="Ray cluster: auto or HOST:6379 from a cluster node, "
                   "ray://HOST:10001 from elsewhere (default: start a private local Ray)")
    s.add_argument("--tracking-uri", help="MLflow tracking URI (default: the spec's, "
                   "sqlite:///mlflow.db)")
    s.add_argument("--storage-path", help="where Tune state and checkpoints go (default: the "
                   "spec's storage.path); on a multi-node cluster a shared path or s3://, gs://")
    s.add_argument("--name", help="sweep name (default: the spec's); the same name resumes")
    s.add_argument("--max-configs", type=positive_int, help="run at most this many configs "
                   "(recorded with the sweep: a resume reapplies it)")
    s.add_argument("--seeds", type=positive_int, help="seeds per arm, instead of the spec's "
                   "(recorded with the sweep: a resume reapplies it)")
    s.add_argument("--resume", action="store_true",
                   help="continue this sweep (its search, checkpoints and MLflow runs) with "
                        "the overrides it was started with; refused if there is none")
    s.add_argument("--num-cpus", type=positive_int, help="CPUs of the local Ray (default: all)")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="raybrain", description=DESCRIPTION,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=OneLineParser)
    s = sub.add_parser("sweep", help="run a sweep spec (search x arms x seeds) and print the "
                       "verdict", description="Run a sweep: every config of the search in "
                       "every arm and seed, on a local Ray or a cluster, tracked in MLflow; "
                       "ends with the verdict table and an HTML report. Ctrl-C stops it "
                       "cleanly and prints the command that resumes it.")
    _sweep_options(s)
    s.add_argument("--dry-run", action="store_true",
                   help="check everything and print the plan; run nothing")
    s.add_argument("--dashboard", action="store_true",
                   help="start the Ray dashboard with the local Ray (default: off)")
    s.add_argument("--dashboard-host", default="127.0.0.1",
                   help="interface of that dashboard (default: 127.0.0.1, this machine only)")
    s.add_argument("--verbose", action="store_true",
                   help="also show Ray's and MLflow's own start-up messages")
    v = sub.add_parser("validate", help="check a spec as a sweep would and print its plan",
                       description="Check a spec exactly as 'raybrain sweep' does before it "
                       "starts (the spec, its data files, the MLflow store, the overrides, a "
                       "resume) and print the plan; nothing runs.")
    _sweep_options(v)
    from raybrain.analysis.report import add_report_subparser
    from raybrain.data_command import add_data_subparsers
    from raybrain.jobs import add_jobs_subparsers

    add_report_subparser(sub)
    add_data_subparsers(sub)
    add_jobs_subparsers(sub)
    u = sub.add_parser("ui", help="serve the MLflow store in the MLflow UI until Ctrl-C",
                       description="Start an MLflow server on a sweep store (on this "
                       "machine only, by default) and print the sweep's page.")
    u.add_argument("--tracking-uri", default="sqlite:///mlflow.db",
                   help="MLflow backend store (default: sqlite:///mlflow.db, the sweeps' default)")
    u.add_argument("--experiment", default="raybrain",
                   help="MLflow experiment of the sweeps (default: raybrain, the spec default)")
    u.add_argument("--sweep", help="also print the URL of this sweep's parent run")
    u.add_argument("--port", type=port, help="port to listen on (default: a free one)")
    u.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    return p


def _ui(args: argparse.Namespace) -> int:
    """``raybrain ui``: look the sweep up, start ``mlflow server``, print URLs, wait."""
    import signal
    import time

    from raybrain.errors import SpecError
    from raybrain.ui import MlflowServer, ServerError, lookup

    uri = args.tracking_uri
    if uri.startswith(("http://", "https://")):
        raise SpecError(f"--tracking-uri {uri} is already an MLflow server: open it in a "
                        f"browser; raybrain ui serves a database store such as sqlite:///mlflow.db")
    experiment_id, parent_id = lookup(uri, args.experiment, args.sweep)

    def _terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    server = MlflowServer(uri, port=args.port, host=args.host)
    try:
        try:
            server.start()
        except ServerError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"MLflow UI for {uri}: {server.url} (Ctrl-C stops it)", flush=True)
        if experiment_id is None:
            print(f"no experiment {args.experiment!r} in {uri} yet", flush=True)
        else:
            print(f"experiment {args.experiment!r}: {server.experiment_url(experiment_id)}",
                  flush=True)
        if parent_id is not None:
            print(f"sweep {args.sweep!r}: {server.run_url(experiment_id, parent_id)}", flush=True)
        while server.proc.poll() is None:
            time.sleep(0.5)
        print(f"error: mlflow server exited with code {server.proc.returncode}: "
              f"{server.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping the MLflow server", file=sys.stderr, flush=True)
        return 0
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)


def _sweep(args: argparse.Namespace) -> int:
    """``raybrain sweep`` and ``raybrain validate``: one preflight, then the sweep."""
    from raybrain.sweep import load_spec, run_sweep
    from raybrain.sweep.preflight import Overrides, preflight

    from raybrain.sweep.session import quiet_logs

    quiet_logs(getattr(args, "verbose", False))
    spec = load_spec(args.spec)
    overrides = Overrides(name=args.name, seeds=args.seeds, max_configs=args.max_configs,
                          tracking_uri=args.tracking_uri, storage_path=args.storage_path)
    remote = bool(args.address and args.address.startswith("ray://"))
    dry = args.command == "validate" or args.dry_run
    if remote and not dry:
        return 0 if run_sweep(spec, source=args.spec, address=args.address, resume=args.resume,
                              tracking_uri=args.tracking_uri, storage_path=args.storage_path,
                              name=args.name, max_configs=args.max_configs,
                              seeds=args.seeds) else 1
    pre = preflight(spec, args.spec, overrides=overrides, resume=args.resume,
                    address=args.address, num_cpus=args.num_cpus)
    if dry:
        from raybrain.sweep.driver import describe

        for line in pre.notes:
            print(line)
        describe(pre, print)
        if args.command == "sweep":  # --dry-run: what it would cost here
            from raybrain.sweep.estimate import estimate

            print(estimate(pre, args.num_cpus).describe())
        print(f"{args.spec}: valid")
        return 0
    result = run_sweep(spec, source=args.spec, address=args.address, num_cpus=args.num_cpus,
                       resume=args.resume, dashboard=args.dashboard,
                       dashboard_host=args.dashboard_host, verbose=args.verbose, pre=pre)
    print(f"sweep {pre.spec.name!r} finished in {result.wall_s:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    from raybrain.errors import SpecError, SweepFailed, SweepInterrupted, TrackingUnavailable

    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    def warn_line(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = warn_line
    try:
        if args.command == "ui":
            return _ui(args)
        if args.command in ("submit", "jobs"):
            from raybrain.jobs import run_jobs_command

            return run_jobs_command(args)
        if args.command == "data":
            from raybrain.data_command import run_data_command

            return run_data_command(args)
        if args.command == "report":
            from raybrain.analysis.report import run_report_command

            return run_report_command(args)
        return _sweep(args)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (TrackingUnavailable, SweepFailed) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except SweepInterrupted as intr:
        return 128 + intr.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
