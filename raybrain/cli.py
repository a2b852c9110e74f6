"""The ``raybrain`` command line.

``raybrain sweep SPEC [--address] [--tracking-uri] [--name] [--max-configs] [--seeds]
[--dry-run]`` validates the spec (one line and exit code 2 on bad input, before Ray starts
or any MLflow run exists), runs the sweep with live progress and prints the verdict table.
``raybrain ui [--tracking-uri] [--experiment] [--sweep] [--port] [--host]`` serves the
MLflow store in the MLflow UI and prints the experiment's (and the sweep's) URL.
``raybrain submit SPEC --address http://HEAD:8265`` runs a sweep as a Ray Job on a cluster;
``raybrain jobs status|logs|stop|list [ID]`` follows it.
``raybrain data prepare SPEC`` reads, cleans and caches a spec's brain data;
``raybrain data inspect FILE...`` prints the shapes and rates of brain-data files.
``raybrain report SWEEP [--out DIR]`` draws the sweep's figures and verdict into one HTML
page and logs them on the sweep's parent run.
"""

from __future__ import annotations

import argparse
import sys
import warnings


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (>= 1), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raybrain", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sweep", help="run a sweep spec (search x arms x seeds) and print the verdict")
    s.add_argument("spec", help="path to a sweep spec YAML (see search_spaces/)")
    s.add_argument("--address", help="Ray cluster: auto or HOST:6379 from a cluster node, "
                   "ray://HOST:10001 from elsewhere (default: start a private local Ray)")
    s.add_argument("--tracking-uri", help="MLflow tracking URI (default: the spec's, sqlite:///mlflow.db)")
    s.add_argument("--storage-path", help="Tune state and checkpoints (default: the spec's "
                   "storage.path); on a multi-node cluster a shared path or s3://, gs:// URI")
    s.add_argument("--name", help="sweep name (default: the spec's); the same name resumes")
    s.add_argument("--max-configs", type=_positive_int, help="run at most this many configs")
    s.add_argument("--seeds", type=_positive_int, help="number of seeds per arm (overrides the spec)")
    s.add_argument("--dry-run", action="store_true", help="validate and print the plan; run nothing")
    s.add_argument("--num-cpus", type=_positive_int, help="CPUs of the local Ray (default: all)")
    s.add_argument("--resume", action="store_true",
                   help="continue the sweep of this name (its search, checkpoints and MLflow "
                        "parent); refused if there is none. The same name resumes anyway")
    s.add_argument("--dashboard", action="store_true",
                   help="start the Ray dashboard with the local Ray (default: off)")
    s.add_argument("--dashboard-host", default="127.0.0.1",
                   help="interface of that dashboard (default: 127.0.0.1, this machine only)")
    v = sub.add_parser("validate", help="validate a spec and print the plan")
    v.add_argument("spec")
    from raybrain.analysis.report import add_report_subparser
    from raybrain.jobs import add_jobs_subparsers

    from raybrain.data_command import add_data_subparsers

    add_report_subparser(sub)
    add_data_subparsers(sub)
    add_jobs_subparsers(sub)
    u = sub.add_parser("ui", help="serve the MLflow store in the MLflow UI until Ctrl-C")
    u.add_argument("--tracking-uri", default="sqlite:///mlflow.db",
                   help="MLflow backend store (default: sqlite:///mlflow.db, the sweeps' default)")
    u.add_argument("--experiment", default="raybrain",
                   help="MLflow experiment of the sweeps (default: raybrain, the spec default)")
    u.add_argument("--sweep", help="also print the URL of this sweep's parent run")
    u.add_argument("--port", type=_port, help="port to listen on (default: a free one)")
    u.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    return p


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 1..65535, got {value}")
    return value


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


class _ArgumentError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    from raybrain.errors import SpecError, TrackingUnavailable

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
        from raybrain.sweep import load_spec, run_sweep

        spec = load_spec(args.spec)
        if args.command == "validate":
            run_sweep(spec, source=args.spec, dry_run=True)
            return 0
        result = run_sweep(spec, source=args.spec, address=args.address,
                           tracking_uri=args.tracking_uri, storage_path=args.storage_path,
                           name=args.name,
                           max_configs=args.max_configs, seeds=args.seeds,
                           dry_run=args.dry_run, num_cpus=args.num_cpus, resume=args.resume,
                           dashboard=args.dashboard, dashboard_host=args.dashboard_host)
        if not args.dry_run:
            print(f"sweep finished in {result.wall_s:.0f} s")
        return 0
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrackingUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
