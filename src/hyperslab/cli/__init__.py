"""The ``hyperslab`` command line: ``app.py`` holds what every command shares (options,
the error handler, progress bars); one module per command group registers its
commands: ``convert.py`` (refs, verify, sample), ``repo.py`` (init, ingest, log,
show, diff, branch, tag, fsck, gc, search), ``access.py`` (cache, stats,
export-refs), ``sync.py`` (sync, replicate), ``watch.py`` (watch); ``main.py``
assembles them.
"""

from hyperslab.cli.main import app, main

__all__ = ["app", "main"]
