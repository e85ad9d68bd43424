"""TF Serving REST client for an exported SOLO SavedModel: images in, overlay PNG + JSON out.

    python export/serving_rest_client.py --url http://localhost:8501/v1/models/solo \\
        photo.jpg [more.jpg ...] --out results/ [--signature image_bytes|serving_default]

Needs only numpy and Pillow (HTTP through the standard library). ``image_bytes`` (default)
sends the encoded files, base64 in TF Serving's ``{"b64": ...}`` form, all in one request;
``serving_default`` sends each image as a uint8 tensor (one request per image, since a
tensor batch shares one size; JSON lists are ~4x the raw pixels, so prefer image_bytes for
large images). The server letterboxes inside the graph; boxes come back in image pixels,
masks at stride 4 of the canvas with the letterbox to paste them back.
``--metadata`` points at the export's ``assets.extra/solo_export.json`` for class names.
"""

from __future__ import annotations

import base64
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from solo_client import (SERVING_ERRORS, load_metadata, read_image, report, save_serving_results,  # noqa: E402
                         serving_parser)


def predict_url(url):
    """``http://host:8501/v1/models/NAME[/versions/N]`` -> its ``:predict`` endpoint."""
    url = url.rstrip("/")
    return url if url.endswith(":predict") else url + ":predict"


def build_body(signature, images=None, encoded=None):
    """The JSON body of a predict request (columnar ``inputs`` form).

    Args:
        signature: ``serving_default`` (``images``: same-size (h, w, 3) uint8 arrays) or
            ``image_bytes`` (``encoded``: file contents).
    """
    if signature == "image_bytes":
        if not encoded:
            raise ValueError("image_bytes needs the encoded image files")
        payload = [{"b64": base64.b64encode(b).decode("ascii")} for b in encoded]
        return {"signature_name": "image_bytes", "inputs": {"image_bytes": payload}}
    if signature == "serving_default":
        batch = np.stack([np.asarray(im, np.uint8) for im in images])
        return {"signature_name": "serving_default", "inputs": {"images": batch.tolist()}}
    raise ValueError(f"signature must be serving_default or image_bytes, got {signature!r}")


def post(url, body, timeout=60.0):
    """POST ``body`` as JSON; returns the response's ``outputs`` as numpy arrays."""
    data = json.dumps(body).encode("utf-8")
    request = urllib.request.Request(predict_url(url), data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace")
        try:
            detail = json.loads(detail).get("error", detail)
        except ValueError:
            pass
        raise RuntimeError(f"server answered {e.code}: {detail}") from None
    if "error" in reply:
        raise RuntimeError(f"server error: {reply['error']}")
    outputs = reply.get("outputs")
    if not isinstance(outputs, dict):
        raise RuntimeError(f"unexpected reply (no 'outputs' mapping): {str(reply)[:200]}")
    return {k: np.asarray(v) for k, v in outputs.items()}


def run(url, image_paths, out_dir, signature="image_bytes", metadata=None, timeout=60.0, score_thr=0.0):
    meta = load_metadata(metadata) or {}
    images = [read_image(p) for p in image_paths]  # fail on a bad file before any request
    if signature == "image_bytes":
        replies = [(post(url, build_body(signature, encoded=[Path(p).read_bytes() for p in image_paths]), timeout),
                    list(range(len(images))))]
    else:
        replies = [(post(url, build_body(signature, images=[im]), timeout), [i]) for i, im in enumerate(images)]
    written = []
    for outputs, indices in replies:
        written += save_serving_results(outputs, indices, images, image_paths, meta, out_dir, score_thr,
                                        extra={"server": url, "signature": signature})
    return {"results": written}


def main(argv=None):
    p = serving_parser(__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="model URL, e.g. http://localhost:8501/v1/models/solo")
    args = p.parse_args(argv)
    return report("serving_rest_client",
                  lambda: run(args.url, args.images, args.out, args.signature, args.metadata, args.timeout,
                              args.score_thr),
                  errors=SERVING_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
