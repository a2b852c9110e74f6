"""The ``raybrain`` command line.

``raybrain sweep SPEC [--address] [--tracking-uri] [--name] [--max-configs] [--seeds]
[--dry-run]`` validates the spec (one line and exit code 2 on bad input, before Ray starts
or any MLflow run exists), runs the sweep with live progress and prints the verdict table.
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
    s.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    s.add_argument("--tracking-uri", help="MLflow tracking URI (default: the spec's, sqlite:///mlflow.db)")
    s.add_argument("--name", help="sweep name (default: the spec's); the same name resumes")
    s.add_argument("--max-configs", type=_positive_int, help="run at most this many configs")
    s.add_argument("--seeds", type=_positive_int, help="number of seeds per arm (overrides the spec)")
    s.add_argument("--dry-run", action="store_true", help="validate and print the plan; run nothing")
    s.add_argument("--num-cpus", type=_positive_int, help="CPUs of the local Ray (default: all)")
    v = sub.add_parser("validate", help="validate a spec and print the plan")
    v.add_argument("spec")
    return p


class _ArgumentError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    from raybrain.errors import SpecError

    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    def warn_line(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = warn_line
    try:
        from raybrain.sweep import load_spec, run_sweep

        spec = load_spec(args.spec)
        if args.command == "validate":
            run_sweep(spec, source=args.spec, dry_run=True)
            return 0
        result = run_sweep(spec, source=args.spec, address=args.address,
                           tracking_uri=args.tracking_uri, name=args.name,
                           max_configs=args.max_configs, seeds=args.seeds,
                           dry_run=args.dry_run, num_cpus=args.num_cpus)
        if not args.dry_run:
            print(f"sweep finished in {result.wall_s:.0f} s")
        return 0
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
