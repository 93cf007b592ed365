"""The web app (``uniemo serve``): its handlers on a stage-1 and a joint checkpoint, its CLI, and the page itself in a
real headless Chromium against a server started as a user would start it."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import free_port
from uniemo.checkpoint import read_meta, resolve_checkpoint
from uniemo.cli.main import build_parser, main

CHROMIUM = Path("/usr/bin/chromium")
# What a closed network needs: without the background-networking flags Chromium keeps calling Google's hosts.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000  # any single wait in the browser


def _image(synth_dir: Path) -> Path:
    return next(iter(sorted((synth_dir / "image").rglob("*.jpg"))))


def _not_an_image(directory: Path) -> Path:
    path = directory / "x.jpg"
    path.write_text("this is a text file, not a JPEG\n")
    return path


# --------------------------------------------------------------------------------------------------------------
def test_serve_without_gradio_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # importing gradio now fails as if it were not installed
    monkeypatch.delitem(sys.modules, "uniemo.app", raising=False)
    assert main(["serve", "--checkpoint", "anything"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error:")
    assert "pip install 'uniemo[app]'" in err


def test_serve_listens_on_this_machine_only_by_default():
    args = build_parser().parse_args(["serve", "--checkpoint", "ckpt"])
    assert (args.host, args.port) == ("127.0.0.1", 7860)


@pytest.fixture(scope="module")
def stage1_app(trained_run):
    pytest.importorskip("gradio", reason="the web app needs gradio: pip install 'uniemo[app]'")
    from uniemo.app import UniEmoApp

    return UniEmoApp.load(trained_run, device="cpu")


def test_build_app_on_a_stage1_checkpoint_explains_why_create_is_off(trained_run, stage1_app):
    import gradio as gr

    from uniemo.app import build_app

    demo = build_app(trained_run, device="cpu")
    assert isinstance(demo, gr.Blocks)
    texts = " ".join(str(c.get("props", {}).get("value", "")) for c in demo.config["components"])
    assert "Create is unavailable" in texts and "stage-1" in texts
    assert stage1_app.pipeline is None


def test_understand_handler_returns_probabilities_and_attention(stage1_app, synth_dir):
    scores, sentiment, figure = stage1_app.understand(str(_image(synth_dir)))
    assert list(scores) == stage1_app.classes
    assert sum(scores.values()) == pytest.approx(1.0, abs=1e-4)
    assert sentiment.startswith("**Sentiment:**") and "positive" in sentiment  # the 8 EmoSet emotions
    assert isinstance(figure, Image.Image) and figure.width > figure.height  # image, scene map, object map


def test_understand_handler_refuses_bad_uploads_with_a_clear_message(stage1_app, synth_dir, tmp_path):
    import gradio as gr

    from uniemo.app import MAX_PIXELS

    with pytest.raises(gr.Error, match="x.jpg is not an image") as caught:
        stage1_app.understand(str(_not_an_image(tmp_path)))
    assert str(tmp_path) not in caught.value.message  # the page names the file, not the server's path to it

    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(_image(synth_dir).read_bytes()[:300])
    with pytest.raises(gr.Error, match="cut.jpg .*truncated or corrupt"):
        stage1_app.understand(str(truncated))

    huge = tmp_path / "huge.png"
    Image.new("1", (8000, MAX_PIXELS // 8000 + 1)).save(huge)  # 1-bit and blank: a small file, too many pixels
    assert huge.stat().st_size < 1_000_000
    with pytest.raises(gr.Error, match="megapixels"):
        stage1_app.understand(str(huge))


def test_uploads_are_only_files_gradio_received(tmp_path):
    pytest.importorskip("gradio", reason="the web app needs gradio: pip install 'uniemo[app]'")
    import gradio as gr
    from gradio.data_classes import ImageData

    from uniemo import app
    from uniemo.app import _image_upload

    upload = _image_upload(label="Image", render=False)
    assert upload.get_block_name() == "image"
    with pytest.raises(gr.Error, match="only uploaded files"):
        upload.preprocess(ImageData(path=str(_not_an_image(tmp_path))))
    Path(upload.GRADIO_CACHE).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=upload.GRADIO_CACHE) as folder:  # where Gradio puts an upload
        inside = _not_an_image(Path(folder))
        assert upload.preprocess(ImageData(path=str(inside))) == str(inside.resolve())  # not decoded here
    with pytest.raises(gr.Error, match="upload an image file"):
        upload.preprocess(ImageData(url="data:image/png;base64,AAAA"))
    assert not Path(app.__file__).with_suffix(".pyi").exists()  # Gradio writes none beside the module


def test_create_handler_bounds_its_settings_and_mixes_emotions(joint_run):
    pytest.importorskip("gradio", reason="the web app needs gradio: pip install 'uniemo[app]'")
    import gradio as gr

    from uniemo.app import UniEmoApp

    app = UniEmoApp.load(joint_run, device="cpu")
    assert app.pipeline is not None and app.unavailable is None
    assert app.classifier.model is app.pipeline.model.understanding  # one copy of the understanding model
    zeros = [0.0] * len(app.classes)
    ok = dict(emotion=app.classes[0], weights=zeros, prompt="", reference=None, seed=0, steps=2, guidance=2.0)
    for bad, match in (({"steps": 0}, "steps"), ({"steps": 101}, "steps"), ({"num_images": 9}, "number of images")):
        with pytest.raises(gr.Error, match=match):
            app.create(**{**ok, "num_images": 1, **bad})
    mix = [0.5, 0.5] + zeros[2:]
    images = app.create(**{**ok, "weights": mix, "num_images": 2})
    assert len(images) == 2 and all(isinstance(im, Image.Image) for im, _ in images)
    assert app.classes[0] in images[0][1] and app.classes[1] in images[0][1] and "seed 1" in images[1][1]


# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(joint_run, tmp_path_factory):
    """``uniemo serve`` on a joint checkpoint in its own process, as a user starts it; always stopped."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "uniemo", "serve", "--checkpoint", str(joint_run), "--port", str(port)]
    url = f"http://127.0.0.1:{port}/"
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 600  # a hang guard, not a speed bound
        while True:
            if proc.poll() is not None:
                pytest.fail(f"uniemo serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"uniemo serve did not answer within 600 s:\n{log.read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (.ci/run installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: pip install playwright")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser, server):
    """A fresh page on the app; records every host the page asks for."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.hosts = set()
    page.on("request", lambda request: page.hosts.add(request.url.split("/")[2]))
    page.goto(server)
    try:
        yield page
    finally:
        context.close()


def test_page_understand_shows_probabilities_and_attention(page, server, synth_dir, joint_run):
    classes = read_meta(resolve_checkpoint(joint_run), "uniemo")["classes"]
    page.locator("#understand-image input[type=file]").set_input_files(str(_image(synth_dir)))
    page.locator("#understand-attention img").wait_for()
    top = page.locator('#understand-scores [data-testid="label-output-value"]').inner_text().strip()
    assert top in classes
    assert page.locator("#understand-scores meter").count() == len(classes)  # one bar per emotion
    assert "Sentiment:" in page.locator("#understand-sentiment").inner_text()
    assert page.hosts == {server.split("/")[2]}  # the page fetched nothing from anywhere else


def test_page_create_generates_downloadable_images(page, joint_run):
    classes = read_meta(resolve_checkpoint(joint_run), "uniemo")["classes"]
    page.get_by_role("tab", name="Create").click()
    page.locator("#create-emotion input").click()
    page.get_by_role("option", name=classes[1], exact=True).click()
    for slider, value in (("#create-steps", "2"), ("#create-count", "1")):
        page.locator(f"{slider} input[type=number]").fill(value)
        page.locator(f"{slider} input[type=number]").press("Enter")
    page.locator("#create-button").click()
    page.locator("#create-gallery img").first.wait_for()
    assert f"{classes[1]} · seed 0" in page.locator("#create-gallery").inner_text()
    with page.expect_download() as download:
        page.locator("#create-gallery").get_by_role("button", name="Download All").click()
    with zipfile.ZipFile(download.value.path()) as archive:
        names = archive.namelist()
        assert len(names) == 1 and names[0].endswith(".png")
        assert Image.open(io.BytesIO(archive.read(names[0]))).size == (32, 32)


def test_page_shows_a_clear_message_for_a_file_that_is_not_an_image(page, tmp_path):
    from playwright.sync_api import expect

    page.locator("#understand-image input[type=file]").set_input_files(str(_not_an_image(tmp_path)))
    toast = page.locator('[data-testid="toast-text"]').first
    expect(toast).to_be_visible()
    expect(toast).to_contain_text("x.jpg is not an image")
    assert "Traceback" not in page.content()


def test_a_burst_of_concurrent_requests_is_answered_correctly(server, synth_dir, joint_run):
    """50 classify requests from 8 clients at once, and two generation requests among them: every one is answered,
    each classification as the model answers it in-process (the queue serialises the work; nothing is dropped)."""
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file

    from uniemo.pipelines.classifier import EmotionClassifier

    images = sorted((synth_dir / "image").rglob("*.jpg"))[:50]
    reference = EmotionClassifier.from_pretrained(joint_run)
    expected = {p: pred.label for p, pred in zip(images, reference.predict(images))}

    def classify(chunk: list[Path]) -> list[tuple[Path, str]]:
        client = Client(server, verbose=False)
        return [(p, client.predict(handle_file(str(p)), api_name="/understand")[0]["label"]) for p in chunk]

    def generate(seed: int) -> int:
        client = Client(server, verbose=False)
        settings = [reference.classes[0], "", None, seed, 2, 1, 2.0] + [0.0] * len(reference.classes)
        return len(client.predict(*settings, api_name="/create"))

    # no wall-clock bound (a busy machine is not a bug): every request is answered, and answered right
    with ThreadPoolExecutor(10) as pool:
        generated = [pool.submit(generate, seed) for seed in (0, 1)]
        answers = [a for chunk in pool.map(classify, [images[i::8] for i in range(8)]) for a in chunk]
        generated = [g.result(timeout=900) for g in generated]  # a guard against a hang only
    assert len(answers) == 50 and {p for p, _ in answers} == set(images)
    assert all(label == expected[p] for p, label in answers)
    assert generated == [1, 1]
