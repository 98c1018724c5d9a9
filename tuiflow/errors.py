"""The one error family: every error tuiflow raises on purpose derives from `TuiflowError`
(defined in `spool.errors`, the lowest package, so every package can use it). The command
line maps the family to exit codes in one place (`tuiflow.cli.main`).

    TuiflowError
      SpoolError            the file system substrate (`spool.errors`): storage, locks,
                            the lease, corrupt records, bad names
      WorkerError           the workers (`workers.errors`): malformed messages, bad settings
      AnalyzerError         trace analysis (`analyzer.errors`): no such trace, bad requests
      NotFound              no such workflow, task or attempt (here)
      WorkflowValidationError  an invalid workflow file (`tuiflow.engine.model`)
      ExpressionError       a condition or template that is not allowed or fails
                            (`tuiflow.engine.expr`; MissingValue under it)
      NotRetryable          a retry of tasks that did not fail (`tuiflow.engine.runstate`)
      NotInTask             a task helper called outside a task (`tuiflow.sdk.runtime`)
      SlurmError            sbatch missing or refusing a job (`tuiflow.cli.slurm`);
                            SlurmProfileError under it: a bad site profile
"""

from __future__ import annotations

from spool.errors import TuiflowError


class NotFound(TuiflowError):
    """No such workflow, task or attempt."""


__all__ = ["NotFound", "TuiflowError"]
