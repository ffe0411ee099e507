"""`python -m dashboards`: regenerate the dashboards' JSON; `--check` exits 1 when stale."""

from dashboards.build import main

raise SystemExit(main())
