"""`python -m server` is the `stackmemory` command."""

import sys

from server.cli import main

sys.exit(main())
