"""``amlops validate``, ``render`` and ``schemas``: manifests checked with no backend at all."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from controller.cli.contexts import EXIT_ERROR, EXIT_OK, root_and_path
from controller.core.checking import check, rendered
from controller.core.rendering import render_validation_github, render_validation_json
from controller.structs.errors import ManifestError, ValidationFailed
from controller.structs.schemas import manifest_schemas


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate manifests; print every error as ``file:line: Kind name: field: message`` (or as JSON, or
    as GitHub Actions ``::error`` annotations with ``--output github``)."""
    errors: list[ManifestError] = []
    total = 0
    output = getattr(args, "output", "text")
    for target in args.paths:
        root, path = root_and_path(target)
        if getattr(args, "render", False) and output == "text":  # json and github keep stdout to one format
            _print_rendered(root, path)
        try:
            total += check(root, path)
        except ValidationFailed as exc:
            errors.extend(_relative_to_cwd(error, root) for error in exc.errors)
    if output == "json":
        sys.stdout.write(render_validation_json(total, errors))
    elif output == "github":
        sys.stdout.write(render_validation_github(errors))
        if not errors:
            print(f"{total} resources valid", file=sys.stderr)
    else:
        for error in errors:
            print(error, file=sys.stderr)
        if not errors:
            print(f"{total} resources valid")
    return EXIT_ERROR if errors else EXIT_OK


def _relative_to_cwd(error: ManifestError, root: Path) -> ManifestError:
    """``error`` with its file named from the current folder (what annotations and editors expect)."""
    try:
        shown = (root / error.file).absolute().relative_to(Path.cwd()).as_posix()
    except ValueError:
        return error
    return dataclasses.replace(error, file=shown)


def _print_rendered(root: Path, path: str) -> None:
    """The documents ``path`` renders to (an overlay's kustomization applied), as YAML on stdout."""
    sys.stdout.write(rendered(root, path))


def cmd_render(args: argparse.Namespace) -> int:
    """Print what a folder renders to (overlays applied), then validate it; exit 1 on any error."""
    args.render = True
    failed = False
    for target in args.paths:
        root, path = root_and_path(target)
        _print_rendered(root, path)
        try:
            check(root, path)
        except ValidationFailed as exc:
            failed = True
            for error in exc.errors:
                print(error, file=sys.stderr)
    return 1 if failed else 0


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
