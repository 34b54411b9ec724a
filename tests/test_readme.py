"""The README's examples run, in order, and show what they print (issue 19, item 7).

`make readme` rewrites the outputs shown when they change (tests/readme_examples.py)."""

from __future__ import annotations

from pathlib import Path

from tests.readme_examples import describe, output_matches, parse, run

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_readme_example_runs_and_shows_what_it_prints(tmp_path: Path) -> None:
    outcomes = run(README, tmp_path)
    failed = [describe(o) for o in outcomes if not o.ok]
    assert not failed, "\n\n".join(failed)
    blocks = parse(README.read_text())
    ran = {id(o.block) for o in outcomes}
    runnable = [b for b in blocks if b.lang in ("console", "bash", "python")]
    skipped = [b for b in runnable if b.not_run is not None]
    assert all(b.not_run for b in skipped), "a block that is not run must say why"
    # a few blocks need S3 sites or a server: each says why; the rest must run
    assert len(ran) >= 10 and len(skipped) <= 8, (len(ran), [b.line for b in skipped])
    assert sum(bool(o.command and o.command.shown) for o in outcomes) >= 15  # outputs checked


def test_shown_output_must_match(tmp_path: Path) -> None:
    """The runner fails on a stale output, and understands ... and times and ids."""
    assert output_matches(["✓ wrote a.json: 3 arrays"], ["✓ wrote a.json: 3 arrays"])
    assert not output_matches(["✓ wrote a.json: 24 arrays"], ["✓ wrote a.json: 39 arrays"])
    assert not output_matches(["line 1"], ["line 1", "line 2"])  # nothing left unshown
    assert output_matches(["line 1", "..."], ["line 1", "line 2", "line 3"])
    assert output_matches(["a ... z"], ["a b c z"])
    assert output_matches(["committed 16ccee95960e in 0.31 s"], ["committed 0badc0ffee42 in 12 ms"])
    assert output_matches(["at 2026-01-15T09:14:00.000+00:00"], ["at 2026-12-06T16:52:04.423Z"])
    readme = tmp_path / "README.md"
    readme.write_text(
        "<!-- readme: not run (needs S3) -->\n```console\n$ exit 3\n```\n\n"
        "```console\n$ echo hello\nhullo\n$ echo ok\n```\n"
    )
    outcomes = run(readme, tmp_path)
    assert [(o.command.text if o.command else "", o.ok) for o in outcomes] == [
        ("echo hello", False),
        ("echo ok", True),
    ]
    assert outcomes[0].detail == "output differs" and outcomes[0].output == ["hello"]
