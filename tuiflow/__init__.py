"""tuiflow: GPU workflow DAGs on a shared filesystem.

The product package: the workflow model, the coordinator, the client API, the CLI and the
Textual dashboard, built on `spool` (the filesystem substrate), `workers` and `analyzer`.
"""

__version__ = "0.1.0"
