"""``keras-roadmap serve``: an index folder behind HTTP (FastAPI + uvicorn, the ``serve`` extra).

Routes:

* ``POST /search?k=5``: multipart upload, field ``file`` -> ``{"k", "results": [{"rank", "id",
  "path", "label", "score", "thumbnail"}]}``;
* ``GET /healthz``: ``{"status": "ok", "images", "dim", "index_type", "generation"}``;
* ``GET /gallery/{id}``: a JPEG thumbnail of gallery image ``id``, read from the path the index
  stores for it (a client never names a path);
* ``GET /``: a self-contained page to drop an image on and see its neighbours.

Every error is a 4xx (or 503) JSON ``{"error": "..."}``: an upload that is not an image (415), one
over ``max_upload_mb`` (413, refused from its Content-Length, or once that many bytes have arrived
when it has none) or over :data:`MAX_PIXELS` once decoded (413), a missing ``file`` field or a bad
``k`` (422). The index folder is re-read when its manifest changes (``index add`` / ``remove``
while serving), between requests.
"""

from __future__ import annotations

import io
import os
import socket
import sys
import threading

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from keras_roadmap.serving.embedder import ServingError, decode_rgb
from keras_roadmap.serving.http_page import PAGE
from keras_roadmap.serving.index_store import MANIFEST, IndexStore

#: Largest k a client may ask for.
MAX_K = 100
#: Largest image (width x height) decoded for a client: a small compressed upload can declare
#: a huge canvas (a decompression bomb); 40 M pixels is ~120 MB decoded, far above any photo.
MAX_PIXELS = 40_000_000
THUMBNAIL_SIDE = 160


class UploadTooLarge(Exception):
    """Raised inside the request body stream once more than the limit has arrived."""


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _UploadLimit:
    """ASGI middleware: refuse a request body over ``limit`` bytes before it is parsed (from its
    Content-Length), or stop reading it when it has none (chunked) and the count passes the limit."""

    def __init__(self, app, limit: int, live=None):
        self.app, self.limit, self.live = app, limit, live

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            response = _error(
                413,
                f"upload larger than the server's limit of {self.limit / 1e6:g} MB "
                "(keras-roadmap serve --max-upload-mb)",
            )
            return await response(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise UploadTooLarge()
            return message

        return await self.app(scope, counted, send)


class _Live:
    """The opened index, re-read (between requests, under a lock) when its manifest changes."""

    def __init__(self, folder: str, threads: int):
        self.folder, self.threads = folder, threads
        self.lock = threading.Lock()
        try:  # taken before reading, so an update landing meanwhile is read at the next request
            self.stamp = self._stamp()
        except OSError:
            self.stamp = None
        self.store = IndexStore.open(folder, threads=threads)

    def _stamp(self):
        info = os.stat(os.path.join(self.folder, MANIFEST))
        return info.st_mtime_ns, info.st_size, info.st_ino

    def get(self) -> IndexStore:
        with self.lock:
            try:
                stamp = self._stamp()
                if stamp != self.stamp:
                    self.store = IndexStore.open(self.folder, threads=self.threads)
                    self.stamp = stamp
            except (OSError, ServingError) as exc:  # mid-update or damaged: keep serving the last good one
                print(f"warning: keeping the loaded index ({exc})", file=sys.stderr)
            return self.store


def create_app(index_folder: str, max_upload_mb: float = 10.0, threads: int = 2):
    """The ASGI app serving ``index_folder`` (see module docstring).

    Raises:
        ServingError: the index folder cannot be opened.
    """
    live = _Live(index_folder, threads)
    limit = int(max_upload_mb * 1e6)
    app = FastAPI(title="keras-roadmap search", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return _error(422, "; ".join(parts))

    @app.get("/healthz")
    def healthz():
        store = live.get()
        return {
            "status": "ok",
            "images": store.size,
            "dim": store.dim,
            "index_type": store.manifest["index_params"].get("index_type"),
            "generation": store.manifest["generation"],
        }

    @app.get("/", response_class=HTMLResponse)
    def page():
        return HTMLResponse(PAGE.replace("__MAX_K__", str(MAX_K)))

    @app.get("/gallery/{image_id}")
    def thumbnail(image_id: int):
        store = live.get()
        entry = store.by_id.get(image_id)
        if entry is None:
            return _error(404, f"no gallery image with id {image_id}")
        try:
            from PIL import Image

            with Image.open(entry["path"]) as image:
                image = image.convert("RGB")
                image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=85)
        except (OSError, ValueError, Image.DecompressionBombError):
            return _error(404, f"gallery image {image_id} cannot be read from its stored path any more")
        return Response(buffer.getvalue(), media_type="image/jpeg")

    @app.post("/search")
    async def search(request: Request, k: int = Query(5, ge=1, le=MAX_K)):
        try:
            form = await request.form(max_files=1, max_fields=8)
        except UploadTooLarge:
            return _error(
                413,
                f"upload larger than the server's limit of {max_upload_mb:g} MB (keras-roadmap serve --max-upload-mb)",
            )
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                return _error(422, "missing multipart field 'file' (send the image as -F file=@IMAGE)")
            data = await upload.read()
            name = upload.filename or "upload"
        finally:
            await form.close()
        if not data:
            return _error(415, f"{name} is empty, not an image")
        try:
            image = await run_in_threadpool(_decode_upload, data, name)
        except _TooManyPixels as exc:
            return _error(413, str(exc))
        except ServingError as exc:
            return _error(415, f"{exc}; send a JPEG, PNG, BMP, GIF, WebP or TIFF image")
        store = live.get()
        hits = (await run_in_threadpool(store.search_images, [image], k))[0]
        for hit in hits:
            hit["thumbnail"] = f"/gallery/{hit['id']}"
        return {"k": k, "results": hits}

    return _UploadLimit(app, limit, live)


class _TooManyPixels(Exception):
    pass


def _decode_upload(data: bytes, name: str):
    """decode_rgb, after checking the size the header declares (Pillow reads it without decoding)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except Image.DecompressionBombError as exc:
        raise _TooManyPixels(f"{name}: {exc}") from exc
    except Exception:  # noqa: BLE001 - decode_rgb below names what is wrong with it
        return decode_rgb(data, name)
    if width * height > MAX_PIXELS:
        raise _TooManyPixels(
            f"{name} is {width} x {height} pixels, more than the {MAX_PIXELS // 1_000_000} M "
            "pixels decoded per upload; send a smaller image"
        )
    return decode_rgb(data, name)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServingError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port "
            "(0 picks a free one) or --host"
        ) from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    index_folder: str, host: str = "127.0.0.1", port: int = 8000, max_upload_mb: float = 10.0, threads: int = 2
) -> int:
    """Serve ``index_folder`` until interrupted (Ctrl-C / SIGTERM); returns 0.

    Prints ``serving IDX (N images) on http://HOST:PORT`` once it listens (the real port when
    ``port`` is 0).
    """
    import uvicorn

    app = create_app(index_folder, max_upload_mb=max_upload_mb, threads=threads)
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {host}, reachable from other machines", file=sys.stderr)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    print(
        f"serving {index_folder} ({app.live.store.size} images) on http://{shown}:{bound} (Ctrl-C to stop)", flush=True
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
