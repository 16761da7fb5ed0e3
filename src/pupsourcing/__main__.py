"""``python -m pupsourcing``: the command line."""

import sys

from pupsourcing.cli import main

sys.exit(main())
