"""workers: the worker daemon and its executors (shell, python, diffusers, vllm), and
tracing on the producer side. Imports `spool` and the span schema of `analyzer`, never
`tuiflow`.

The daemon, by part (each module's docstring has the details):

    worker       Worker: the loop that composes the parts below; signals, clean exits
    claims       WorkerQueues (the queues served, in turn), Claim (a claimed message)
    slots        SlotPool: slots, GPUs, tasks held for them, a bundle's unstarted tasks
    runner       AttemptRunner: one path through every executor, inline or on a slot thread
    attempt      Attempt, AttemptSetup: an attempt's directory, span, environment; its end
    outputs      an attempt's output file, and its asset and lineage rows
    outbox       Outbox: events to the coordinator, one message per flush; acks after they are published
    markers      StopMarkers: cancelled workflows, attempts past their timeout
    wakeups      Wakeups: what the loop sleeps on and what wakes it
    executors/   the Executor protocols (interface) and the shell and python executors
    wire         the typed messages between coordinator, workers and clients
"""
