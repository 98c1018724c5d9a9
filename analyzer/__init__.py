"""analyzer: pure trace analysis over the span files tasks leave behind (end-to-end
breakdown, critical path, queuing delay, lineage, history). No UI, no engine imports."""
