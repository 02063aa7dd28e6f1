#!/usr/bin/env bash
# What a pull request's reviewers read: validate the head's manifests (each error also becomes a
# GitHub annotation on its file and line), then plan the merge against the base. Writes the comment
# body, headed by a marker that finds this comment again, to OUT.
#
# Usage: amlops-pr.sh BASE_REF MANIFESTS_PATH OUT
# Exit: 0 valid (with or without changes), 1 invalid manifests or a failed plan (the body says why).
set -uo pipefail
base="$1" path="$2" out="$3"
marker="<!-- amlops-plan -->"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

fence() { echo; echo '```'; cat "$1"; echo '```'; }

# Annotations go to stdout, where the runner reads them; the text errors go into the comment.
amlops validate "$path" --output github
if ! amlops validate "$path" > /dev/null 2> "$work/validate.err"; then
    {
        echo "$marker"
        echo "### ❌ amlops: the manifests in \`$path\` are invalid"
        echo
        echo "Nothing can be planned until they validate. Each error is also annotated on its file and line."
        fence "$work/validate.err"
    } > "$out"
    exit 1
fi

amlops plan --base "$base" --head HEAD --path "$path" --output markdown > "$work/plan.md" 2> "$work/plan.err"
code=$?
{
    echo "$marker"
    if [ "$code" -eq 0 ] || [ "$code" -eq 2 ]; then
        cat "$work/plan.md"
        if [ -s "$work/plan.err" ]; then echo; echo "Warnings:"; fence "$work/plan.err"; fi
    else
        echo "### ❌ amlops plan failed"
        fence "$work/plan.err"
    fi
} > "$out"
[ "$code" -eq 0 ] || [ "$code" -eq 2 ]
