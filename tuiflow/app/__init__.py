"""The Textual dashboard. Importing `tuiflow` never imports this (Textual is big)."""

from tuiflow.app.app import TuiflowApp, run_dashboard

__all__ = ["TuiflowApp", "run_dashboard"]
