"""``python -m hyperslab.cli``: the ``hyperslab`` command."""

from hyperslab.cli.main import main

main()
