"""Task functions used by the engine tests."""

from __future__ import annotations

import os
import time

import tuiflow


def emit(value):
    return value


def big(n: int) -> dict:
    return {"blob": "x" * n, "n": n}


def use_big() -> dict:
    data = tuiflow.get_upstream_output("big")
    return {"len": len(data["blob"])}


def with_set_output(v: int) -> None:
    tuiflow.set_output({"v": v, "task": tuiflow.task_info()["task"]})


def read_inputs() -> dict:
    return {"seen": sorted(tuiflow.upstream_outputs())}


def sleepy(seconds: float, marker: str = "") -> dict:
    if marker:
        with open(marker, "a") as f:
            f.write(
                f"{os.environ['TUIFLOW_TASK']} attempt {os.environ['TUIFLOW_ATTEMPT']} pid {os.getpid()}\n"
            )
    time.sleep(seconds)
    return {"slept": seconds}


def crash(code: int) -> None:
    os._exit(code)


def raise_error() -> None:
    raise ValueError("this task raises on purpose")


def not_json() -> object:
    return object()


def slow_first(i: int, seconds: float, marker: str) -> dict:
    """Task [0]'s first attempt sleeps `seconds` (after noting its start in `marker`);
    every other task and attempt returns at once."""
    if i == 0 and os.environ["TUIFLOW_ATTEMPT"] == "0":
        with open(marker, "a") as f:
            f.write(f"started pid {os.getpid()}\n")
        time.sleep(seconds)
    return {"i": i}


def environ(names: list[str]) -> dict:
    """The values of these variables in the task's environment (None: unset), and its pid."""
    return {"env": {n: os.environ.get(n) for n in names}, "pid": os.getpid()}
