"""Score a finished ``mutmut run`` and check its survivors against the committed list.

Run from the repository root after ``mutmut run`` (``./deploy/dev.sh mutation`` does both):

    python deploy/mutation_report.py [--min-score 90] [--survivors docs/mutation-survivors.md] [--template]

Prints killed/total per file and overall, then every survivor as the line it changes.
Exits 1 when the score is below ``--min-score``, when a survivor is not in the survivors
file (each one there says why it is equivalent), or when mutants were left unchecked.
``--template`` prints the unlisted survivors as table rows to paste into that file.

A survivor is named by its function and the line it changes (``original → mutant``), not
by mutmut's number: editing a function renumbers its mutants, while an equivalent change
stays the same change. Timeouts count as killed (the tests noticed the mutant never ends).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

KILLED = {"killed", "timeout", "caught by type check"}
SURVIVED = {"survived", "no tests", "suspicious", "segfault"}
STATUS_BY_EXIT_CODE = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped"}
STATUS_BY_EXIT_CODE |= {35: "suspicious", 36: "timeout", 37: "caught by type check", 24: "timeout", -24: "timeout"}
STATUS_BY_EXIT_CODE |= {152: "timeout", 255: "timeout", -11: "segfault", -9: "segfault"}
ROW = re.compile(
    r"^\|\s*`(?P<function>[^`]+)`\s*\|\s*``\s?(?P<original>.*?)\s?``\s*\|\s*``\s?(?P<mutant>.*?)\s?``\s*\|(?P<why>.*)\|\s*$"
)


def status_of(exit_code: int | None) -> str:
    return "not checked" if exit_code is None else STATUS_BY_EXIT_CODE.get(exit_code, "suspicious")


def function_of(mutant: str) -> str:
    """``control.security.keyring.xǁKeyringǁopen__mutmut_3`` -> ``control.security.keyring.Keyring.open``."""
    module, _, mangled = mutant.rpartition("__mutmut_")[0].rpartition(".")
    if mangled.startswith("xǁ"):
        cls, _, method = mangled[2:].partition("ǁ")
        return f"{module}.{cls}.{method}"
    return f"{module}.{mangled.removeprefix('x_')}"


def changed_lines(diff: str) -> tuple[str, str]:
    """The removed and the added lines of a mutant's diff, each joined into one line."""
    lines = [line for line in diff.splitlines() if not line.startswith(("---", "+++", "@@"))]
    removed = " ".join(line[1:].strip() for line in lines if line.startswith("-"))
    added = " ".join(line[1:].strip() for line in lines if line.startswith("+"))
    return removed, added


def listed_survivors(path: Path) -> set[tuple[str, str, str]]:
    """(function, original, mutant) of each row of the survivors file's tables."""
    listed = set()
    for line in path.read_text().splitlines():
        if match := ROW.match(line):
            listed.add((match["function"], _unescape(match["original"]), _unescape(match["mutant"])))
    return listed


def row(function: str, original: str, mutant: str) -> str:
    return f"| `{function}` | `` {_escape(original)} `` | `` {_escape(mutant)} `` | TODO: why is it equivalent? |"


def _escape(code: str) -> str:
    return code.replace("|", "\\|")  # a pipe ends a table cell, even inside backticks


def _unescape(code: str) -> str:
    return code.replace("\\|", "|")


def main() -> int:
    parser = argparse.ArgumentParser(description="Score a mutmut run and check its survivors against the committed list.")
    parser.add_argument("--min-score", type=float, default=90.0, help="percent of mutants that must be killed")
    parser.add_argument("--survivors", type=Path, default=Path("docs/mutation-survivors.md"))
    parser.add_argument("--template", action="store_true", help="print unlisted survivors as rows for the survivors file")
    args = parser.parse_args()

    metas = sorted(Path("mutants").rglob("*.py.meta"))
    if not metas:
        print("no mutmut results under mutants/: run `mutmut run` first", file=sys.stderr)
        return 2
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    survivors: list[tuple[str, Path]] = []
    for meta in metas:
        source = meta.relative_to("mutants").with_suffix("")  # control/.../x.py
        for mutant, exit_code in json.loads(meta.read_text())["exit_code_by_key"].items():
            status = status_of(exit_code)
            counts[str(source)][status] += 1
            if status in SURVIVED:
                survivors.append((mutant, source))

    total = Counter[str]()
    print(f"{'file':<40} {'killed':>7} {'total':>6} {'score':>7}  other")
    for name, by_status in sorted(counts.items()):
        total.update(by_status)
        killed, checked = sum(by_status[s] for s in KILLED), sum(n for s, n in by_status.items() if s != "skipped")
        others = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()) if s not in KILLED)
        print(f"{name:<40} {killed:>7} {checked:>6} {100 * killed / max(checked, 1):>6.1f}%  {others}")
    killed, checked = sum(total[s] for s in KILLED), sum(n for s, n in total.items() if s != "skipped")
    score = 100 * killed / max(checked, 1)
    print(f"{'all':<40} {killed:>7} {checked:>6} {score:>6.1f}%  (timeouts: {total['timeout']}, counted as killed)")

    from mutmut.mutation.diff_apply import get_diff_for_mutant  # only needed, and importable, after a run

    listed = listed_survivors(args.survivors) if args.survivors.exists() else set()
    unlisted = []
    print(f"\n{len(survivors)} survivors ({args.survivors} says why each one is equivalent):")
    for mutant, source in sorted(survivors):
        original, changed = changed_lines(get_diff_for_mutant(mutant, path=source))
        key = (function_of(mutant), original, changed)
        mark = " " if key in listed else "!"
        print(f" {mark} {mutant}\n      - {original}\n      + {changed}")
        if key not in listed:
            unlisted.append(key)

    failed = False
    if total["not checked"]:
        print(f"\nFAIL: {total['not checked']} mutants were not checked (an interrupted run?)")
        failed = True
    if score < args.min_score:
        print(f"\nFAIL: mutation score {score:.1f}% is below {args.min_score:g}%: add tests that kill the survivors above")
        failed = True
    if unlisted:
        print(
            f"\nFAIL: {len(unlisted)} survivors (marked !) are not in {args.survivors}: kill them with a test, or list them with a reason"
        )
        failed = True
    if args.template and unlisted:
        print("\n" + "\n".join(sorted({row(*key) for key in unlisted})))
    if not failed:
        print(f"\nOK: {score:.1f}% of {checked} mutants killed; every survivor is listed as equivalent")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
