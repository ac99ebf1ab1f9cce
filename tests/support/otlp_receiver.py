"""Real OTLP trace receivers for tests: a gRPC TraceService server and an HTTP /v1/traces endpoint, on loopback.

Both collect every ExportTraceServiceRequest they get (thread-safe), expose `.endpoint` (a URL to hand to the
exporter), `.requests`, `.headers`, `.spans()`, `wait_for_spans(n, timeout)`, and stop when their `with` block ends.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

HTTP_TRACES_PATH = "/v1/traces"


def attributes(key_values: Any) -> dict[str, Any]:
    """OTLP KeyValue list -> plain dict (str, int, float, bool; arrays as lists)."""
    return {kv.key: any_value(kv.value) for kv in key_values}


def any_value(value: AnyValue) -> Any:
    """One OTLP AnyValue -> its Python value."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


class _Collector:
    """What both receivers share: the received requests and a way to wait for spans."""

    endpoint: str

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._requests: list[ExportTraceServiceRequest] = []
        self._headers: list[dict[str, str]] = []

    def _record(self, request: ExportTraceServiceRequest, headers: dict[str, str]) -> None:
        with self._cond:
            self._requests.append(request)
            self._headers.append(headers)
            self._cond.notify_all()

    @property
    def requests(self) -> list[ExportTraceServiceRequest]:
        """Every request received so far, in arrival order."""
        with self._cond:
            return list(self._requests)

    @property
    def headers(self) -> list[dict[str, str]]:
        """The headers / gRPC metadata of each request (keys lower case)."""
        with self._cond:
            return list(self._headers)

    def spans(self) -> list[Span]:
        """Every span received so far."""
        with self._cond:
            return [
                span
                for request in self._requests
                for resource in request.resource_spans
                for scope in resource.scope_spans
                for span in scope.spans
            ]

    def span_count(self) -> int:
        """How many spans arrived."""
        return len(self.spans())

    def wait_for_spans(self, count: int, timeout: float = 10.0) -> list[Span]:
        """Waits until at least `count` spans arrived or `timeout` passed; returns the spans received."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                spans = self.spans()
                remaining = deadline - time.monotonic()
                if len(spans) >= count or remaining <= 0:
                    return spans
                self._cond.wait(remaining)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stops serving."""
        raise NotImplementedError


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: GrpcOtlpReceiver) -> None:
        self.receiver = receiver

    def Export(
        self, request: ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> ExportTraceServiceResponse:
        metadata = {key.lower(): value for key, value in context.invocation_metadata()}
        self.receiver._record(request, metadata)
        return ExportTraceServiceResponse()


class GrpcOtlpReceiver(_Collector):
    """An OTLP/gRPC TraceService on 127.0.0.1 (a free port); `endpoint` is `http://127.0.0.1:<port>`."""

    def __init__(self) -> None:
        super().__init__()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stops the server (in-flight calls get a moment to finish)."""
        self._server.stop(grace=0.5).wait(5)


class HttpOtlpReceiver(_Collector):
    """OTLP/HTTP (protobuf) on 127.0.0.1: POST /v1/traces; `endpoint` is the base URL `http://127.0.0.1:<port>`.

    `status` is the HTTP status it answers with (set it to 503 to make exports fail); failed requests are not
    recorded.
    """

    def __init__(self) -> None:
        super().__init__()
        self.status = 200
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.paths.append(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != HTTP_TRACES_PATH:
                    self._answer(404, b"")
                    return
                if receiver.status != 200:
                    self._answer(receiver.status, b"")
                    return
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                try:
                    request = ExportTraceServiceRequest.FromString(body)
                except Exception:  # noqa: BLE001 - a bad body is the client's error: answer 400
                    self._answer(400, b"")
                    return
                receiver._record(request, {key.lower(): value for key, value in self.headers.items()})
                self._answer(200, ExportTraceServiceResponse().SerializeToString())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="otlp-http-receiver", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stops the server and its thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
