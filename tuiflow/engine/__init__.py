"""The engine core: the workflow model and its compiler, the expression language, the run
state machine, the stores of workflows on disk, the coordinator, the client API and
run-local's process orchestration. No terminal UI here: the engine imports no rich,
textual or typer (tests/test_boundaries.py)."""
