"""Images in a classify request: base64-encoded files in JSON, decoded by the image task's own rules.

JSON carries no bytes, so each image is its file (PNG, JPEG, WebP, ...) in base64 (a `data:image/...;base64,`
prefix is accepted, as browsers write it). Each is decoded here, before any model work, with the rules the run's
data went through (`tasks/images/sources.py`): an unreadable file, more pixels than the run's images.max_pixels
(a decompression bomb is refused from its header, before its pixels are decoded), a side under images.min_size.
The first bad image is a 422 naming its index and why; nothing of the request reaches the model. The bytes of an
image are bounded by the body limit (--max-body-kb: base64 adds a third); there is no fetching of URLs, so the
server never reaches the network on a client's behalf.

Decoding runs in the event loop's thread pool (`decode_images` is blocking: PIL releases the GIL for most of it),
so a big PNG does not stall other requests; the batcher's worker then gets RGB PIL images, which the image
predictor takes as they are.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from ..tasks.images.sources import BadImage, open_image, to_rgb
from .guard import ApiError

DATA_URL = "data:"


def decode_images(items: list[str], field: str, images_cfg) -> tuple[list, list[dict]]:
    """(RGB PIL images of the base64 strings, what the prediction log keeps of each: its size and a content hash,
    not the pixels); ApiError 422 naming the first that cannot be used (`field[i]`)."""
    out, logged = [], []
    for i, text in enumerate(items):
        where = f"{field}[{i}]" if field.endswith("s") else field
        raw = b64decode(text, where)
        logged.append({"image_bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()[:16]})
        try:
            img = open_image(raw, images_cfg.max_pixels)
            if min(img.size) < images_cfg.min_size:
                raise BadImage("tiny", f"{img.width}x{img.height} (images.min_size {images_cfg.min_size})")
            out.append(to_rgb(img))
        except BadImage as bad:
            raise ApiError(422, f"image {i} cannot be used: {bad}", where, "bad_image") from None
        except Exception as err:  # noqa: BLE001 - a decoder's odd failure on a crafted file is the client's input
            raise ApiError(
                422, f"image {i} cannot be used: unreadable: {type(err).__name__}", where, "bad_image"
            ) from None
    return out, logged


def b64decode(text: str, where: str) -> bytes:
    if text.startswith(DATA_URL):
        head, sep, text = text.partition(",")
        if not sep or not head.endswith(";base64"):
            raise ApiError(422, "a data URL must be data:<type>;base64,<data>", where, "bad_image")
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise ApiError(422, f"not base64 ({err})", where, "bad_image") from None
    if not raw:
        raise ApiError(422, "an empty image", where, "bad_image")
    return raw
