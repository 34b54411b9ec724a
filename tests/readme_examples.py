"""Run the README's examples, in order, in a scratch directory, and check what they show.

Fenced blocks are run by language:

* ``console``: each ``$ command`` line runs in bash; the lines under it, up to the
  next ``$``, are its output as shown. A command must exit 0, and its output must
  match what is shown: a line ``...`` stands for any number of lines, ``...`` inside
  a line for any text, and times (``0.31 s``, ``12 ms``), ids (12 to 64 hex digits)
  and ISO timestamps are compared as such, not by value. A command with no output
  shown is not checked beyond its exit status.
* ``bash``: every line that is not a comment runs, and must exit 0.
* ``python``: the block runs as one script (its own process), and must not raise.

Other blocks (``toml``, layouts) are text. A block the suite cannot run here (it
needs S3 endpoints or several sites) follows an HTML comment that says so, invisible
on GitHub: ``<!-- readme: not run (needs two S3 sites) -->``.

``python -m tests.readme_examples [--write] [README.md]`` runs them from the command
line (``make readme``); ``--write`` replaces every shown output that no longer matches
with what the command printed now, so the README never goes stale.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Block", "Command", "Outcome", "normalise", "output_matches", "parse", "run"]

RUN = ("console", "bash", "python")
_NOT_RUN = re.compile(r"<!--\s*readme:\s*not run\s*\((?P<why>[^)]*)\)\s*-->")
_FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")
_TIME = re.compile(r"\b\d+(?:\.\d+)? ?(?:s|ms|µs)\b")
_ID = re.compile(r"\b[0-9a-f]{12,64}\b")
_STAMP = re.compile(r"\b\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:\d\d)?")


@dataclass
class Command:
    line: int  # 1-based line of the `$ ` in the README
    text: str
    shown: list[str] = field(default_factory=list)


@dataclass
class Block:
    lang: str
    line: int  # 1-based line of the opening fence
    body: list[str]
    not_run: str | None = None
    commands: list[Command] = field(default_factory=list)


@dataclass
class Outcome:
    block: Block
    command: Command | None
    ok: bool
    detail: str = ""
    output: list[str] = field(default_factory=list)


def parse(text: str) -> list[Block]:
    """The fenced blocks of a Markdown document, with their console commands."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        i += 1
        prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        skip = _NOT_RUN.search(prev)
        block = Block(m["lang"], start + 1, body, skip["why"].strip() if skip else None)
        if block.lang == "console":
            for k, line in enumerate(body):
                if line.startswith("$ "):
                    block.commands.append(Command(start + 2 + k, line[2:]))
                elif block.commands:
                    block.commands[-1].shown.append(line)
        blocks.append(block)
    return blocks


def normalise(line: str) -> str:
    """A line with times, ids and timestamps replaced by placeholders."""
    line = _STAMP.sub("<timestamp>", line.rstrip())
    line = _ID.sub("<id>", line)
    return _TIME.sub("<time>", line)


def output_matches(shown: list[str], actual: list[str]) -> bool:
    """Whether ``actual`` is what ``shown`` shows (see the module doc for ``...``)."""
    pattern = ""
    for line in shown:
        if line.strip() == "...":
            pattern += r"(?:[^\n]*\n)*?"
        else:
            parts = normalise(line).split("...")
            pattern += ".*?".join(re.escape(p) for p in parts) + r"\n"
    text = "".join(normalise(a) + "\n" for a in actual)
    return re.fullmatch(pattern, text) is not None


def _env(scratch: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS" and not k.startswith("HYPERSLAB_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HYPERSLAB_CACHE_DIR"] = str(scratch / ".cache")
    env["XDG_CONFIG_HOME"] = str(scratch / ".config")
    env["PYTHONWARNINGS"] = "ignore"
    env["HYPERSLAB_AUTHOR"] = "ada"  # commits name the same author on every machine
    return env


def _shell(command: str, scratch: Path, timeout: float) -> tuple[int, list[str]]:
    res = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=scratch,
        env=_env(scratch),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    return res.returncode, res.stdout.rstrip("\n").splitlines() if res.stdout.strip() else []


def run(readme: Path, scratch: Path, timeout: float = 600) -> list[Outcome]:
    """Run every runnable block of ``readme`` in order in ``scratch``."""
    outcomes: list[Outcome] = []
    for block in parse(readme.read_text()):
        if block.lang not in RUN or block.not_run is not None:
            continue
        if block.lang == "console":
            for cmd in block.commands:
                code, output = _shell(cmd.text, scratch, timeout)
                if code != 0:
                    outcomes.append(Outcome(block, cmd, False, f"exit status {code}", output))
                elif cmd.shown and not output_matches(cmd.shown, output):
                    outcomes.append(Outcome(block, cmd, False, "output differs", output))
                else:
                    outcomes.append(Outcome(block, cmd, True, "", output))
        elif block.lang == "bash":
            for k, line in enumerate(block.body):
                text = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
                if not text:
                    continue
                code, output = _shell(text, scratch, timeout)
                cmd = Command(block.line + 1 + k, text)
                outcomes.append(Outcome(block, cmd, code == 0, f"exit status {code}", output))
        else:
            script = scratch / f"readme_line_{block.line}.py"
            script.write_text("\n".join(block.body) + "\n")
            code, output = _shell(f"{sys.executable} {script.name}", scratch, timeout)
            outcomes.append(Outcome(block, None, code == 0, f"exit status {code}", output))
    return outcomes


def rewrite(readme: Path, outcomes: list[Outcome]) -> int:
    """Replace each shown output with the one printed now: those that differ, and every
    one without a ``...`` (so ids and times agree within one run); returns how many
    differed."""
    lines = readme.read_text().splitlines()
    changes = [
        o
        for o in outcomes
        if o.command is not None
        and o.command.shown
        and (o.detail == "output differs" or not any("..." in x for x in o.command.shown))
    ]
    for o in sorted(changes, key=lambda o: -o.command.line):  # type: ignore[union-attr]
        cmd = o.command
        assert cmd is not None
        start = cmd.line  # 0-based index of the first shown line
        del lines[start : start + len(cmd.shown)]
        lines[start:start] = [line.rstrip() for line in o.output]
    readme.write_text("\n".join(lines) + "\n")
    return sum(o.detail == "output differs" for o in changes)


def describe(o: Outcome) -> str:
    where = f"README line {o.command.line if o.command else o.block.line}"
    what = o.command.text if o.command else f"python block at line {o.block.line}"
    shown = "\n".join(o.command.shown) if o.command else ""
    return f"{where}: {what}\n  {o.detail}\n  shown:\n{shown}\n  printed:\n" + "\n".join(
        o.output[-40:]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("readme", nargs="?", default="README.md", type=Path)
    parser.add_argument("--write", action="store_true", help="rewrite outputs that differ")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="readme-") as tmp:
        outcomes = run(args.readme.resolve(), Path(tmp))
    failed = [o for o in outcomes if not o.ok]
    if args.write:
        n = rewrite(args.readme, outcomes)
        print(f"{n} output(s) rewritten in {args.readme}")
        failed = [o for o in failed if o.detail != "output differs"]
    for o in failed:
        print(describe(o), file=sys.stderr)
    print(f"{len(outcomes)} example(s) run, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
