"""The local endpoint: SageMaker's container contract (GET /ping, POST /invocations), falcon's ASGI app on
uvicorn workers (uvloop + httptools, :mod:`mlops.serve.http`) managed by gunicorn.

Each gunicorn worker is one process with one event loop (no thread pool, so no GIL hand-offs between request
threads), loads the model once after the fork with a torch thread pool of ``threads`` threads (1 by default:
workers x threads must not exceed the cores), and runs the handlers of :mod:`inference.inference`. Requests
that the loop decodes in the same turn share one forward pass (:mod:`mlops.serve.batching`). gunicorn still
manages the processes: a worker whose loop stops answering its heartbeat for ``timeout`` seconds is replaced,
SIGTERM drains in-flight requests, the pidfile and process names are its own. Bad requests get a JSON error
with their status and never take a worker down.

A TensorFlow model (training/train_keras.py: a SavedModel and ``code/inference.py``) is served the way SageMaker's
TensorFlow Serving container serves it: each request goes through the model's own ``input_handler``, TF
Serving's REST predict body (:mod:`inference.tf_serving`, TensorFlow in the worker) and ``output_handler``, with
the same content types and errors as the PyTorch model. The predict bodies of requests that arrive together run
as one batch, as TF Serving's own batching would.

Run it with ``mlops deploy --target local`` or directly:
``python -m mlops.serve.server --model-dir DIR [--port 8080] [--workers N]``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import falcon
import falcon.asgi

from inference import inference as handlers
from mlops.serve.batching import Batcher, check_bounds

log = logging.getLogger("mlops.endpoint")
DEFAULT_PORT = 8080
DEFAULT_HOST = "127.0.0.1"
DRAIN_FACTOR = 4
DEFAULT_MAX_BATCH = 32  # images per forward pass when requests overlap (dynamic batching)
DEFAULT_MAX_DELAY_MS = 0.0  # 0: never wait for company, batch only what queued while the model was busy
READ_CHUNK = 1 << 16


def _error(resp: falcon.asgi.Response, status: int, message: str) -> None:
    resp.status = falcon.code_to_http_status(status)
    resp.content_type = falcon.MEDIA_JSON
    resp.text = json.dumps({"error": message, "status": status})


class Ping:
    def __init__(self, model: Any) -> None:
        self.body = json.dumps({"status": "healthy", "framework": model.framework})

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.text = self.body


class Invocations:
    def __init__(self, model: handlers.LoadedModel, max_body: int = handlers.MAX_BODY_BYTES,
                 batcher: Batcher | None = None) -> None:
        self.model = model
        self.max_body = max_body
        self.batcher = batcher or Batcher(model.predict_proba, 1)

    async def _drain(self, req: falcon.asgi.Request) -> None:
        """Read and drop a moderately oversized body, so the client is reading when the 413 arrives.

        Closing on unread data makes the kernel reset the connection and most clients then report a broken pipe
        instead of the 413; bodies beyond DRAIN_FACTOR x the limit are not worth reading and are cut off.
        """
        budget = DRAIN_FACTOR * self.max_body
        while budget > 0:
            chunk = await req.stream.read(min(READ_CHUNK, budget))
            if not chunk:
                return
            budget -= len(chunk)

    async def _read_body(self, req: falcon.asgi.Request) -> bytes:
        length = req.content_length
        if length is not None and length > self.max_body:  # refused from the headers, body never kept
            if length <= DRAIN_FACTOR * self.max_body:
                await self._drain(req)
            raise handlers.InferenceError(413, f"body of {length} bytes exceeds the limit of {self.max_body}")
        if length is not None:
            return await req.stream.read()
        chunks, size = [], 0  # chunked: no Content-Length, so count as it arrives
        while chunk := await req.stream.read(READ_CHUNK):
            size += len(chunk)
            if size > self.max_body:
                await self._drain(req)
                raise handlers.InferenceError(413, f"body exceeds the limit of {self.max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    errors: tuple[type[Exception], ...] = (handlers.InferenceError,)  # 4xx with status_code and message

    async def _answer(self, body: bytes, req: falcon.asgi.Request) -> tuple[str, str]:
        """(response text, content type) for a request body: input_fn -> model_input -> batch -> output_fn."""
        data = handlers.input_fn(body, req.content_type)
        pixels = handlers.model_input(data, self.model)  # the model's size, channels and layout, or a 4xx
        probs = await self.batcher.submit(pixels)
        prediction = handlers.Prediction(probs, self.model.class_names, data.single)
        return handlers.output_fn(prediction, req.get_header("Accept"))

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        try:
            text, content_type = await self._answer(await self._read_body(req), req)
        except self.errors as exc:
            log.info("%s %s -> %d %s", req.method, req.path, exc.status_code, exc.message)
            _error(resp, exc.status_code, exc.message)
            return
        resp.content_type = content_type
        resp.text = text


class TensorFlowInvocations(Invocations):
    """POST /invocations for a TensorFlow model: input_handler -> TF Serving predict -> output_handler."""

    def __init__(self, model: Any, max_body: int = handlers.MAX_BODY_BYTES, batcher: Batcher | None = None) -> None:
        super().__init__(model, max_body, batcher or Batcher(model.server_rows, 1))
        self.errors = (handlers.InferenceError, *model.errors)

    async def _predict(self, request: str) -> Any:
        """TF Serving's answer to a predict body; one-output requests join the loop's batch."""
        from inference.tf_serving import Response, TFServingError

        server = self.model.server
        try:
            form, signature, arrays = server.parse(request)
            if signature not in (None, "serving_default") or len(arrays) != 1:
                return server.predict(request)
            rows = await self.batcher.submit(next(iter(arrays.values())))
        except TFServingError as exc:
            return Response(exc.status_code, json.dumps({"error": str(exc)}).encode("utf-8"))
        return Response(200, server.format(form, {self.model.output_name: rows}))

    async def _answer(self, body: bytes, req: falcon.asgi.Request) -> tuple[str, str]:
        context = self.model.context(req.content_type, req.get_header("Accept"), len(body))
        request = self.model.handlers.input_handler(io.BytesIO(body), context)
        response = await self._predict(request)
        return self.model.handlers.output_handler(response, context)


class RefuseHugeBodies:
    """ASGI wrapper: a Content-Length beyond what is worth draining gets its 413 from the headers alone.

    falcon's ASGI app waits for the first body event before it routes a request, so without this a client that
    sends the headers of a huge upload and waits (no ``Expect: 100-continue``) would wait forever.
    """

    def __init__(self, app: falcon.asgi.App, max_body: int = handlers.MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            length = next((value for name, value in scope["headers"] if name == b"content-length"), None)
            if length is not None and length.isdigit() and int(length) > DRAIN_FACTOR * self.max_body:
                body = json.dumps({"error": f"body of {int(length)} bytes exceeds the limit of {self.max_body}",
                                   "status": 413}).encode()
                await send({"type": "http.response.start", "status": 413,
                            "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


async def _unexpected(req: falcon.asgi.Request, resp: falcon.asgi.Response, exc: Exception,
                      params: dict[str, Any]) -> None:
    """Anything the handlers did not foresee: a JSON 500, logged with its traceback; the worker carries on."""
    log.exception("unexpected error serving %s %s", req.method, req.path)
    _error(resp, 500, f"internal error: {type(exc).__name__}: {exc}")


def _serialize_http_error(req: falcon.asgi.Request, resp: falcon.asgi.Response, exc: falcon.HTTPError) -> None:
    """falcon's own errors (404, 405, bad headers) in the same JSON shape as the handlers' errors."""
    _error(resp, int(exc.status_code), exc.title + (f": {exc.description}" if exc.description else ""))


def create_app(model_dir: str | os.PathLike[str] | None = None, threads: int | None = None,
               max_batch: int | None = None, max_delay_ms: float | None = None) -> RefuseHugeBodies:
    """The ASGI app for one worker: loads the model from ``model_dir`` (default $MLOPS_MODEL_DIR).

    ``max_batch`` / ``max_delay_ms`` (default $MLOPS_MAX_BATCH / $MLOPS_MAX_DELAY_MS) bound dynamic batching
    of the worker's concurrent requests; max_batch=1 turns it off.
    """
    model_dir = str(model_dir or os.environ.get("MLOPS_MODEL_DIR") or "")
    if not model_dir:
        raise RuntimeError("no model directory: pass model_dir or set MLOPS_MODEL_DIR")
    threads = threads or int(os.environ.get("MLOPS_TORCH_THREADS", "1"))
    tensorflow = handlers.read_config(model_dir)["framework"] == "tensorflow"
    if not tensorflow:
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:  # pragma: no cover - an XGBoost-only environment
            pass
    max_batch = max_batch or int(_env_number("MLOPS_MAX_BATCH", DEFAULT_MAX_BATCH, int))
    if max_delay_ms is None:
        max_delay_ms = float(_env_number("MLOPS_MAX_DELAY_MS", DEFAULT_MAX_DELAY_MS, float))
    if tensorflow:
        from inference.tf_serving import TensorFlowModel

        model: Any = TensorFlowModel(model_dir, threads)
        invocations: Invocations = TensorFlowInvocations(
            model, batcher=Batcher(model.server_rows, max_batch, max_delay_ms / 1000.0))
    else:
        model = handlers.model_fn(model_dir)
        invocations = Invocations(model, batcher=Batcher(model.predict_proba, max_batch, max_delay_ms / 1000.0))
    app = falcon.asgi.App(media_type=falcon.MEDIA_JSON)
    app.req_options.strip_url_path_trailing_slash = True
    app.add_route("/ping", Ping(model))
    app.add_route("/invocations", invocations)
    app.add_error_handler(Exception, _unexpected)
    app.set_error_serializer(_serialize_http_error)
    return RefuseHugeBodies(app)


def _env_number(name: str, default: float, kind: type) -> float:
    """A numeric setting from the environment; a value that is not a number names the variable."""
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return kind(text)
    except ValueError:
        raise RuntimeError(f"${name}={text!r} is not {'an integer' if kind is int else 'a number'}") from None


def check_model_dir(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Fail fast in the parent process with a clear message, before forking workers that would all fail."""
    path = Path(model_dir)
    config = handlers.read_config(str(path))
    if config["framework"] == "tensorflow":
        from inference.tf_serving import saved_model_path

        saved_model_path(path)  # FileNotFoundError naming what TF Serving would miss
        return config
    weights = handlers.TORCH_WEIGHTS if config["framework"] == "pytorch" else handlers.XGBOOST_MODEL
    if not (path / weights).is_file():
        raise FileNotFoundError(f"{path / weights} not found: {config['framework']} models need {weights}")
    return config


def default_workers() -> int:
    return max(2, os.cpu_count() or 1)


def serve(model_dir: str | os.PathLike[str], host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          workers: int | None = None, threads: int = 1, timeout: int = 30, pidfile: str | None = None,
          log_level: str = "warning", access_log: str | None = None, max_batch: int = DEFAULT_MAX_BATCH,
          max_delay_ms: float = DEFAULT_MAX_DELAY_MS) -> None:
    """Run gunicorn in the foreground until SIGINT/SIGTERM (graceful: in-flight requests finish)."""
    from gunicorn.app.base import BaseApplication

    check_model_dir(model_dir)
    check_bounds(max_batch, max_delay_ms / 1000.0)  # here, before forking workers that would all fail
    model_dir = str(Path(model_dir).resolve())

    class EndpointApplication(BaseApplication):
        def load_config(self) -> None:
            settings = {
                "bind": f"{host}:{port}" if ":" not in host else f"[{host}]:{port}",
                "workers": workers or default_workers(),
                "worker_class": "mlops.serve.http.EndpointWorker",
                "timeout": timeout,
                "graceful_timeout": 10,
                "keepalive": 5,
                "backlog": 2048,
                "loglevel": log_level,
                "accesslog": access_log,
                "errorlog": "-",
                "pidfile": pidfile,
                "proc_name": f"mlops-endpoint:{port}",
            }
            for key, value in settings.items():
                if value is not None:
                    self.cfg.set(key, value)

        def load(self) -> RefuseHugeBodies:
            return create_app(model_dir, threads, max_batch, max_delay_ms)

    os.environ["OMP_NUM_THREADS"] = str(threads)  # workers inherit it: no OpenMP oversubscription
    EndpointApplication().run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="unpacked model.tar.gz (model_config.json, weights)")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--workers", type=int, default=None, help="gunicorn workers (default: cores, at least 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                        help="dynamic batching: most images per forward pass (1..1024; 1 turns it off)")
    parser.add_argument("--max-delay-ms", type=float, default=DEFAULT_MAX_DELAY_MS,
                        help="dynamic batching: how long a request may wait for others (0..50 ms; default 0)")
    parser.add_argument("--pidfile", default=None)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    try:
        serve(args.model_dir, args.host, args.port, args.workers, args.threads, pidfile=args.pidfile,
              log_level=args.log_level, max_batch=args.max_batch, max_delay_ms=args.max_delay_ms)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
