"""Stand-ins for TF Serving in tests (its server binary cannot be installed here): a REST
server and a gRPC server on 127.0.0.1 that answer predict requests by running a SavedModel's
signatures, as TF Serving does. Used by test_export.py to execute the clients in export/.

Both follow TF Serving's contracts: REST ``POST /v1/models/<name>[/versions/<v>]:predict``
with the columnar ``{"signature_name", "inputs"}`` body (``{"b64": ...}`` for bytes) and an
``{"outputs": {...}}`` or ``{"error": ...}`` reply; gRPC ``PredictionService/Predict``.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import tensorflow as tf

_PREDICT = re.compile(r"^/v1/models/(?P<name>[^/:]+)(/versions/(?P<version>\d+))?:predict$")


def _signature_inputs(signature):
    """{input name: dtype} of a loaded signature."""
    _, kwargs = signature.structured_input_signature
    return {k: v.dtype for k, v in kwargs.items()}


def _unb64(value):
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_unb64(v) for v in value]
    return value


def _load(saved_model):
    """A SavedModel folder, or one already loaded with tf.saved_model.load."""
    return saved_model if hasattr(saved_model, "signatures") else tf.saved_model.load(str(saved_model))


class RestStub:
    """``with RestStub(saved_model, "solo") as url:`` -> ``http://127.0.0.1:PORT/v1/models/solo``."""

    def __init__(self, saved_model, model_name="solo"):
        self.loaded = _load(saved_model)
        self.model_name = model_name
        self.requests = 0

    def handle(self, path, body):
        m = _PREDICT.match(path)
        if not m or m.group("name") != self.model_name:
            return 404, {"error": f"Servable not found for request: {path}"}
        try:
            request = json.loads(body)
        except ValueError as e:
            return 400, {"error": f"JSON Parse error: {e}"}
        name = request.get("signature_name", "serving_default")
        if name not in self.loaded.signatures:
            return 400, {"error": f"Serving signature name: \"{name}\" not found in signature def"}
        signature = self.loaded.signatures[name]
        specs = _signature_inputs(signature)
        inputs = request.get("inputs")
        if not isinstance(inputs, dict) or set(inputs) != set(specs):
            return 400, {"error": f"expected inputs {sorted(specs)}"}
        try:
            feed = {k: tf.constant(_unb64(v), dtype=specs[k]) for k, v in inputs.items()}
            outputs = signature(**feed)
        except (ValueError, TypeError, tf.errors.OpError) as e:
            return 400, {"error": str(getattr(e, "message", e))}
        self.requests += 1
        return 200, {"outputs": {k: v.numpy().tolist() for k, v in outputs.items()}}

    def __enter__(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", 0))
                status, reply = stub.handle(self.path, self.rfile.read(length))
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.timeout = 30
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/models/{self.model_name}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


class GrpcStub:
    """``with GrpcStub(saved_model, "solo") as target:`` -> ``127.0.0.1:PORT``; records the
    requests it received in ``self.requests``."""

    def __init__(self, saved_model, model_name="solo"):
        self.loaded = _load(saved_model)
        self.model_name = model_name
        self.requests = []

    def __enter__(self):
        import grpc
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        stub = self

        class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request, context):  # noqa: N802 (the service's name)
                stub.requests.append(request)
                if request.model_spec.name != stub.model_name:
                    context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found: {request.model_spec.name}")
                name = request.model_spec.signature_name or "serving_default"
                if name not in stub.loaded.signatures:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"signature {name!r} not found")
                signature = stub.loaded.signatures[name]
                try:
                    feed = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
                    outputs = signature(**feed)
                except (ValueError, TypeError, tf.errors.OpError) as e:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(getattr(e, "message", e)))
                response = predict_pb2.PredictResponse()
                response.model_spec.CopyFrom(request.model_spec)
                for k, v in outputs.items():
                    response.outputs[k].CopyFrom(tf.make_tensor_proto(v.numpy()))
                return response

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                                  options=[("grpc.max_receive_message_length", 64 << 20),
                                           ("grpc.max_send_message_length", 64 << 20)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        return f"127.0.0.1:{port}"

    def __exit__(self, *exc):
        self.server.stop(grace=None).wait(timeout=10)
