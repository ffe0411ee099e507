"""`python -m agent` is the same as the `deliverability-agent` command."""

import sys

from agent.app.cli import main

sys.exit(main())
