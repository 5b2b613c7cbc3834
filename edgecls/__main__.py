"""`python -m edgecls <command>`: the same as the `edgecls` console script."""

import sys

from edgecls.cli.main import main

sys.exit(main())
