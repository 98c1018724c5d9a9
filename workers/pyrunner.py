"""The python executor process: imports and calls task functions, one at a time, for as
long as it lives (so imports and loaded models stay warm between tasks).

Started by `workers.executors.python` with two pipe descriptors; reads requests and
writes replies as msgpack frames (`workers.framing`). For each task it swaps in the
task's environment, working directory, sys.path entry and stdout/stderr files, calls
``module:function(**kwargs)``, writes a non-None return value as JSON to the output file,
and puts everything back. A task that crashes or hangs takes this process down; the
worker starts a new one.

    python -m workers.pyrunner READ_FD WRITE_FD
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from typing import Any

from workers.framing import read_frame, write_frame


def _call(req: dict[str, Any]) -> dict[str, Any]:
    module_name, _, func_name = req["call"].partition(":")
    t0 = time.time()
    module = importlib.import_module(module_name)
    func = getattr(module, func_name, None)
    if not callable(func):
        raise AttributeError(f"{module_name} has no function {func_name!r}")
    t1 = time.time()
    value = func(**req["kwargs"])
    t2 = time.time()
    if value is not None:
        try:
            data = json.dumps(value)
        except (TypeError, ValueError) as e:
            raise TypeError(f"return value of {req['call']} is not JSON-serializable: {e}") from None
        with open(req["output"], "w", encoding="utf-8") as f:
            f.write(data)
    return {"ok": True, "import": [t0, t1], "execute": [t1, t2]}


def run_one(req: dict[str, Any]) -> dict[str, Any]:
    saved_env, saved_cwd, saved_path = dict(os.environ), os.getcwd(), list(sys.path)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = os.dup(1), os.dup(2)
    out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.close(out)
    os.close(err)
    try:
        os.environ.clear()
        os.environ.update(req["env"])
        os.chdir(req["cwd"])
        for entry in (req["cwd"], req["base_dir"]):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        return _call(req)
    except SystemExit as e:
        if e.code in (0, None):
            return {"ok": True}
        return {"ok": False, "error": f"the task called sys.exit({e.code!r})"}
    except BaseException as e:  # the task's own failure, whatever it is, is reported, not fatal here
        traceback.print_exc()
        return {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        os.close(saved_fds[0])
        os.close(saved_fds[1])
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        sys.path[:] = saved_path


def main() -> None:
    rfd, wfd = int(sys.argv[1]), int(sys.argv[2])
    while (req := read_frame(rfd)) is not None:
        write_frame(wfd, run_one(req))


if __name__ == "__main__":
    main()
