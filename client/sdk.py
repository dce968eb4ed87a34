"""The synchronous client: :class:`FitClient`."""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from . import retry
from .base import ClientBase
from .errors import BadImage, FitguardError, ModelNotReady
from .images import ImageInput, source_name, to_bytes
from .signature import ModelInfo, check_signature, label_request
from .transport import Connection, Transport, open_transport
from .verdict import Failure, Verdict, verdicts_from_outputs

Result = Verdict | Failure


class _Pool:
    """Transports: one shared when thread-safe (gRPC), else one per thread.

    tritonclient's HTTP client runs on gevent, whose connections belong to the thread that made them, so
    each thread gets its own; the worker threads are kept between calls so their connections are reused.
    """

    def __init__(self, factory: Callable[[], Transport]) -> None:
        self._factory = factory
        self._local = threading.local()
        self._all: list[Transport] = []
        self._lock = threading.Lock()
        self._shared: Transport | None = None

    def get(self) -> Transport:
        if self._shared is not None:
            return self._shared
        transport: Transport | None = getattr(self._local, "transport", None)
        if transport is None:
            transport = self._factory()
            with self._lock:
                self._all.append(transport)
                if getattr(transport, "thread_safe", False):
                    self._shared = transport
            self._local.transport = transport
        return transport

    def close(self) -> None:
        with self._lock:
            transports, self._all, self._shared = self._all, [], None
        self._local = threading.local()
        for t in transports:
            with contextlib.suppress(
                Exception
            ):  # a connection owned by a finished thread: the OS reclaims it
                t.close()


class FitClient(ClientBase[Transport]):
    """Classify images with a running fitguard server.

    >>> with FitClient("localhost:8001") as client:          # doctest: +SKIP
    ...     verdicts = client.classify_many(Path("photos").glob("*.jpg"))

    Takes the arguments of :class:`~fitguard.client.base.ClientBase` (server, TLS, retries).

    The client connects on ``__enter__`` or the first call: it checks that the model is ready and
    that its metadata and config match the fitguard tensor contract (:class:`ContractMismatch`
    otherwise), once. It is safe to use from several threads.
    """

    def _open_transports(self, factory: Callable[[Connection], Transport] | None) -> None:
        factory = factory or open_transport
        self._transports = _Pool(lambda: factory(self.connection))
        self._workers: ThreadPoolExecutor | None = None
        self._workers_size = 0
        self._info: ModelInfo | None = None
        self._connect_lock = threading.Lock()
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> FitClient:
        try:
            self.connect()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        if self._workers is not None:
            self._workers.shutdown(wait=True)
            self._workers = None
        self._transports.close()

    def connect(self) -> ModelInfo:
        """Check readiness and the tensor contract (once); returns what the server reported."""
        if self._closed:
            raise RuntimeError("this FitClient is closed")
        with self._connect_lock:
            if self._info is None:
                self._info = retry.call(self._connect_once, self.retry_policy)
        return self._info

    def _connect_once(self) -> ModelInfo:
        t = self._transports.get()
        if not t.model_ready(self.model):
            ready = t.models()
            raise ModelNotReady(
                f"model {self.model!r} is not ready on {self.connection.url}; ready models: "
                f"{', '.join(ready) or 'none'}"
            )
        return check_signature(t.model_metadata(self.model), t.model_config(self.model), self.connection.url)

    @property
    def info(self) -> ModelInfo:
        """Name, versions, platform and max batch size of the served model (connects if needed)."""
        return self.connect()

    # -- classification ----------------------------------------------------------------------------

    def classify(self, image: ImageInput) -> Verdict:
        """Classify one image.

        Raises:
            BadImage: the file cannot be read or the server refused the image (``.reason`` says why).
            ServerUnavailable, Timeout: after the retries; ModelNotReady, ContractMismatch, ServerError.
        """
        self.connect()
        source = source_name(image)
        try:
            payload = to_bytes(image)
        except BadImage as exc:
            raise BadImage(exc.reason, source) from None
        try:
            return self._infer([payload], [source])[0]
        except BadImage as exc:
            raise BadImage(exc.reason, source) from None

    def classify_many(
        self,
        images: Iterable[ImageInput],
        batch_size: int = 8,
        concurrency: int = 4,
        progress: bool = False,
    ) -> list[Result]:
        """Classify many images, ``concurrency`` requests in flight of up to ``batch_size`` images each.

        Returns one result per input, in input order: a :class:`Verdict`, or a :class:`Failure` for an
        image that could not be judged (unreadable file, or refused by the server as a bad image: the
        other images in its batch are retried one by one and still get their verdicts). Both have
        ``.ok`` and ``.source``.

        Raises:
            ServerUnavailable, Timeout (after retries), ModelNotReady, ContractMismatch, ServerError:
            problems of the server rather than of one image stop the whole run.
            TypeError: an input of an unsupported type.
        """
        if batch_size < 1 or concurrency < 1:
            raise ValueError("batch_size and concurrency must be >= 1")
        info = self.connect()
        items = list(images)
        batch_size = min(batch_size, info.max_batch_size)
        results: list[Result | None] = [None] * len(items)
        batches: queue.SimpleQueue[range] = queue.SimpleQueue()
        for i in range(0, len(items), batch_size):
            batches.put(range(i, min(i + batch_size, len(items))))
        errors: list[BaseException] = []
        bar = _progress(len(items)) if progress else None

        def worker() -> None:
            # Exactly `concurrency` of these run, each keeping one request in flight.
            while not errors:
                try:
                    indices = batches.get_nowait()
                except queue.Empty:
                    return
                try:
                    batch = self._classify_batch([items[i] for i in indices], indices)
                except BaseException as exc:
                    errors.append(exc)  # a server problem: stop every worker after its current request
                    return
                for i, result in zip(indices, batch, strict=True):
                    results[i] = result
                if bar is not None:
                    bar(len(indices))

        try:
            futures = [self._executor(concurrency).submit(worker) for _ in range(concurrency)]
            for f in futures:
                f.result()
        finally:
            if bar is not None:
                bar(0, close=True)
        if errors:
            raise errors[0]
        return results  # type: ignore[return-value]

    def _executor(self, size: int) -> ThreadPoolExecutor:
        with self._connect_lock:
            if self._workers is None or self._workers_size < size:
                if self._workers is not None:
                    self._workers.shutdown(wait=False)
                self._workers = ThreadPoolExecutor(max_workers=size, thread_name_prefix="fitguard")
                self._workers_size = size
            return self._workers

    def _classify_batch(self, images: Sequence[ImageInput], indices: range) -> list[Result]:
        out: list[Result | None] = [None] * len(images)
        sources = [source_name(im) for im in images]
        payloads: list[bytes] = []
        sent: list[int] = []
        for k, image in enumerate(images):
            try:
                payloads.append(to_bytes(image))
                sent.append(k)
            except BadImage as exc:
                out[k] = Failure(indices[k], sources[k], BadImage(exc.reason, sources[k]))
        if sent:
            try:
                verdicts: list[Result] = list(self._infer(payloads, [sources[k] for k in sent]))
            except BadImage:
                # Triton fails the whole request for one bad image: isolate it by sending one by one.
                verdicts = [
                    self._infer_one(p, indices[k], sources[k]) for p, k in zip(payloads, sent, strict=True)
                ]
            for k, v in zip(sent, verdicts, strict=True):
                out[k] = v
        return out  # type: ignore[return-value]

    def _infer_one(self, payload: bytes, index: int, source: str | None) -> Result:
        try:
            return self._infer([payload], [source])[0]
        except BadImage as exc:
            return Failure(index, source, BadImage(exc.reason, source))

    def _infer(self, payloads: list[bytes], sources: list[str | None]) -> list[Verdict]:
        def attempt() -> list[Verdict]:
            info = self.connect()
            outputs, version = self._transports.get().infer(self.model, payloads, **label_request(info))
            return verdicts_from_outputs(outputs, version, sources, info.calibration)

        return retry.call(attempt, self.retry_policy)


def _progress(total: int) -> Callable[..., None]:
    """A thread-safe progress callback: tqdm when installed, a plain stderr counter otherwise."""
    lock = threading.Lock()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        bar = tqdm(total=total, unit="img", desc="fitguard")

        def update(n: int, close: bool = False) -> None:
            with lock:
                bar.close() if close else bar.update(n)

        return update
    count = [0]

    def update_plain(n: int, close: bool = False) -> None:
        with lock:
            count[0] += n
            end = "\n" if close else ""
            print(f"\rfitguard: {count[0]}/{total} images", end=end, file=sys.stderr, flush=True)

    return update_plain


__all__ = ["FitClient", "Result", "FitguardError"]
