"""Grafana dashboards as code: `*.dashboard.py` (grafanalib) generate the committed `json/`.

A build-time tool, run from the repository: the agent never imports it (grafanalib is only in the
`dashboards` and `test` extras). `python -m dashboards [--check]`; see `dashboards.build`.
"""
