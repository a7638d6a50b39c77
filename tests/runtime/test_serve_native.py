"""lame-serve on a native-resolution artifact: several images in one item and a video (a folder
of frames under --image-root) give the in-process Embedder's vectors; every refusal (a path out
of the root, too many frames or images, a bad data URI, a fixed-size artifact asked for more
than one image) is one 4xx naming the item, and the server keeps serving."""

from __future__ import annotations

import base64
import io
import os

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx")

from native_fixtures import FRAMES, PAGE, PHOTO, native_artifact, write_pictures, write_video  # noqa: E402,F401
from runtime_fixtures import runtime_artifact  # noqa: E402,F401  (a fixture)
from serve_fixtures import ThreadServer, data_uri  # noqa: E402

from lame_runtime import Embedder  # noqa: E402
from lame_runtime.serve.app import create_app  # noqa: E402
from lame_runtime.serve.config import ServeConfig  # noqa: E402

# Not marked `runtime`: the native artifact these tests serve is built with torch (digits_dir).
NAME = "native-test"
SAME = 0.99999


def png(array: np.ndarray) -> str:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return data_uri(out.getvalue())


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def video_part(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("native-serve")
    paths = write_pictures(base / "root")
    outside = write_pictures(base / "outside")
    long_clip = base / "root" / "long"
    long_clip.mkdir()
    for number in range(7):  # more than the server's --max-video-frames below
        (long_clip / f"{number:02d}.png").write_bytes((paths["clip"] / "00.png").read_bytes())
    (base / "root" / "empty").mkdir()
    (base / "root" / "movie.mp4").write_bytes(b"not a video at all")
    os.symlink(outside["clip"], base / "root" / "escape")
    return base / "root"


@pytest.fixture(scope="module")
def embedder(native_artifact) -> Embedder:
    return Embedder(native_artifact)


@pytest.fixture(scope="module")
def server(embedder, root):
    config = ServeConfig(
        model_name=NAME, image_root=root, max_video_frames=6, max_images_per_item=3, request_timeout_s=60
    )
    with ThreadServer(create_app(embedder, config)) as running:
        yield running


def post(server, items, **extra) -> httpx.Response:
    body = {"model": NAME, "input": items, **extra}
    return httpx.post(server.url + "/v1/embeddings", json=body, timeout=60)


def vectors(answer: httpx.Response) -> np.ndarray:
    assert answer.status_code == 200, answer.text
    return np.asarray([row["embedding"] for row in answer.json()["data"]], np.float64)


def test_two_images_in_one_item_equal_the_embedders(server, embedder, root):
    item = [{"type": "text", "text": "two pages"}, image_part(png(PHOTO)), image_part("page.png")]
    served = vectors(post(server, [item], instruction="", input_type="document"))
    want = embedder.encode(["two pages"], [[PHOTO, PAGE]])
    assert (served * want).sum(1).min() >= SAME
    # Both images count, in the order given. With random weights every row is close to every
    # other, so the check is on the components: the served row is the same computation
    # (float32 noise), and measurably not the row of the swapped or the first image alone.
    close = np.abs(served - want).max()
    for other in ([[PAGE, PHOTO]], [[PHOTO]]):
        assert np.abs(served - embedder.encode(["two pages"], other)).max() > 20 * close + 1e-6, other
    # One image per item, in every form the request schema takes.
    lone = vectors(post(server, ["photo.png", png(PAGE)], modality="image", instruction=""))
    assert (lone * embedder.encode(None, [PHOTO, PAGE])).sum(1).min() >= SAME
    # As a query: the trained instruction of an image row, as encode_queries applies it.
    query = vectors(post(server, [{"text": "two pages", "image": [png(PHOTO), "page.png"]}]))
    assert (query * embedder.encode_queries(["two pages"], [[PHOTO, PAGE]])).sum(1).min() >= SAME


def test_a_video_folder_under_the_root_equals_the_embedders(server, embedder, root):
    items = [
        [{"type": "text", "text": "a clip"}, video_part("clip")],
        {"video": str(root / "clip")},  # an absolute path inside the root is taken too
        "words only",
        [image_part("photo.png"), video_part("clip/")],
    ]
    served = vectors(post(server, items, instruction="", input_type="document"))
    clip = root / "clip"
    want = embedder.encode(
        ["a clip", None, "words only", None], [None, None, None, [PHOTO]], videos=[clip, clip, None, clip]
    )
    assert (served * want).sum(1).min() >= SAME
    usage = post(server, [{"video": "clip"}]).json()["usage"]["prompt_tokens"]
    assert usage > len(FRAMES)  # the visual tokens of the sampled frames are counted


@pytest.mark.parametrize(
    ("name", "item", "status", "code", "words"),
    [
        ("path escape", {"video": "../outside/clip"}, 403, "path_not_allowed", "outside"),
        ("symlink out of the root", {"video": "escape"}, 403, "path_not_allowed", "outside"),
        ("absolute path elsewhere", {"video": "/etc"}, 403, "path_not_allowed", "outside --image-root"),
        ("too many frames", {"video": "long"}, 400, "too_many_frames", "7 frames; at most 6"),
        ("a folder without frames", {"video": "empty"}, 400, "invalid_video", "no frame files"),
        ("missing video", {"video": "nowhere"}, 400, "file_not_found", "not found"),
        ("bad base64", [video_part("data:video/mp4;base64,@@@@")], 400, "invalid_base64", "base64"),
        ("an image as a video", [video_part(png(PHOTO))], 400, "invalid_video", "not a video"),
        ("remote video", [video_part("https://example.com/a.mp4")], 400, "remote_url_refused", "fetches"),
        ("two videos", [video_part("clip"), video_part("clip")], 400, "too_many_videos", "2 videos"),
        ("too many images", {"image": ["photo.png"] * 4}, 400, "too_many_images", "at most 3"),
    ],
)
def test_refusals_name_the_item(server, name, item, status, code, words):
    answer = post(server, ["fine", item])
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code and words in error["message"] and "input[1]" in error["message"], error
    assert "\n" not in error["message"] and "Traceback" not in answer.text
    assert str(root) not in error["message"] if name != "absolute path elsewhere" else True
    assert post(server, ["still serving"]).status_code == 200


def test_the_pixel_limit_counts_frames_as_the_model_sees_them(embedder, root):
    """The clip's 4 sampled frames hold 4 x 40 x 56 = 8,960 pixels as decoded but 4 x 64 x 80 =
    20,480 resized to the model's frame size: a limit between the two refuses it."""
    config = ServeConfig(model_name=NAME, image_root=root, max_video_pixels=10_000)
    with ThreadServer(create_app(embedder, config)) as strict:
        answer = post(strict, ["fine", {"video": "clip"}])
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["code"] == "video_too_large" and "input[1]" in error["message"]
        assert post(strict, [{"image": ["photo.png", "page.png"]}]).status_code == 200


def test_video_files_are_decoded_or_refused_clearly(server):
    """Without PyAV a video file or data URI is refused as unsupported; with it, these bytes
    are no video. Either way: one 400 naming the item."""
    garbage = "data:video/mp4;base64," + base64.b64encode(b"not a video at all").decode()
    for item in ([video_part(garbage)], {"video": "movie.mp4"}):
        answer = post(server, [item])
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["code"] in ("video_not_supported", "invalid_video") and "input[0]" in error["message"]
        assert error["code"] == "video_not_supported" or "Invalid data" in error["message"], error


def test_a_video_file_and_a_video_data_uri_equal_the_embedders(server, embedder, root, tmp_path):
    pytest.importorskip("av", reason="PyAV (the [video] extra) is not installed")
    movie = write_video(root / "four.mp4", frames=4, fps=2)  # 2 s
    sent = "data:video/mp4;base64," + base64.b64encode(movie.read_bytes()).decode()
    served = vectors(post(server, [{"video": "four.mp4"}, [video_part(sent)]], instruction=""))
    want = embedder.encode(videos=[movie, movie])
    assert (served * want).sum(1).min() >= SAME
    limited = ServeConfig(model_name=NAME, image_root=root, max_video_seconds=1.5)
    with ThreadServer(create_app(embedder, limited)) as strict:
        answer = post(strict, ["fine", {"video": "four.mp4"}])
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "video_too_long", answer.text
        assert "input[1]" in answer.json()["error"]["message"]
    limited = ServeConfig(model_name=NAME, image_root=root, max_video_frames=3)
    with ThreadServer(create_app(embedder, limited)) as strict:
        answer = post(strict, [[video_part(sent)]])
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "too_many_frames", answer.text
        assert "more than 3 frames" in answer.json()["error"]["message"]


def test_a_fixed_size_artifact_refuses_several_images_and_videos(runtime_artifact, root):
    config = ServeConfig(model_name=NAME, image_root=root)
    with ThreadServer(create_app(Embedder(runtime_artifact), config)) as fixed:
        cases = [
            ({"video": "clip"}, "video_not_supported", "native-resolution"),
            ([image_part("photo.png"), image_part("page.png")], "too_many_images", "one fixed-size image"),
        ]
        for item, code, words in cases:
            answer = post(fixed, ["fine", item])
            assert answer.status_code == 400, answer.text
            error = answer.json()["error"]
            assert error["code"] == code and words in error["message"] and "input[1]" in error["message"]
        assert post(fixed, [{"image": "photo.png"}]).status_code == 200
