"""The web app (Starlette, served by uvicorn): the drawing page, the JSON API and the gallery's photos.

Routes: ``GET /`` the page (``/favicon.ico`` its icon), ``GET /api/info``, ``POST /api/search`` (a PNG/JPEG/WebP
body or a multipart ``file``; ``?k=``, ``?one_to_many=1``, ``?class=``), ``GET /photo/{index}`` and
``GET /thumb/{index}``.
Photos are served only by their index in the gallery's own list, so no request can name a file.
"""
from __future__ import annotations

import io
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Optional

from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from app.images import MAX_QUERY_BYTES, QueryError, read_photo
from app.searcher import DEFAULT_K, SketchSearcher
from utils.errors import UserError

STATIC = Path(__file__).resolve().parent / "static"
MULTIPART_OVERHEAD = 64 * 1024          # room for the multipart envelope around a file at the size limit
THUMB_SIDE = 256
MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _read_capped(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes."""
    too_big = QueryError(413, f"the upload exceeds {MAX_QUERY_BYTES // 2**20} MB")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def query_bytes(request: Request) -> bytes:
    """The image of a search request: the raw body, or the ``file`` field of a multipart form."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return await _read_capped(request, MAX_QUERY_BYTES)
    body = await _read_capped(request, MAX_QUERY_BYTES + MULTIPART_OVERHEAD)

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
    except HTTPException as exc:     # malformed multipart
        raise QueryError(400, f"the multipart form cannot be read ({exc.detail})") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise QueryError(400, "the multipart form has no 'file' field holding the sketch image")
    data = await upload.read()
    await form.close()
    return data


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise QueryError(400, f"{name} must be an integer, got {raw!r}") from None


TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _bool_param(request: Request, name: str) -> bool:
    """A yes/no query parameter: absent or empty is no; anything but 1/0, true/false, yes/no, on/off is refused
    (like a bad ``k``), not read as no."""
    raw = (request.query_params.get(name) or "0").lower()
    if raw not in TRUE_WORDS + FALSE_WORDS:
        raise QueryError(400, f"{name} must be 1 or 0 (true/false, yes/no, on/off), got {raw!r}")
    return raw in TRUE_WORDS


def create_app(searcher: SketchSearcher) -> Starlette:
    gallery = searcher.gallery

    def photo_path(index: int) -> Path:
        if not 0 <= index < len(gallery):
            raise HTTPException(404, f"no photo {index}: the gallery has {len(gallery)}")
        return gallery.root / gallery.paths[index]

    @lru_cache(maxsize=1024)
    def thumbnail(index: int) -> bytes:
        img = read_photo(gallery.root, gallery.paths[index])
        img.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        return buf.getvalue()

    async def index_page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def favicon(request: Request) -> Response:       # browsers ask for /favicon.ico whatever the page says
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    async def info(request: Request) -> Response:
        return JSONResponse(searcher.info())

    async def search(request: Request) -> Response:
        try:
            k = _int_param(request, "k", DEFAULT_K)
            one_to_many = _bool_param(request, "one_to_many")
            class_name: Optional[str] = request.query_params.get("class") or None
            searcher.check_request(k, one_to_many, class_name)      # before reading a large body
            data = await query_bytes(request)
            return JSONResponse(await run_in_threadpool(searcher.search, data, k, one_to_many, class_name))
        except QueryError as exc:
            return _error(exc.status, str(exc))

    async def photo(request: Request) -> Response:
        path = photo_path(request.path_params["index"])
        if not path.is_file():
            raise HTTPException(404, f"photo {gallery.paths[request.path_params['index']]} is no longer on disk")
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream"))

    async def thumb(request: Request) -> Response:
        index = request.path_params["index"]
        photo_path(index)
        try:
            data = await run_in_threadpool(thumbnail, index)
        except UserError as exc:
            raise HTTPException(404, str(exc)) from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(exc.status_code, exc.detail)

    routes = [
        Route("/", index_page),
        Route("/favicon.ico", favicon),
        Route("/api/info", info),
        Route("/api/search", search, methods=["POST"]),
        Route("/photo/{index:int}", photo),
        Route("/thumb/{index:int}", thumb),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.searcher = searcher
    return app


def serve_in_thread(app: Starlette, host: str = "127.0.0.1", timeout: float = 30.0):
    """Serve ``app`` with uvicorn on a free port in a daemon thread (tests, benchmarks): (server, thread, port).

    Returns once the server accepts connections; stop it with ``server.should_exit = True``.
    """
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, port
