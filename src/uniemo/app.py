"""The web app (``uniemo serve``): read the emotion of an image, and create emotion-evoking images.

Two tabs over one checkpoint, loaded once at start-up:

- **Understand**: an uploaded image's emotion probabilities (bars; a sentiment line for EmoSet's eight emotions)
  and where the scene and object queries look (paper Fig. 9).
- **Create** (joint checkpoints only): images for an emotion, a weighted mix of emotions, or a reference image's
  feeling, optionally on a content prompt.

Safety: the server binds to 127.0.0.1 unless told otherwise; uploads are bounded in bytes (Gradio's
``max_file_size``) and pixels (checked from the header, before decoding); only files Gradio itself received
are read (never a path the client names); every request waits in a queue (one generation at a time); a bad
upload is a message in the page, not a traceback; Gradio's analytics and version check are off.

Example:
    >>> from uniemo.app import build_app
    >>> demo = build_app("runs/joint")     # a gr.Blocks; demo.launch() serves it
"""

from __future__ import annotations

import functools
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Before gradio is imported: no telemetry and no version check (they would also stall in a closed network).
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402

from uniemo.checkpoint import is_hub_id, read_meta, resolve_checkpoint  # noqa: E402
from uniemo.data.images import draft_size, load_image  # noqa: E402
from uniemo.errors import DataError, UniEmoError  # noqa: E402
from uniemo.pipelines.classifier import JOINT_KIND, KIND, EmotionClassifier  # noqa: E402
from uniemo.runtime import default_device  # noqa: E402

log = logging.getLogger(__name__)

#: Largest upload Gradio accepts (bytes); larger ones are refused before they reach a handler.
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
#: Largest image (width × height) the app decodes; checked from the file's header first.
MAX_PIXELS = 40_000_000
#: Bounds of the Create tab's settings (also enforced on the server: API clients bypass the sliders).
MAX_STEPS = 100
MAX_IMAGES = 8
MAX_GUIDANCE = 20.0
MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 500
#: Requests waiting beyond this many are refused ("queue is full") instead of piling up.
MAX_QUEUE = 16
#: Uploaded and generated files older than this many seconds are deleted (checked as often).
CACHE_SECONDS = 3600


def _image_upload(**kwargs: Any) -> gr.Image:
    """A ``gr.Image`` upload whose handler gets the uploaded file's path, not yet decoded: ``gr.Image`` itself opens
    the file with Pillow first, so a bad file would fail with Pillow's message instead of ours. (An instance
    attribute, not a subclass: Gradio writes a ``.pyi`` stub beside the module of every Component subclass.)"""
    upload = gr.Image(type="filepath", sources=["upload"], buttons=["fullscreen"], **kwargs)
    upload.preprocess = functools.partial(_uploaded_path, upload.GRADIO_CACHE)
    return upload


def _uploaded_path(upload_folder: str, payload: Any) -> str | None:
    """The path of a file Gradio received as an upload; gr.Error for anything else (a URL, a path elsewhere)."""
    if payload is None:
        return None
    if not getattr(payload, "path", None):
        raise gr.Error("upload an image file", print_exception=False)
    path = Path(payload.path).resolve()
    if not path.is_relative_to(Path(upload_folder).resolve()):  # Gradio refuses these too; this keeps it so
        raise gr.Error("only uploaded files are accepted", print_exception=False)
    return str(path)


def read_image(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """An uploaded image file as RGB (a JPEG decoded at reduced scale when ``draft_size`` allows: see
    :func:`~uniemo.data.images.load_image`).

    Raises:
        gr.Error: the file is too large, has more than :data:`MAX_PIXELS` pixels, is not an image, or is corrupt
            (the message names the file, not the server's path to it).
    """
    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
    except OSError:
        raise gr.Error(f"{name} is no longer on the server; upload it again", print_exception=False) from None
    if size > MAX_UPLOAD_BYTES:
        limit = MAX_UPLOAD_BYTES // 2**20
        raise gr.Error(f"{name} is {size / 2**20:.1f} MB; the app takes at most {limit} MB", print_exception=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as probe:  # reads the header only
                pixels = probe.width * probe.height
                shape = f"{probe.width}×{probe.height} pixels"
    except Image.DecompressionBombError:  # Pillow's own guard, at twice its limit
        pixels, shape = MAX_PIXELS + 1, "larger than Pillow's decompression-bomb limit"
    except Exception:  # not an image, or a broken header: load_image below says which
        pixels, shape = 0, ""
    if pixels > MAX_PIXELS:
        raise gr.Error(
            f"{name} is {shape}; the app takes at most {MAX_PIXELS / 1e6:.0f} megapixels: downscale it first",
            print_exception=False,
        )
    try:
        return load_image(path, draft_size)
    except DataError as err:
        raise gr.Error(str(err).replace(str(path), name), print_exception=False) from None


def _number(value: Any, name: str, low: float, high: float, integer: bool = True) -> float:
    """``value`` checked to lie in [low, high] (and be whole when ``integer``); gr.Error otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not low <= number <= high or (integer and number != int(number)):
        kind = "a whole number" if integer else "a number"
        raise gr.Error(f"{name} must be {kind} from {low:g} to {high:g}, got {value!r}", print_exception=False)
    return number


@dataclass
class UniEmoApp:
    """The models behind the web app and its request handlers (loaded once, shared by all requests).

    Attributes:
        classifier: the understanding model (for a joint checkpoint, the pipeline's own, not a second copy).
        pipeline: the generation pipeline, or None when the checkpoint cannot generate.
        unavailable: why Create is unavailable (None when it is available).
        name: the checkpoint's directory name (shown in the page).
    """

    classifier: EmotionClassifier
    pipeline: Any | None
    unavailable: str | None
    name: str

    @classmethod
    def load(cls, checkpoint: str | Path, device: str | None = None, revision: str | None = None) -> UniEmoApp:
        """Loads a joint checkpoint (both tabs) or a stage-1 checkpoint (Understand only): a directory or a hub id
        (``owner/name`` at ``revision``).

        Raises:
            CheckpointError: no uniemo checkpoint there.
        """
        name = str(checkpoint) if is_hub_id(checkpoint) else Path(checkpoint).resolve().name
        directory = resolve_checkpoint(checkpoint, revision)
        kind = read_meta(directory, (KIND, JOINT_KIND))["kind"]
        device = default_device(device)
        if kind != JOINT_KIND:
            reason = (
                f"`{name}` is a stage-1 (understanding) checkpoint; creating images needs a joint checkpoint "
                "(`uniemo train joint`)."
            )
            return cls(EmotionClassifier.from_pretrained(directory, device), None, reason, name)
        import diffusers.utils.logging

        from uniemo.pipelines.generation import UniEmoPipeline

        diffusers.utils.logging.disable_progress_bar()
        try:  # float16 on a GPU, float32 on the CPU
            pipe = UniEmoPipeline.from_pretrained(directory, device=device, dtype=None)
        except (UniEmoError, OSError) as err:  # e.g. its diffusion model is not on this machine: still understand
            log.warning("Create is unavailable: %s", err)
            reason = f"the generation model could not be loaded: {err}"
            return cls(EmotionClassifier.from_pretrained(directory, device), None, reason, name)
        meta = pipe.meta  # the classifier shares the pipeline's understanding model instead of loading it again
        vocabs = meta.get("scene_vocab", []), meta.get("object_vocab", [])
        return cls(EmotionClassifier(pipe.model.understanding, pipe.classes, *vocabs, meta), pipe, None, name)

    @property
    def classes(self) -> list[str]:
        return self.classifier.classes

    @property
    def has_attention(self) -> bool:
        return self.classifier.model.query_mode != "none"

    # ----------------------------------------------------------------------------------------------------------
    def understand(self, path: str | Path | None) -> tuple[dict[str, float] | None, str, Image.Image | None]:
        """One uploaded image → ({emotion: probability}, a sentiment line (Markdown), the attention figure).

        Raises:
            gr.Error: the file cannot be read as an image.
        """
        if path is None:
            return None, "", None
        from uniemo.visualize import attention_maps, save_attention_figure

        image = read_image(path, draft_size=draft_size(self.classifier.transform.image_size))  # as classify decodes
        probs = self.classifier.probabilities([image])[0]
        scores = {name: float(p) for name, p in zip(self.classes, probs.tolist())}
        prediction = self.classifier.to_prediction(probs)
        line = ""
        if prediction.sentiment:
            line = " · ".join(f"{mood} {p:.0%}" for mood, p in prediction.sentiment.items())
            line = f"**Sentiment:** {line}"
        figure = None
        if self.has_attention:
            maps = attention_maps(self.classifier, image)
            with tempfile.TemporaryDirectory() as tmp:
                figure_path = save_attention_figure(maps, Path(tmp) / "attention.png", title=Path(path).name)
                with Image.open(figure_path) as opened:
                    figure = opened.convert("RGB")
        return scores, line, figure

    def create(
        self,
        emotion: str | None,
        weights: Sequence[float],
        prompt: str | None,
        reference: str | Path | None,
        seed: Any,
        steps: Any,
        num_images: Any,
        guidance: Any,
    ) -> list[tuple[Image.Image, str]]:
        """Generates images: for ``reference``'s feeling when given, else the mix of ``weights`` (one per class)
        when any is > 0, else ``emotion``. Returns (image, caption) pairs for a gallery.

        Raises:
            gr.Error: Create is unavailable, a setting is out of bounds, or the request is invalid.
        """
        if self.pipeline is None:
            raise gr.Error(f"Create is unavailable: {self.unavailable}", print_exception=False)
        seed = int(_number(seed, "seed", 0, MAX_SEED))
        steps = int(_number(steps, "steps", 1, MAX_STEPS))
        num_images = int(_number(num_images, "number of images", 1, MAX_IMAGES))
        guidance = _number(guidance, "guidance", 0, MAX_GUIDANCE, integer=False)
        prompt = (prompt or "").strip() or None
        if prompt and len(prompt) > MAX_PROMPT_CHARS:
            raise gr.Error(f"the prompt is longer than {MAX_PROMPT_CHARS} characters", print_exception=False)
        if len(weights) != len(self.classes):
            raise gr.Error(f"give one weight per emotion ({len(self.classes)})", print_exception=False)
        mix = {n: _number(w, f"the weight of {n}", 0, 1, integer=False) for n, w in zip(self.classes, weights)}
        mix = {name: w for name, w in mix.items() if w > 0}
        settings = {"prompt": prompt, "num_images": num_images, "steps": steps, "guidance": guidance, "seed": seed}
        if reference is not None:
            draft = draft_size(self.classifier.transform.image_size)
            condition: dict[str, Any] = {"reference": read_image(reference, draft)}
        elif mix:
            condition = {"emotion": mix}
        elif emotion:
            condition = {"emotion": emotion}
        else:
            raise gr.Error("choose an emotion, set a mix, or upload a reference image", print_exception=False)
        started = time.perf_counter()
        try:
            output = self.pipeline(**condition, **settings)
        except UniEmoError as err:
            raise gr.Error(str(err), print_exception=False) from None
        log.info("created %d image(s) in %.1f s", num_images, time.perf_counter() - started)
        if reference is not None:
            label = f"reference (reads as {output.settings.read})"
        else:
            label = " + ".join(f"{n} {w:.2f}" for n, w in output.settings.emotions.items())
            label = label if len(output.settings.emotions) > 1 else next(iter(output.settings.emotions))
        return [(image, f"{label} · seed {seed + i}") for i, image in enumerate(output.images)]

    # ----------------------------------------------------------------------------------------------------------
    def blocks(self) -> gr.Blocks:
        """The page: an Understand tab and a Create tab, with the queue set up (one generation at a time)."""
        create_note = "" if self.pipeline is not None else " (Understand only)"
        with gr.Blocks(title="UniEmo", analytics_enabled=False, delete_cache=(CACHE_SECONDS, CACHE_SECONDS)) as demo:
            gr.Markdown(
                f"# UniEmo\nCheckpoint `{self.name}`: {len(self.classes)} emotions ({', '.join(self.classes)})"
                f"{create_note}."
            )
            with gr.Tab("Understand", id="understand"):
                self._understand_tab()
            with gr.Tab("Create", id="create"):
                if self.pipeline is None:
                    gr.Markdown(f"**Create is unavailable:** {self.unavailable}", elem_id="create-unavailable")
                else:
                    self._create_tab()
        demo.queue(default_concurrency_limit=1, max_size=MAX_QUEUE)
        return demo

    def _understand_tab(self) -> None:
        with gr.Row():
            with gr.Column():
                upload = _image_upload(
                    label="Image",
                    height=320,
                    elem_id="understand-image",
                    placeholder=f"an image file, at most {MAX_UPLOAD_BYTES // 2**20} MB and "
                    f"{MAX_PIXELS / 1e6:.0f} megapixels",
                )
            with gr.Column():
                scores = gr.Label(num_top_classes=len(self.classes), label="Emotion", elem_id="understand-scores")
                sentiment = gr.Markdown(elem_id="understand-sentiment")
        attention = gr.Image(
            label="Where the scene and object queries look",
            type="pil",
            format="png",
            interactive=False,
            buttons=["download", "fullscreen"],  # no "share": it would upload to the Hugging Face Hub
            visible=self.has_attention,
            elem_id="understand-attention",
        )
        if not self.has_attention:
            gr.Markdown("This model has no expert queries (`query_mode: none`), so it has no attention maps.")
        upload.upload(self.understand, inputs=upload, outputs=[scores, sentiment, attention], concurrency_id="read")
        upload.clear(lambda: (None, "", None), outputs=[scores, sentiment, attention], queue=False)

    def _create_tab(self) -> None:
        with gr.Row():
            with gr.Column():
                emotion = gr.Dropdown(self.classes, value=self.classes[0], label="Emotion", elem_id="create-emotion")
                with gr.Accordion("Mix emotions (a mix wins when any weight is above 0)", open=False):
                    weights = [
                        gr.Slider(0, 1, value=0, step=0.05, label=name, elem_id=f"create-weight-{name}")
                        for name in self.classes
                    ]
                prompt = gr.Textbox(
                    label="Content (optional)",
                    placeholder="e.g. a bench",
                    max_length=MAX_PROMPT_CHARS,
                    elem_id="create-prompt",
                )
                reference = _image_upload(
                    label="Reference image (optional: its own feeling replaces the emotion)",
                    height=200,
                    elem_id="create-reference",
                )
                # the checkpoint's own sampling defaults (measured best for it), as `uniemo generate` uses them
                defaults = self.pipeline.sampling_defaults
                with gr.Row():
                    seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED, elem_id="create-seed")
                    steps = gr.Slider(
                        1, MAX_STEPS, value=defaults["steps"], step=1, label="Steps", elem_id="create-steps"
                    )
                with gr.Row():
                    count = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Images", elem_id="create-count")
                    guidance = gr.Slider(
                        0,
                        MAX_GUIDANCE,
                        value=defaults["guidance"],
                        step=0.5,
                        label="Guidance",
                        elem_id="create-guidance",
                    )
                button = gr.Button("Create", variant="primary", elem_id="create-button")
            with gr.Column():
                gallery = gr.Gallery(
                    label="Created images",
                    format="png",
                    columns=2,
                    buttons=["download", "download_all", "fullscreen"],
                    interactive=False,
                    elem_id="create-gallery",
                )

        def create(emotion, prompt, reference, seed, steps, count, guidance, *weights):
            return self.create(emotion, weights, prompt, reference, seed, steps, count, guidance)

        button.click(
            create,
            inputs=[emotion, prompt, reference, seed, steps, count, guidance, *weights],
            outputs=gallery,
            concurrency_limit=1,
            concurrency_id="generate",
        )


def build_app(checkpoint: str | Path, device: str | None = None, revision: str | None = None) -> gr.Blocks:
    """Loads ``checkpoint`` (a directory or a hub id at ``revision``) once and returns the web app (a queued
    ``gr.Blocks``; ``launch`` serves it).

    Raises:
        CheckpointError: no uniemo checkpoint there.
    """
    started = time.perf_counter()
    app = UniEmoApp.load(checkpoint, device, revision)
    log.info(
        "loaded %s in %.1f s: Understand%s",
        app.name,
        time.perf_counter() - started,
        " and Create" if app.pipeline is not None else f" only ({app.unavailable})",
    )
    return app.blocks()


def serve(
    checkpoint: str | Path,
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str | None = None,
    revision: str | None = None,
) -> None:
    """Serves the app of ``checkpoint`` (a directory or a hub id at ``revision``) until interrupted
    (``uniemo serve``).

    Raises:
        CheckpointError: no uniemo checkpoint there.
        UniEmoError: the port cannot be bound.
    """
    demo = build_app(checkpoint, device, revision)
    try:
        demo.launch(
            server_name=host,
            server_port=port,
            max_file_size=MAX_UPLOAD_BYTES,
            share=False,
            inbrowser=False,
            show_error=False,  # unexpected errors stay in the server log; gr.Error messages are shown
            quiet=True,
            prevent_thread_lock=True,
            enable_monitoring=False,
            mcp_server=False,
            ssr_mode=False,
            pwa=False,
            run_history=False,
            footer_links=["api", "settings"],
        )
    except OSError as err:
        raise UniEmoError(f"cannot serve on {host}:{port} ({err}); choose another --port") from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: anyone who can reach this machine can use the app (it has no login)", host)
    log.info("UniEmo app on http://%s:%d (Ctrl+C stops it)", host, port)
    demo.block_thread()
