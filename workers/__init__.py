"""workers: the worker daemon and its executors (shell, python, diffusers, vllm), and
tracing on the producer side. Imports `spool` and the span schema of `analyzer`, never
`tuiflow`."""
