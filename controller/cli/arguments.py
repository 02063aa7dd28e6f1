"""The ``amlops`` argument parser: every command, its flags and its exit codes (``--help`` shows them)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from controller import __version__
from controller.cli.changing import cmd_apply, cmd_delete, cmd_plan
from controller.cli.checking import cmd_render, cmd_schemas, cmd_validate
from controller.cli.contexts import EXIT_OK, EXIT_USAGE
from controller.cli.inspecting import cmd_history, cmd_keys, cmd_logs, cmd_rollout, cmd_status, cmd_token
from controller.cli.launching import cmd_run, cmd_serve
from controller.completing import bash_completion
from controller.runtime.flags import add_run_arguments


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", default=None, help="state folder (default $AMLOPS_STATE_DIR or the user state dir)")
    parser.add_argument("--controller-name", default=None, help="owner name in the tags (default $AMLOPS_CONTROLLER_NAME or amlops)")


def _manifests_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--path", default=None, metavar="PATH",
                        help="manifests folder whose Workspace manifests pick the backends to ask "
                             "(default: manifests, if that folder is here; else the local backend only)")


# --- exit codes, help and completion (every option has help; every command lists its exit codes) ---


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors exiting 64 (EX_USAGE): 2 means "changes" for plan and apply."""

    def error(self, message: str) -> Any:  # argparse types this NoReturn; Any keeps mypy and ruff content
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _exit_codes(*lines: str) -> str:
    return "exit codes:\n" + "\n".join(f"  {line}" for line in (*lines, "64  usage error (unknown flag, missing argument)"))


_EXIT_PLAIN = _exit_codes("0   success", "1   error")


def cmd_completion(args: argparse.Namespace) -> int:
    """Print the shell completion script (``source <(amlops completion bash)``)."""
    sys.stdout.write(bash_completion(build_parser()))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = _Parser(prog="amlops", description="GitOps for Azure ML GPU inference",
                     epilog=_exit_codes("0   success", "1   error", "2   changes (plan; apply --detailed-exitcode)"),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"amlops {__version__}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    def command(name: str, help_text: str, epilog: str = _EXIT_PLAIN, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    validate = command("validate", "check manifests; exit 1 on any error",
                       _exit_codes("0   every manifest is valid", "1   at least one error (each printed with file and line)"))
    validate.add_argument("paths", nargs="+", metavar="PATH", help="files or folders of manifests")
    validate.add_argument("--output", choices=("text", "json", "github"), default="text",
                          help="text (errors on stderr), json (a document on stdout), or github "
                               "(::error annotations for GitHub Actions, on stdout)")
    validate.add_argument("--render", action="store_true",
                          help="also print the manifests as rendered (an overlay's kustomization applied)")
    validate.set_defaults(handler=cmd_validate)

    render = command("render", "print manifests as rendered (overlays applied), then validate them",
                     _exit_codes("0   rendered and valid", "1   an error (each printed with file and line)"))
    render.add_argument("paths", nargs="+", metavar="PATH",
                        help="files or folders of manifests (a folder with a kustomization.yaml is rendered)")
    render.set_defaults(handler=cmd_render)

    schemas = command("schemas", "JSON Schemas of the manifest kinds")
    schemas_sub = schemas.add_subparsers(dest="schemas_command", required=True, parser_class=_Parser, metavar="ACTION")
    export = schemas_sub.add_parser("export", help="write schemas/*.json", description="write schemas/*.json",
                                    epilog=_exit_codes("0   written, or up to date with --check", "1   stale (--check)"),
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    export.add_argument("--dir", default="schemas", help="folder to write the schemas to (default schemas)")
    export.add_argument("--check", action="store_true", help="fail if the files on disk are stale")
    export.set_defaults(handler=cmd_schemas)

    # `serve` and `emulator` parse their own flags (main() hands them over); listed here for --help.
    serve = command("serve", "run one scoring host in the foreground (like azmlinfsrv); see amlops serve --help",
                    _exit_codes("0   drained after SIGTERM", "1   init() failed or the port could not be opened"),
                    add_help=False)
    serve.add_argument("rest", nargs=argparse.REMAINDER, help="the scoring host's flags")
    serve.set_defaults(handler=cmd_serve)
    emulator = command("emulator", "run the Azure ML emulator (HTTPS); see amlops emulator --help", add_help=False)
    emulator.add_argument("rest", nargs=argparse.REMAINDER, help="the emulator's flags")

    plan_cmd = command("plan", "show what apply would change (exit 0 none, 2 changes, 1 error)",
                       _exit_codes("0   no changes", "1   error (invalid manifests, unreadable backend, unknown Git ref)",
                                   "2   changes"))
    plan_cmd.add_argument("path_arg", nargs="?", default="manifests", metavar="PATH", help="manifests folder (default manifests)")
    plan_cmd.add_argument("--output", choices=("text", "markdown", "json"), default="text",
                          help="text for a terminal, markdown for a pull request comment, json for programs")
    plan_cmd.add_argument("--no-color", action="store_true", help="no ANSI colours (also when NO_COLOR is set)")
    plan_cmd.add_argument("--base", default=None, help="Git ref the plan starts from (no backend is read)")
    plan_cmd.add_argument("--head", default="HEAD", help="Git ref whose manifests would be merged (default HEAD)")
    plan_cmd.add_argument("--repo", default=".", help="Git repository for --base/--head (default .)")
    plan_cmd.add_argument("--path", default=None, help="manifests folder inside the repo for --base/--head (default PATH)")
    plan_cmd.add_argument("--allow-mass-delete", action="store_true", help="do not mark mass deletes as held")
    _common(plan_cmd)
    plan_cmd.set_defaults(handler=cmd_plan)

    apply = command("apply", "plan and apply once, with live progress",
                    _exit_codes("0   applied, or nothing to do",
                                "1   error: invalid manifests, a failed change, a held plan, or no confirmation",
                                "2   changes were applied (only with --detailed-exitcode)"))
    apply.add_argument("path_arg", nargs="?", default="manifests", metavar="PATH", help="manifests folder (default manifests)")
    apply.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    apply.add_argument("--detailed-exitcode", action="store_true",
                       help="exit 2 when changes were applied (0 only when there was nothing to do), like terraform")
    apply.add_argument("--allow-mass-delete", action="store_true",
                       help="apply a plan that deletes most owned resources instead of holding it")
    apply.add_argument("--parallelism", type=int, default=4, help="changes applied at once (default 4)")
    apply.add_argument("--no-color", action="store_true", help="no ANSI colours (also when NO_COLOR is set)")
    _common(apply)
    apply.set_defaults(handler=cmd_apply)

    status = command("status", "every resource with its state and conditions",
                     _exit_codes("0   every backend in use was read", "1   a backend could not be read"))
    status.add_argument("--output", choices=("text", "json"), default="text", help="text for people, json for programs")
    _manifests_arg(status)
    _common(status)
    status.set_defaults(handler=cmd_status)

    history = command("history", "recent reconciles, newest first")
    history.add_argument("--limit", type=int, default=20, help="how many reconciles to show (default 20)")
    history.add_argument("--output", choices=("text", "json"), default="text", help="text for people, json for programs")
    _common(history)
    history.set_defaults(handler=cmd_history)

    keys = command("keys", "print a service's keys (to stdout only)")
    keys.add_argument("service", help="web service name")
    keys.add_argument("--regenerate", choices=("primary", "secondary"), default=None,
                      help="regenerate this key first (callers using it are refused from then on)")
    keys.add_argument("--output", choices=("text", "json"), default="text",
                      help="json: primaryKey, secondaryKey, as Azure ML gives them")
    keys.add_argument("--primary", action="store_true", help="print only the primary key (for $(...) in scripts)")
    _manifests_arg(keys)
    _common(keys)
    keys.set_defaults(handler=cmd_keys)

    token = command("token", "print a fresh access token of a service with auth: token (to stdout only)")
    token.add_argument("service", help="web service name")
    token.add_argument("--output", choices=("text", "json"), default="text",
                       help="json: accessToken, tokenType, refreshAfter, expiryOn (Unix seconds), as Azure ML gives them")
    _manifests_arg(token)
    _common(token)
    token.set_defaults(handler=cmd_token)

    rollout = command("rollout", "where a service's rollout stands; promote or abort it",
                      _exit_codes("0   done (status printed; promote/abort recorded)", "1   error (no such service or rollout)"))
    rollout.add_argument("action", choices=("status", "promote", "abort"),
                         help="status: step, weights and live figures; promote: finish now; abort: all traffic back to live")
    rollout.add_argument("service", help="web service name")
    rollout.add_argument("--output", choices=("text", "json"), default="text", help="text for people, json for tools")
    _manifests_arg(rollout)
    _common(rollout)
    rollout.set_defaults(handler=cmd_rollout)

    logs = command("logs", "a service replica's log")
    logs.add_argument("service", help="web service name")
    logs.add_argument("--replica", type=int, default=0,
                      help="replica number, 0-based (local backend; Azure ML returns the log of a replica it picks)")
    logs.add_argument("--tail", type=int, default=100, help="lines to print first")
    logs.add_argument("--follow", "-f", action="store_true",
                      help="keep printing new lines (local backend only; on azureml, run again to see new lines)")
    _manifests_arg(logs)
    _common(logs)
    logs.set_defaults(handler=cmd_logs)

    delete = command("delete", "delete KIND/NAME or everything a manifests folder declares",
                     _exit_codes("0   deleted, or nothing of a folder's to delete",
                                 "1   a delete failed, KIND/NAME was not found, or no confirmation"))
    delete.add_argument("target", metavar="PATH|KIND/NAME", help="a manifests folder, or one resource such as Webservice/my-svc")
    delete.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    delete.add_argument("--force", action="store_true", help="also delete resources amlops did not create")
    delete.add_argument("--include-retained", action="store_true",
                        help="also delete resources whose deletionPolicy is Retain (clusters, by default)")
    delete.add_argument("--no-color", action="store_true", help="no ANSI colours (also when NO_COLOR is set)")
    _common(delete)
    delete.set_defaults(handler=cmd_delete)

    run = command("run", "the long-lived controller: watch a repo and keep its state applied",
                  _exit_codes("0   stopped cleanly (SIGTERM), or --once reconciled", "1   --once failed or was invalid",
                              "3   --once held the plan (mass delete)"))
    add_run_arguments(run)
    run.set_defaults(handler=cmd_run)

    completion = command("completion", "print a shell completion script: source <(amlops completion bash)")
    completion.add_argument("shell", choices=("bash",), help="the shell to complete in")
    completion.set_defaults(handler=cmd_completion)
    return parser
