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
    image            image-to-image: the path of the starting image (an upstream task's PNG,
                     say); the same weights run AutoPipelineForImage2Image
    strength         image-to-image: how far from the starting image to go, 0..1 (default 0.8)

Tasks of one pipeline, size, steps and guidance run as one merged call (`generate_batch`):
one pipeline call with a prompt and a seeded generator per image. A merged image is the
image made alone up to the batched kernels' rounding (at most a level or two of 255 in a
few pixels on a CPU, wherever it sits in the batch).

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
from workers.models.residency import module_bytes
from workers.models.textgen import torch_dtype

DEFAULT_STEPS = 30
DEFAULT_GUIDANCE = 7.5
DEFAULT_STRENGTH = 0.8


@dataclasses.dataclass
class LoadedPipeline:
    pipeline: Any
    device: str
    scheduler: str | None
    _image_to_image: Any = None

    def footprint(self) -> int:
        modules = [m for m in self.pipeline.components.values() if hasattr(m, "parameters")]
        return sum(module_bytes(m) for m in modules)

    def image_to_image(self) -> Any:
        """The image-to-image pipeline on the same weights (made once, no second load)."""
        if self._image_to_image is None:
            _, diffusers = _libraries()
            pipe = diffusers.AutoPipelineForImage2Image.from_pipe(self.pipeline)
            pipe.set_progress_bar_config(disable=True)
            self._image_to_image = pipe
        return self._image_to_image


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


def merge_key(spec: dict[str, Any]) -> tuple[str, ...]:
    """What tasks must share to run as one pipeline call: the pipeline (`key`) and what a
    call applies to every image (size, steps, guidance; for image-to-image, the strength)."""
    shared = tuple(str(spec.get(k)) for k in ("width", "height", "steps", "guidance"))
    i2i = ("image", str(spec.get("strength", DEFAULT_STRENGTH))) if spec.get("image") else ("text",)
    return (*key(spec), *shared, *i2i)


def generate_batch(
    loaded: LoadedPipeline, specs: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[tuple]]:
    """Make the images of every spec in one pipeline call: (each spec's output with its
    PNGs under "files", the shared timed phases). Image k of a spec comes from a CPU
    generator seeded with its seed + k, wherever it sits in the batch."""
    torch, _ = _libraries()
    first = specs[0]
    counts = [int(spec.get("num_images", 1)) for spec in specs]
    # per image: its spec and its seed (seed + k for the spec's image k)
    per_image = [
        (spec, int(spec.get("seed", 0)) + k) for spec, n in zip(specs, counts, strict=True) for k in range(n)
    ]
    steps = int(first.get("steps", DEFAULT_STEPS))
    call: dict[str, Any] = {
        "prompt": [str(spec.get("prompt", "")) for spec, _ in per_image],
        "num_inference_steps": steps,
        "guidance_scale": float(first.get("guidance", DEFAULT_GUIDANCE)),
        # one CPU generator per image: the same seed gives the same image on any device
        "generator": [torch.Generator("cpu").manual_seed(seed) for _, seed in per_image],
    }
    if not first.get("image"):  # image-to-image: the starting image's size
        call.update({k: int(first[k]) for k in ("width", "height") if first.get(k) is not None})
    if any(spec.get("negative_prompt") for spec in specs):
        call["negative_prompt"] = [str(spec.get("negative_prompt") or "") for spec, _ in per_image]
    t0 = time.time()
    pipe = loaded.pipeline
    if first.get("image"):
        pipe = loaded.image_to_image()
        opened = {path: _open_image(path) for path in {str(spec["image"]) for spec in specs}}
        call["image"] = [opened[str(spec["image"])] for spec, _ in per_image]
        call["strength"] = float(first.get("strength", DEFAULT_STRENGTH))
    images = pipe(**call).images
    t1 = time.time()
    outputs, at = [], 0
    for n in counts:
        width, height = images[at].size
        outputs.append(
            {
                "seeds": [seed for _, seed in per_image[at : at + n]],
                "width": width,
                "height": height,
                "steps": steps,
                "images_per_s": len(images) / (t1 - t0) if t1 > t0 else 0.0,
                "files": {
                    "images": [[f"image-{k}.png", _png(im)] for k, im in enumerate(images[at : at + n])]
                },
            }
        )
        at += n
    t2 = time.time()
    attributes = {
        c.ATTR_GENAI_OPERATION: "image_generation",
        c.ATTR_GENAI_MODEL: str(first["model"]),
        c.ATTR_GENAI_SEED: per_image[0][1],
        c.ATTR_IMAGES: len(images),
        c.ATTR_STEPS: steps,
    }
    phases = [
        (c.EXECUTE_SPAN, t0, t1, attributes),
        (c.POSTPROCESS_SPAN, t1, t2, {c.ATTR_IMAGES: len(images)}),
    ]
    return outputs, phases


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _open_image(path: str) -> Any:
    """The input image of an image-to-image task (a path, typically an upstream task's
    PNG), as RGB."""
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")
