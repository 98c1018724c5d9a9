"""What workflow authors import: helpers for code running inside a task (`runtime`) and the
Python builder of workflows (`builder`). Both are re-exported by `tuiflow` itself."""
