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


def test_images_are_pngs_in_the_attempt_recorded_as_assets_and_a_seed_repeats_its_image(tmp_path, tiny_sd):
    from PIL import Image

    alone = ", merge: false"  # each its own call: merged images are checked below
    text = "name: images\ntasks:\n" + "".join(
        [
            _task("a", tiny_sd, 5, extra=alone),
            _task("b", tiny_sd, 5, extra=alone),
            _task("c", tiny_sd, 6, extra=", num_images: 2" + alone),
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
    loads = sum(s["name"] == "model load" for n in "abc" for s in _logs(home, wf, n, layout.SPANS_FILE))
    assert loads == 1  # one slot: the pipeline stayed loaded
    generation = next(s for s in _logs(home, wf, "b", layout.SPANS_FILE) if s["name"] == "execute")
    assert generation["attributes"]["gen_ai.operation.name"] == "image_generation"
    assert generation["attributes"]["tuiflow.model.warm"] is True


def _pixels(data: bytes):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)), dtype=np.int16)


def test_merged_images_keep_their_seeds_and_match_the_images_made_alone(tmp_path, tiny_sd):
    """Eight tasks of one pipeline and size: one call, one batch id, each its own PNGs and
    seeds; the image of a seed is the one made alone, up to the batched kernels' rounding
    (at most 2 levels of 255), and the same seed twice in the batch gives the same bytes."""
    seeds = [10, 11, 12, 13, 14, 15, 16, 10]
    text = "name: merged\ntasks:\n" + "".join(_task(f"m{k}", tiny_sd, s) for k, s in enumerate(seeds))
    text += _task("alone", tiny_sd, 10, extra=", merge: false")
    home, wf, r = _run(tmp_path, text)
    assert r.returncode == 0, r.stderr[-3000:]
    views = {v.name: v for v in Client(home).tasks(wf)}
    roots = [
        next(s for s in _logs(home, wf, f"m{k}", layout.SPANS_FILE) if s["name"] == "task") for k in range(8)
    ]
    assert len({root["attributes"]["tuiflow.batch.id"] for root in roots}) == 1
    assert {root["attributes"]["tuiflow.batch.size"] for root in roots} == {8}
    calls = [
        s for k in range(8) for s in _logs(home, wf, f"m{k}", layout.SPANS_FILE) if s["name"] == "execute"
    ]
    assert len(calls) == 1 and calls[0]["attributes"]["tuiflow.images"] == 8
    pngs = [Path(views[f"m{k}"].output["images"][0]).read_bytes() for k in range(8)]
    assert [views[f"m{k}"].output["seeds"] for k in range(8)] == [[s] for s in seeds]
    assert pngs[0] == pngs[7] and len(set(pngs)) == 7  # a seed repeats its image inside the batch
    alone = Path(views["alone"].output["images"][0]).read_bytes()
    assert abs(_pixels(pngs[0]) - _pixels(alone)).max() <= 2


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
