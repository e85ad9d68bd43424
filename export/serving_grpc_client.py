"""TF Serving gRPC client for an exported SOLO SavedModel: images in, overlay PNG + JSON out.

    python export/serving_grpc_client.py --server localhost:8500 --model solo \\
        photo.jpg [more.jpg ...] --out results/ [--signature image_bytes|serving_default]

Needs ``tensorflow-serving-api`` (it brings TensorFlow for the tensor protos) and grpcio.
:func:`build_request` makes the ``PredictRequest``: ``image_bytes`` (default) sends the
encoded files as one (B,) string tensor; ``serving_default`` sends a (1, h, w, 3) uint8
tensor per image. Boxes come back in image pixels, masks at stride 4 of the canvas with the
letterbox to paste them back (``solo_client.instances_from_serving``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from solo_client import (SERVING_ERRORS, load_metadata, read_image, report, save_serving_results,  # noqa: E402
                         serving_parser)

MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # a batch of full-size masks is large


def build_request(model_name, signature="image_bytes", images=None, encoded=None, version=None):
    """A ``tensorflow_serving.apis.predict_pb2.PredictRequest`` for one batch.

    Args:
        model_name: the name in models.config.
        signature: ``image_bytes`` (``encoded``: list of file contents) or
            ``serving_default`` (``images``: same-size (h, w, 3) uint8 arrays).
        version: a model version to pin (default: the server's latest).
    """
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    if signature == "image_bytes":
        if not encoded:
            raise ValueError("image_bytes needs the encoded image files")
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(list(encoded), dtype=tf.string))
    elif signature == "serving_default":
        batch = np.stack([np.asarray(im, np.uint8) for im in images])
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.uint8))
    else:
        raise ValueError(f"signature must be serving_default or image_bytes, got {signature!r}")
    return request


def parse_response(response):
    """``PredictResponse`` -> dict of numpy arrays."""
    import tensorflow as tf

    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def predict(server, request, timeout=60.0):
    """Send ``request`` to ``server`` (host:port); returns the outputs as numpy arrays."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
    with grpc.insecure_channel(server, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            return parse_response(stub.Predict(request, timeout=timeout))
        except grpc.RpcError as e:
            raise RuntimeError(f"server answered {e.code().name}: {e.details()}") from None


def run(server, model_name, image_paths, out_dir, signature="image_bytes", metadata=None, timeout=60.0,
        score_thr=0.0, version=None):
    meta = load_metadata(metadata) or {}
    images = [read_image(p) for p in image_paths]
    if signature == "image_bytes":
        encoded = [Path(p).read_bytes() for p in image_paths]
        batches = [(build_request(model_name, signature, encoded=encoded, version=version), list(range(len(images))))]
    else:
        batches = [(build_request(model_name, signature, images=[im], version=version), [i])
                   for i, im in enumerate(images)]
    written = []
    for request, indices in batches:
        outputs = predict(server, request, timeout)
        written += save_serving_results(outputs, indices, images, image_paths, meta, out_dir, score_thr,
                                        extra={"server": server, "model": model_name, "signature": signature})
    return {"results": written}


def main(argv=None):
    p = serving_parser(__doc__.splitlines()[0])
    p.add_argument("--server", default="localhost:8500", help="host:port of TF Serving's gRPC port")
    p.add_argument("--model", default="solo", help="model name in models.config")
    p.add_argument("--version", type=int, help="pin a model version (default: latest)")
    args = p.parse_args(argv)
    return report("serving_grpc_client",
                  lambda: run(args.server, args.model, args.images, args.out, args.signature, args.metadata,
                              args.timeout, args.score_thr, args.version),
                  errors=SERVING_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
