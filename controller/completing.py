"""Shell completion generated from the command line's own parser, so it never drifts from the flags.

``source <(amlops completion bash)`` completes commands, sub-actions, each command's flags, and the
values of flags with fixed choices; anything else falls back to file names.
"""

from __future__ import annotations

import argparse
import shlex


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags_and_choices(parser: argparse.ArgumentParser) -> tuple[list[str], dict[str, list[str]]]:
    flags: list[str] = []
    choices: dict[str, list[str]] = {}
    for action in parser._actions:
        flags.extend(action.option_strings)
        if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
            for flag in action.option_strings:
                choices[flag] = [str(c) for c in action.choices]
    return flags, choices


def _words(items: list[str]) -> str:
    return shlex.quote(" ".join(items))


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion script for ``parser`` (registered for its ``prog``)."""
    prog = parser.prog
    function = "_" + "".join(ch if ch.isalnum() else "_" for ch in prog)
    commands = _subcommands(parser)
    cases: list[str] = []
    for name, sub in commands.items():
        flags, choices = _flags_and_choices(sub)
        actions = _subcommands(sub)
        body = []
        if actions:
            body.append(f'            if [ "$COMP_CWORD" -eq 2 ]; then COMPREPLY=($(compgen -W {_words(list(actions))} -- "$cur")); return; fi')
            for action_flags in actions.values():
                more, more_choices = _flags_and_choices(action_flags)
                flags += more
                choices.update(more_choices)
        for flag, values in choices.items():
            body.append(f'            if [ "$prev" = {shlex.quote(flag)} ]; then COMPREPLY=($(compgen -W {_words(values)} -- "$cur")); return; fi')
        positional = [a for a in sub._actions if not a.option_strings and a.choices and not isinstance(a, argparse._SubParsersAction)]
        if positional and not actions:
            values = [str(c) for c in positional[0].choices or ()]
            body.append(f'            if [[ "$cur" != -* ]]; then COMPREPLY=($(compgen -W {_words(values)} -- "$cur")); return; fi')
        body.append(f"            opts={_words(sorted(set(flags)))}")
        cases.append(f"        {shlex.quote(name)})\n" + "\n".join(body) + "\n            ;;")
    top_flags, _ = _flags_and_choices(parser)
    case_text = "\n".join(cases)
    return f"""# bash completion for {prog}: source <({prog} completion bash)
{function}() {{
    local cur prev opts=""
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W {_words([*commands, *top_flags])} -- "$cur"))
        return
    fi
    case "${{COMP_WORDS[1]}}" in
{case_text}
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -o default -F {function} {prog}
"""
