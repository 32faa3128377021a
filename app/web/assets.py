"""The app's own /static/ route: its fingerprinted static files, the images kept on local disk
and the manifest, with the names and storage of app/adapters/assets.py."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response

from app.adapters.assets import (
    IMMUTABLE,
    MANIFEST,
    MANIFEST_CACHE_CONTROL,
    Assets,
    content_type,
    find_static,
    manifest,
    static_files,
)
from app.kernel.errors import NotFound


def install_static(app: FastAPI) -> None:
    """Serve /static/<name>: the app's static files under their fingerprinted names, images
    kept on local disk, and the manifest. At stage 5 CloudFront answers /static/* from the
    bucket instead, and the app is not asked."""

    @app.api_route("/static/{name:path}", methods=["GET", "HEAD"], include_in_schema=False)
    async def static_file(request: Request, name: str) -> Response:
        found = find_static(name)
        if found is not None:
            return FileResponse(
                found.path, media_type=found.content_type, headers={"cache-control": IMMUTABLE}
            )
        assets: Assets = request.app.state.resources.assets
        image = assets.local_file(name)
        if image is not None:
            return FileResponse(
                image, media_type=content_type(name), headers={"cache-control": IMMUTABLE}
            )
        if name == MANIFEST:
            return Response(
                manifest(static_files()),
                media_type="application/json",
                headers={"cache-control": MANIFEST_CACHE_CONTROL},
            )
        raise NotFound("static file", name)
