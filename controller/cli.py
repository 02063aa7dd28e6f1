"""The ``amlops`` command line. Each subcommand parses flags and calls one function below it."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from controller import __version__
from controller.sources.loading import load_desired_state
from controller.structs.errors import ValidationFailed
from controller.structs.schemas import manifest_schemas

Handler = Callable[[argparse.Namespace], int]


def _root_and_path(target: str) -> tuple[Path, str]:
    """The repo boundary for ``target`` (cwd when the target lies under it) and the path inside it."""
    cwd = Path.cwd()
    absolute = Path(target).absolute()
    try:
        return cwd, absolute.relative_to(cwd).as_posix() or "."
    except ValueError:
        base = absolute if absolute.is_dir() else absolute.parent
        return base, "." if absolute.is_dir() else absolute.name


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate manifests; print every error as ``file:line: Kind name: field: message``."""
    failed = False
    total = 0
    for target in args.paths:
        root, path = _root_and_path(target)
        try:
            state = load_desired_state(root, path)
        except ValidationFailed as exc:
            failed = True
            for error in exc.errors:
                print(error, file=sys.stderr)
            continue
        total += len(state)
    if failed:
        return 1
    print(f"{total} resources valid")
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    """Write (or with --check, compare) the JSON Schemas generated from the manifest models."""
    out = Path(args.dir)
    stale = []
    for name, schema in manifest_schemas().items():
        text = json.dumps(schema, indent=2, sort_keys=True) + "\n"
        target = out / name
        if args.check:
            if not target.exists() or target.read_text() != text:
                stale.append(str(target))
        else:
            out.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    if stale:
        print("stale schemas (run `amlops schemas export`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run one scoring host in the foreground, in place of this process (TensorFlow stays out of the CLI)."""
    argv = [sys.executable, "-m", "controller.scoring", *args.rest]
    os.execv(sys.executable, argv)
    return 0  # pragma: no cover - execv does not return


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="amlops", description="GitOps for Azure ML GPU inference")
    parser.add_argument("--version", action="version", version=f"amlops {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="check manifests; exit 1 on any error")
    validate.add_argument("paths", nargs="+", help="files or folders of manifests")
    validate.set_defaults(handler=cmd_validate)

    schemas = sub.add_parser("schemas", help="JSON Schemas of the manifest kinds")
    schemas_sub = schemas.add_subparsers(dest="schemas_command", required=True)
    export = schemas_sub.add_parser("export", help="write schemas/*.json")
    export.add_argument("--dir", default="schemas")
    export.add_argument("--check", action="store_true", help="fail if the files on disk are stale")
    export.set_defaults(handler=cmd_schemas)

    serve = sub.add_parser("serve", help="run one scoring host in the foreground (like azmlinfsrv)", add_help=False)
    serve.add_argument("rest", nargs=argparse.REMAINDER)
    serve.set_defaults(handler=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``amlops`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    return handler(args)
