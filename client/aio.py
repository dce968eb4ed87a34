"""The asyncio client: :class:`AsyncFitClient`, the same surface as :class:`FitClient` with ``await``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from fitguard import contract

from . import retry
from .base import ClientBase
from .errors import BadImage, ModelNotReady
from .images import ImageInput, source_name, to_bytes
from .sdk import Result, _progress
from .signature import ModelInfo, check_signature, label_request
from .transport import (
    Connection,
    _model_version,
    config_from_grpc,
    grpc_client_options,
    image_tensor,
    labelled,
    map_error,
    metadata_from_grpc,
    output_names,
)
from .verdict import Failure, Verdict, verdicts_from_outputs


class AsyncTransport(Protocol):
    async def model_ready(self, model: str) -> bool: ...
    async def model_metadata(self, model: str) -> dict[str, Any]: ...
    async def model_config(self, model: str) -> dict[str, Any]: ...
    async def models(self) -> list[str]: ...
    async def infer(
        self, model: str, payloads: list[bytes], class_count: int = 0
    ) -> tuple[dict[str, np.ndarray], str]: ...
    async def close(self) -> None: ...


class _AsyncBase:
    """Shared by both asyncio transports: error mapping and the client-side timeout."""

    conn: Connection
    _client: Any

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.wait_for(fn(*args, **kwargs), self.conn.timeout)
        except Exception as exc:
            raise map_error(exc, self.conn, what) from exc

    async def close(self) -> None:
        await self._client.close()


class AsyncGrpcTransport(_AsyncBase):
    def __init__(self, conn: Connection) -> None:
        import tritonclient.grpc.aio as grpcclient

        self._grpc = grpcclient
        self.conn = conn
        self._client = grpcclient.InferenceServerClient(conn.url, **grpc_client_options(conn))
        self._kw: dict[str, Any] = {"headers": dict(conn.headers) or None, "client_timeout": conn.timeout}

    async def model_ready(self, model: str) -> bool:
        return bool(await self._call("model ready", self._client.is_model_ready, model, **self._kw))

    async def model_metadata(self, model: str) -> dict[str, Any]:
        meta = await self._call(
            "model metadata", self._client.get_model_metadata, model, as_json=True, **self._kw
        )
        return metadata_from_grpc(meta)

    async def model_config(self, model: str) -> dict[str, Any]:
        cfg = await self._call("model config", self._client.get_model_config, model, as_json=True, **self._kw)
        return config_from_grpc(cfg)

    async def models(self) -> list[str]:
        index = await self._call(
            "repository index", self._client.get_model_repository_index, as_json=True, **self._kw
        )
        return sorted(m["name"] for m in index.get("models", []) if m.get("state") == "READY")

    async def infer(
        self, model: str, payloads: list[bytes], class_count: int = 0
    ) -> tuple[dict[str, np.ndarray], str]:
        inp = self._grpc.InferInput(contract.IMAGE, [len(payloads), 1], "BYTES")
        inp.set_data_from_numpy(image_tensor(payloads))
        names = output_names(class_count)
        outputs = [self._grpc.InferRequestedOutput(n, **labelled(n, class_count)) for n in names]
        result = await self._call("infer", self._client.infer, model, [inp], outputs=outputs, **self._kw)
        return {n: result.as_numpy(n) for n in names}, _model_version(result.get_response())


class AsyncHttpTransport(_AsyncBase):
    """aiohttp-based; binary tensor extension for inputs and outputs."""

    def __init__(self, conn: Connection, conn_limit: int = 100) -> None:
        import tritonclient.http.aio as httpclient

        self._http = httpclient
        self.conn = conn
        self._client = httpclient.InferenceServerClient(
            conn.url,
            conn_limit=conn_limit,
            conn_timeout=conn.timeout,
            ssl=conn.ssl,
            ssl_context=conn.http_ssl_context(),
        )
        self._kw: dict[str, Any] = {"headers": dict(conn.headers) or None}

    async def model_ready(self, model: str) -> bool:
        return bool(await self._call("model ready", self._client.is_model_ready, model, **self._kw))

    async def model_metadata(self, model: str) -> dict[str, Any]:
        return await self._call("model metadata", self._client.get_model_metadata, model, **self._kw)

    async def model_config(self, model: str) -> dict[str, Any]:
        return await self._call("model config", self._client.get_model_config, model, **self._kw)

    async def models(self) -> list[str]:
        index = await self._call("repository index", self._client.get_model_repository_index, **self._kw)
        return sorted(m["name"] for m in index if m.get("state") == "READY")

    async def infer(
        self, model: str, payloads: list[bytes], class_count: int = 0
    ) -> tuple[dict[str, np.ndarray], str]:
        inp = self._http.InferInput(contract.IMAGE, [len(payloads), 1], "BYTES")
        inp.set_data_from_numpy(image_tensor(payloads), binary_data=True)
        names = output_names(class_count)
        outputs = [
            self._http.InferRequestedOutput(n, binary_data=True, **labelled(n, class_count)) for n in names
        ]
        result = await self._call("infer", self._client.infer, model, [inp], outputs=outputs, **self._kw)
        return {n: result.as_numpy(n) for n in names}, _model_version(result.get_response())


def open_async_transport(conn: Connection) -> AsyncTransport:
    return AsyncGrpcTransport(conn) if conn.protocol == "grpc" else AsyncHttpTransport(conn)


async def _to_bytes(image: ImageInput) -> bytes:
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    # Reading files and PNG-encoding arrays block; keep the event loop free.
    return await asyncio.to_thread(to_bytes, image)


class AsyncFitClient(ClientBase[AsyncTransport]):
    """asyncio twin of :class:`~fitguard.client.FitClient` (same arguments, same results).

    >>> async with AsyncFitClient("localhost:8001") as client:   # doctest: +SKIP
    ...     verdict = await client.classify("cat.jpg")

    One connection multiplexes every concurrent request (gRPC channel or aiohttp pool).
    """

    def _open_transports(self, factory: Callable[[Connection], AsyncTransport] | None) -> None:
        self._factory = factory or open_async_transport
        self._transport: AsyncTransport | None = None
        self._info: ModelInfo | None = None
        self._lock: asyncio.Lock | None = None
        self._closed = False

    async def __aenter__(self) -> AsyncFitClient:
        try:
            await self.connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        if self._transport is not None:
            transport, self._transport = self._transport, None
            await transport.close()

    def _get_transport(self) -> AsyncTransport:
        if self._closed:
            raise RuntimeError("this AsyncFitClient is closed")
        if self._transport is None:  # created inside the running loop (aiohttp and grpc.aio need one)
            self._transport = self._factory(self.connection)
        return self._transport

    async def connect(self) -> ModelInfo:
        """Check readiness and the tensor contract (once); returns what the server reported."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._info is None:
                self._info = await retry.acall(self._connect_once, self.retry_policy)
        return self._info

    async def _connect_once(self) -> ModelInfo:
        t = self._get_transport()
        if not await t.model_ready(self.model):
            ready = await t.models()
            raise ModelNotReady(
                f"model {self.model!r} is not ready on {self.connection.url}; "
                f"ready models: {', '.join(ready) or 'none'}"
            )
        return check_signature(
            await t.model_metadata(self.model), await t.model_config(self.model), self.connection.url
        )

    @property
    def info(self) -> ModelInfo | None:
        """What the server reported on connect (None before ``connect``)."""
        return self._info

    async def classify(self, image: ImageInput) -> Verdict:
        """Classify one image (see :meth:`FitClient.classify`)."""
        await self.connect()
        source = source_name(image)
        try:
            payload = await _to_bytes(image)
            return (await self._infer([payload], [source]))[0]
        except BadImage as exc:
            raise BadImage(exc.reason, source) from None

    async def classify_many(
        self,
        images: Iterable[ImageInput],
        batch_size: int = 8,
        concurrency: int = 4,
        progress: bool = False,
    ) -> list[Result]:
        """Classify many images in input order (see :meth:`FitClient.classify_many`)."""
        if batch_size < 1 or concurrency < 1:
            raise ValueError("batch_size and concurrency must be >= 1")
        info = await self.connect()
        items = list(images)
        batch_size = min(batch_size, info.max_batch_size)
        results: list[Result | None] = [None] * len(items)
        gate = asyncio.Semaphore(concurrency)
        bar = _progress(len(items)) if progress else None

        async def work(indices: range) -> None:
            async with gate:
                batch = await self._classify_batch([items[i] for i in indices], indices)
            for i, result in zip(indices, batch, strict=True):
                results[i] = result
            if bar is not None:
                bar(len(indices))

        tasks = [
            asyncio.ensure_future(work(range(i, min(i + batch_size, len(items)))))
            for i in range(0, len(items), batch_size)
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if bar is not None:
                bar(0, close=True)
        return results  # type: ignore[return-value]

    async def _classify_batch(self, images: Sequence[ImageInput], indices: range) -> list[Result]:
        out: list[Result | None] = [None] * len(images)
        sources = [source_name(im) for im in images]
        payloads: list[bytes] = []
        sent: list[int] = []
        for k, image in enumerate(images):
            try:
                payloads.append(await _to_bytes(image))
                sent.append(k)
            except BadImage as exc:
                out[k] = Failure(indices[k], sources[k], BadImage(exc.reason, sources[k]))
        if sent:
            try:
                verdicts: list[Result] = list(await self._infer(payloads, [sources[k] for k in sent]))
            except BadImage:
                # Triton fails the whole request for one bad image: isolate it by sending one by one.
                verdicts = [
                    await self._infer_one(p, indices[k], sources[k])
                    for p, k in zip(payloads, sent, strict=True)
                ]
            for k, v in zip(sent, verdicts, strict=True):
                out[k] = v
        return out  # type: ignore[return-value]

    async def _infer_one(self, payload: bytes, index: int, source: str | None) -> Result:
        try:
            return (await self._infer([payload], [source]))[0]
        except BadImage as exc:
            return Failure(index, source, BadImage(exc.reason, source))

    async def _infer(self, payloads: list[bytes], sources: list[str | None]) -> list[Verdict]:
        async def attempt() -> list[Verdict]:
            info = await self.connect()
            outputs, version = await self._get_transport().infer(self.model, payloads, **label_request(info))
            return verdicts_from_outputs(outputs, version, sources, info.calibration)

        return await retry.acall(attempt, self.retry_policy)
