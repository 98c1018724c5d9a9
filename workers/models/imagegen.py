"""Images with diffusers (``AutoPipelineForText2Image``).

What a task's ``with`` holds (checked at validation, `tuiflow.engine.modelspec`)::

    model            a local pipeline directory or a hub id          (required)
    prompt           the text (templated from upstream outputs like any value)
    negative_prompt  what the image should not show
    steps            denoising steps (default 30)
    guidance         classifier-free guidance scale (default 7.5)
    seed             image k is made from a CPU generator seeded with seed + k (default 0),
                     so a seed gives the same image whichever other images are made with it
    width, height    pixels, multiples of 8 (default: the pipeline's own)
    num_images       images for the prompt (default 1)
    dtype            auto (fp16/bf16 on CUDA, fp32 on CPU), float32, float16, bfloat16
    scheduler        a diffusers scheduler class, made from the pipeline's scheduler config

The images come back as PNG files (``image-<k>.png`` in the attempt's directory, written
and recorded as assets by the worker); the output is ``{images: [paths], seeds, width,
height, steps, images_per_s}``.
"""

from __future__ import annotations

import dataclasses
import io
import time
import warnings
from typing import Any

from analyzer import contract as c
from workers.models.libraries import require
from workers.models.textgen import torch_dtype

DEFAULT_STEPS = 30
DEFAULT_GUIDANCE = 7.5


@dataclasses.dataclass
class LoadedPipeline:
    pipeline: Any
    device: str
    scheduler: str | None


def key(spec: dict[str, Any]) -> tuple[str, ...]:
    """What two tasks must share to share a loaded pipeline."""
    return ("diffusers", str(spec["model"]), str(spec.get("dtype", "auto")), str(spec.get("scheduler") or ""))


def _libraries() -> list[Any]:
    return require("diffusers", "torch", "diffusers")


def load(spec: dict[str, Any]) -> LoadedPipeline:
    torch, diffusers = _libraries()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # diffusers 0.42 renames torch_dtype to dtype (warning of the old name); older ones know only it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        pipe = diffusers.AutoPipelineForText2Image.from_pretrained(
            spec["model"], torch_dtype=torch_dtype(torch, spec.get("dtype", "auto"), device)
        )
    name = spec.get("scheduler")
    if name:
        scheduler = getattr(diffusers, name, None)
        if scheduler is None or not hasattr(scheduler, "from_config"):
            raise ValueError(f"diffusers has no scheduler {name!r}")
        pipe.scheduler = scheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe.to(device), device, name)


def generate(
    loaded: LoadedPipeline, spec: dict[str, Any]
) -> tuple[dict[str, Any], list[tuple[str, float, float, dict]]]:
    """Make the images of `spec`: (output with the PNGs under "files", timed phases)."""
    torch, _ = _libraries()
    pipe = loaded.pipeline
    n = int(spec.get("num_images", 1))
    seed = int(spec.get("seed", 0))
    steps = int(spec.get("steps", DEFAULT_STEPS))
    # one CPU generator per image: the same seed gives the same image on any device
    generators = [torch.Generator("cpu").manual_seed(seed + k) for k in range(n)]
    extra = {k: int(spec[k]) for k in ("width", "height") if spec.get(k) is not None}
    t0 = time.time()
    result = pipe(
        prompt=str(spec.get("prompt", "")),
        negative_prompt=spec.get("negative_prompt"),
        num_inference_steps=steps,
        guidance_scale=float(spec.get("guidance", DEFAULT_GUIDANCE)),
        num_images_per_prompt=n,
        generator=generators,
        **extra,
    )
    t1 = time.time()
    files = []
    for k, image in enumerate(result.images):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        files.append([f"image-{k}.png", buffer.getvalue()])
    t2 = time.time()
    width, height = result.images[0].size
    output = {
        "seeds": [seed + k for k in range(n)],
        "width": width,
        "height": height,
        "steps": steps,
        "images_per_s": n / (t1 - t0) if t1 > t0 else 0.0,
        "files": {"images": files},
    }
    attributes = {
        c.ATTR_GENAI_OPERATION: "image_generation",
        c.ATTR_GENAI_MODEL: str(spec["model"]),
        c.ATTR_GENAI_SEED: seed,
        "tuiflow.images": n,
        "tuiflow.steps": steps,
    }
    phases = [(c.EXECUTE_SPAN, t0, t1, attributes), (c.POSTPROCESS_SPAN, t1, t2, {"tuiflow.images": n})]
    return output, phases
