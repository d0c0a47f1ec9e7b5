"""`tunesmith serve` of an image-classification run over real sockets on 127.0.0.1: base64 PNGs classified as
`Run.predict` classifies them (alone and batched), every bad image a 422 naming its index and why, and texts to
an image model (or images to a text model) a 422 saying what the model takes."""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import build_tiny_bert, tiny_config, toy_rows, write_csv
from conftest import http_call as call
from image_fixtures import png_bytes, pretrain_tiny_vision, toy_images, write_folder
from PIL import Image

from tunesmith import finetune
from tunesmith.runs.run import Run
from tunesmith.serve import ServeOptions, Server


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny "pretrained" MBConv fine-tuned on shapes (full), and a tiny BERT classifier (the text model beside it)."""
    tmp = tmp_path_factory.mktemp("serve-images")
    vision = pretrain_tiny_vision(tmp / "mbconv")
    data = write_folder(tmp / "shapes", toy_images(60, seed=4))
    image_run = finetune(
        {
            "name": "shapes",
            "task": "image-classification",
            "output_dir": str(tmp / "runs"),
            "data": {"path": str(data)},
            "model": {"name": str(vision)},
            "images": {"workers": 0},
            "strategy": {"name": "full"},
            "train": {"epochs": 2, "batch_size": 16, "lr": 3e-3, "precision": "fp32", "patience": None},
            "audit": {"enabled": False},
            "eval": {"baseline": False, "robustness": False, "efficiency": False},
            "tracking": {"backend": "none"},
        }
    )
    bert = build_tiny_bert(tmp / "bert")
    text = write_csv(tmp / "toy.csv", toy_rows(120))
    text_run = finetune(tiny_config(tmp / "text", bert, text, train={"epochs": 1}))
    return {"image": image_run.path, "text": text_run.path}


@pytest.fixture(scope="module")
def pictures():
    return [png_bytes(img) for img, _ in toy_images(6, seed=9)]


def test_base64_images_are_classified_as_the_run_predicts_them(runs, pictures, tmp_path):
    log = tmp_path / "predictions.jsonl"
    want = Run(runs["image"]).predict([Image.open(io.BytesIO(p)) for p in pictures])
    opts = ServeOptions(port=0, max_wait_ms=100, log=log)
    with Server([f"I={runs['image']}"], opts, say=lambda s: None) as srv:
        status, _, listed = call(srv.url, "/v1/models")
        assert listed["data"][0]["inputs"] == "image" and listed["data"][0]["serves"] == ["classify"]
        status, _, body = call(srv.url, "/v1/classify", {"model": "I", "images": [b64(p) for p in pictures]})
        assert status == 200, body
        for got, w in zip(body["results"], want):
            assert got["label"] == w.label and got["probs"] == pytest.approx(w.probs, abs=1e-5)
        # one image, as a data URL (what a browser's FileReader writes)
        url = "data:image/png;base64," + b64(pictures[0])
        status, _, one = call(srv.url, "/v1/classify", {"model": "I", "image": url})
        assert status == 200 and one["results"][0]["probs"] == pytest.approx(want[0].probs, abs=1e-5)
        # concurrent single-image requests share forward passes and answer the same
        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(lambda p: call(srv.url, "/v1/classify", {"model": "I", "image": b64(p)}), pictures))
        assert all(s == 200 for s, _, _ in got)
        for (_, _, b), w in zip(got, want):
            assert b["results"][0]["probs"] == pytest.approx(w.probs, abs=1e-5)
        _, _, metrics = call(srv.url, "/metrics")
    count = next(float(ln.split()[-1]) for ln in metrics.splitlines() if ln.startswith("tunesmith_batch_size_count"))
    assert count < 2 + len(pictures)  # at least two of the six lone requests ran together
    first = json.loads(log.read_text().splitlines()[0])
    assert first["inputs"][0]["image_bytes"] == len(pictures[0]) and len(first["inputs"][0]["sha256"]) == 16


def test_bad_images_and_the_wrong_kind_of_input_get_a_422_naming_the_field(runs, pictures):
    truncated = pictures[1][: len(pictures[1]) // 2]
    tiny = png_bytes(np.zeros((4, 4, 3), np.uint8))
    opts = ServeOptions(port=0, max_texts=3)
    with Server([f"I={runs['image']}", f"T={runs['text']}"], opts, say=lambda s: None) as srv:
        cases = [
            ({"images": [b64(pictures[0]), b64(truncated)]}, "images[1]", "image 1 cannot be used: unreadable"),
            ({"images": [b64(b"not a picture at all")]}, "images[0]", "image 0 cannot be used: unreadable"),
            ({"image": "%%% not base64 %%%"}, "image", "not base64"),
            ({"images": [b64(tiny)]}, "images[0]", "tiny: 4x4 (images.min_size 8)"),
            ({"images": []}, "images", "'images' is empty"),
            ({"images": [b64(pictures[0])] * 4}, "images", "4 images; at most 3 per request"),
            ({"texts": ["a square"]}, "texts", "model 'I' classifies images: send 'images'"),
            ({"text": "a", "image": b64(pictures[0])}, "text", "give exactly one of"),
        ]
        for extra, field, message in cases:
            status, _, body = call(srv.url, "/v1/classify", {"model": "I", **extra})
            assert status == 422, (field, body)
            assert body["error"]["field"] == field and message in body["error"]["message"], body
        assert body["error"]["type"] == "invalid_request"
        status, _, body = call(srv.url, "/v1/classify", {"model": "T", "images": [b64(pictures[0])]})
        assert status == 422 and body["error"]["type"] == "wrong_input"
        assert body["error"]["message"] == "model 'T' classifies texts: send 'texts' or 'text', not 'images'"
        # the server is unharmed: both models still answer
        assert call(srv.url, "/v1/classify", {"model": "I", "image": b64(pictures[2])})[0] == 200
        assert call(srv.url, "/v1/classify", {"model": "T", "text": "good"})[0] == 200
        _, _, metrics = call(srv.url, "/metrics")
    assert 'tunesmith_errors_total{endpoint="/v1/classify",kind="bad_image"} 4.0' in metrics
