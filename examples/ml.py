"""A toy ML pipeline for examples/ml-pipeline.yaml: deterministic numbers, no libraries."""

from __future__ import annotations

import hashlib
import json
import os
import time

import tuiflow


def _noise(*parts: object) -> float:
    digest = hashlib.sha256(json.dumps(parts).encode()).digest()
    return digest[0] / 255


def load_dataset(rows: int) -> dict:
    time.sleep(0.05)
    path = os.path.join(tuiflow.task_info()["task_dir"], "dataset.json")
    with open(path, "w") as f:
        json.dump([[i, (i * 7919) % 101] for i in range(rows)], f)
    return {"rows": rows, "path": path}


def featurize() -> dict:
    data = tuiflow.get_upstream_output("prep/load")
    time.sleep(0.05)
    return {"features": 12, "rows": data["rows"]}


def train(model: str, **hyper: object) -> dict:
    features = tuiflow.get_upstream_output("prep/featurize")
    time.sleep(0.1)
    mae = round(0.05 + 0.1 * _noise(model, hyper, features["rows"]), 4)
    print(f"trained {model} {hyper}: mae={mae}")
    return {"name": f"{model}-{'-'.join(f'{k}{v}' for k, v in sorted(hyper.items()))}", "mae": mae}


def compare() -> dict:
    outputs = tuiflow.upstream_outputs()
    best = min((o for o in outputs.values() if o), key=lambda o: o["mae"])
    return {"winner": best["name"], "mae": best["mae"]}


def best_of(models: list) -> dict:
    best = min(models, key=lambda o: o["mae"])
    return {"name": best["name"], "mae": best["mae"]}
