"""`python -m evals`: the same as `finmatch eval`."""

import sys

from service.cli import main

sys.exit(main(["eval", *sys.argv[1:]]))
