"""``python -m rhizome.cli``: the ``rhizome`` command."""

import sys

from rhizome.cli import main

__all__: tuple[str, ...] = ()

sys.exit(main())
