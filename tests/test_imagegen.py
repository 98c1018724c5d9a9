"""The diffusers executor on CPU, with a tiny Stable Diffusion pipeline built in code (no
model hub): real `tuiflow run-local` processes; PNGs in the attempt's directory recorded as
assets; a seed gives the same image every time; the pipeline loaded once per slot; a
prompt templated from an upstream output."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.engine import cli, write_wf

from spool import Home, layout
from tuiflow.engine.client import Client

for _module in ("torch", "diffusers", "transformers"):
    pytest.importorskip(
        _module, reason="the diffusers executor's tests need `pip install 'tuiflow[diffusers]'`"
    )


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> str:
    from support.tiny_models import tiny_sd as build

    return build(tmp_path_factory.mktemp("models") / "tiny-sd")


def _run(tmp_path: Path, text: str) -> tuple[Home, str, subprocess.CompletedProcess]:
    home = Home.open(tmp_path / "home")
    r = cli("run-local", write_wf(tmp_path, text), "--workers", 1, "--json", home=home.root, timeout=300)
    (summary,) = Client(home).store.summaries()
    return home, summary["id"], r


def _logs(home: Home, wf: str, task: str, name: str) -> list[dict]:
    directory = Client(home).attempt_dir(wf, task)
    path = Path(layout.attempt_log(directory, name))
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _task(name: str, model: str, seed: int, prompt: str = "a quiet harbour", extra: str = "") -> str:
    return (
        f"  - name: {name}\n    executor: diffusers\n"
        f"    with: {{model: {json.dumps(model)}, prompt: {json.dumps(prompt)}, steps: 2, seed: {seed}{extra}}}\n"
    )


def _pixels(data: bytes):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)), dtype=np.int16)


def test_images_are_pngs_recorded_as_assets_a_seed_repeats_its_image_alone_and_merged(tmp_path, tiny_sd):
    """a, b, c each alone (merge: false): PNGs in the attempt, asset rows, same seed same
    bytes, other seeds other images. m0..m7 of one pipeline and size: one call, one batch
    id, each its own PNGs and seeds; the image of a seed is the one made alone up to the
    batched kernels' rounding (at most 2 levels of 255), alone or twice in the batch. One
    pipeline load for all of it (one slot)."""
    from PIL import Image

    alone = ", merge: false"
    seeds = [5, 11, 12, 13, 14, 15, 16, 5]
    text = "name: images\ntasks:\n" + "".join(
        [
            _task("a", tiny_sd, 5, extra=alone),
            _task("b", tiny_sd, 5, extra=alone),
            _task("c", tiny_sd, 6, extra=", num_images: 2" + alone),
            *(_task(f"m{k}", tiny_sd, s) for k, s in enumerate(seeds)),
        ]
    )
    home, wf, r = _run(tmp_path, text)
    assert r.returncode == 0, r.stderr[-3000:]
    views = {v.name: v for v in Client(home).tasks(wf)}
    pngs = {}
    for name in ("a", "b", "c"):
        output = views[name].output
        assert output["seeds"] == ([5] if name != "c" else [6, 7])
        for path in output["images"]:
            data = Path(path).read_bytes()
            image = Image.open(io.BytesIO(data))
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (64, 64)
            assert any(low != high for low, high in image.getextrema())  # not blank
            assert Path(path).parent == Path(Client(home).attempt_dir(wf, name))
            assets = {row["path"]: row for row in _logs(home, wf, name, layout.ASSETS_FILE)}
            row = assets[str(Path(path).relative_to(home.root))]
            assert row["bytes"] == len(data) and row["sha256"] == hashlib.sha256(data).hexdigest()
            pngs.setdefault(name, []).append(data)
    assert pngs["a"] == pngs["b"]  # same seed, same image
    assert pngs["a"][0] != pngs["c"][0] and pngs["c"][0] != pngs["c"][1]  # other seeds, other images
    names = ["a", "b", "c", *(f"m{k}" for k in range(8))]
    loads = sum(s["name"] == "model load" for n in names for s in _logs(home, wf, n, layout.SPANS_FILE))
    assert loads == 1  # one slot: the pipeline stayed loaded
    generation = next(s for s in _logs(home, wf, "b", layout.SPANS_FILE) if s["name"] == "execute")
    assert generation["attributes"]["gen_ai.operation.name"] == "image_generation"
    assert generation["attributes"]["tuiflow.model.warm"] is True

    roots = [
        next(s for s in _logs(home, wf, f"m{k}", layout.SPANS_FILE) if s["name"] == "task") for k in range(8)
    ]
    assert len({root["attributes"]["tuiflow.batch.id"] for root in roots}) == 1
    assert {root["attributes"]["tuiflow.batch.size"] for root in roots} == {8}
    calls = [
        s for k in range(8) for s in _logs(home, wf, f"m{k}", layout.SPANS_FILE) if s["name"] == "execute"
    ]
    assert len(calls) == 1 and calls[0]["attributes"]["tuiflow.images"] == 8
    merged = [Path(views[f"m{k}"].output["images"][0]).read_bytes() for k in range(8)]
    assert [views[f"m{k}"].output["seeds"] for k in range(8)] == [[s] for s in seeds]
    # seed 5 twice in the batch and once alone: the same image, up to the batched kernels' rounding
    for image in (merged[7], pngs["a"][0]):
        assert abs(_pixels(merged[0]) - _pixels(image)).max() <= 2
    assert len({_pixels(m).tobytes() for m in merged[1:7]} | {_pixels(merged[0]).tobytes()}) == 7


DESCRIBE = """echo '{"scene": "boats at dawn"}' > "$TUIFLOW_OUTPUT\""""


def _after(task: str, upstream: str) -> str:
    return task.replace(
        "    executor: diffusers\n", f"    executor: diffusers\n    depends_on: [{upstream}]\n"
    )


def test_a_templated_prompt_then_image_to_image_from_its_png_on_the_loaded_weights(tmp_path, tiny_sd):
    """describe (shell) -> base (its prompt templated from describe's output) -> refine
    (image-to-image from base's PNG): one pipeline load for both images."""
    text = (
        f"name: i2i\ntasks:\n  - name: describe\n    run: {json.dumps(DESCRIBE)}\n"
        + _after(_task("base", tiny_sd, 3, prompt="watercolour of {{ inputs.describe.scene }}"), "describe")
        + _after(
            _task("refine", tiny_sd, 4, extra=", image: '{{ inputs.base.images[0] }}', strength: 0.5"), "base"
        )
    )
    home, wf, r = _run(tmp_path, text)
    assert r.returncode == 0, r.stderr[-3000:]
    views = {v.name: v for v in Client(home).tasks(wf)}
    base, refined = (Path(views[n].output["images"][0]).read_bytes() for n in ("base", "refine"))
    assert _pixels(refined).shape == (64, 64, 3) and base != refined
    loads = sum(
        s["name"] == "model load" for n in ("base", "refine") for s in _logs(home, wf, n, layout.SPANS_FILE)
    )
    assert loads == 1  # the image-to-image pipeline shares the loaded weights


@pytest.mark.parametrize(
    ("with_", "field", "message"),
    [
        ("{model: m}", "with.prompt", "needs with.prompt"),
        ("{model: m, prompt: p, width: 100}", "with.width", "multiple of 8"),
        ("{model: m, prompt: p, steps: 0}", "with.steps", "expected a whole number from 1"),
        ("{model: m, prompt: p, num_images: 1000}", "with.num_images", "from 1 to 64"),
        ("{model: m, prompt: p, scheduler: 'a b'}", "with.scheduler", "scheduler class"),
        ("{model: m, prompt: p, prompts: [x]}", "with.prompts", "unknown field of the diffusers executor"),
    ],
)
def test_what_the_executor_needs_is_checked_at_validation(tmp_path, with_, field, message):
    path = write_wf(tmp_path, f"name: v\ntasks:\n  - {{name: t, executor: diffusers, with: {with_}}}\n")
    r = subprocess.run(
        [sys.executable, "-m", "tuiflow", "validate", str(path)], capture_output=True, text=True
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert field in r.stderr and message in r.stderr, r.stderr


def test_the_example_runs_end_to_end_on_tiny_local_models(tmp_path, tiny_sd):
    from support.tiny_models import tiny_llama

    llm = tiny_llama(tmp_path / "tiny-llama")
    example = Path(__file__).resolve().parent.parent / "examples" / "dag_inference.yaml"
    home = Home.open(tmp_path / "home")
    r = cli(
        "run-local", example, "--workers", 1, "--json",
        "--set", f"llm={llm}", "--set", f"diffusion={tiny_sd}", "--set", "steps=2", "--set", "size=64",
        home=home.root, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    (summary,) = Client(home).store.summaries()
    views = {v.name: v for v in Client(home).tasks(summary["id"])}
    assert {v.state for v in views.values()} == {"completed"} and len(views) == 12
    assert len(views["image"].output["images"]) == 1
    assert [views[f"variation[{k}]"].output["seeds"] for k in range(8)] == [[100 + k] for k in range(8)]
    batches = {
        next(
            s for s in _logs(home, summary["id"], f"variation[{k}]", layout.SPANS_FILE) if s["name"] == "task"
        )["attributes"].get("tuiflow.batch.id")
        for k in range(8)
    }
    assert len(batches) == 1 and None not in batches  # the eight variations: one merged call
