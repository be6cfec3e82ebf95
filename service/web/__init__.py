"""The dashboard: one HTML page and its script, served by the API itself. The page reads the
same HTTP API as every other client, with a token the user enters once (kept in the
browser's session storage, never in a URL); plotly.js comes from the installed plotly
package, so the dashboard works on a network without internet access."""

from __future__ import annotations

from pathlib import Path

import plotly
from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, RedirectResponse

STATIC = Path(__file__).parent / "static"
ASSETS = {
    "app.js": STATIC / "app.js",
    "app.css": STATIC / "app.css",
    "plotly.min.js": Path(plotly.__file__).parent / "package_data" / "plotly.min.js",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/dashboard/")


@router.get("/dashboard")
@router.get("/dashboard/")
@router.get("/dashboard/experiments/{experiment_id}")
@router.get("/dashboard/trials/{trial_id}")
def page() -> FileResponse:
    """Every page is the same document; its script renders the one the path names."""
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/dashboard/static/{name}")
def asset(name: str) -> FileResponse:
    path = ASSETS.get(name)
    if path is None:
        raise HTTPException(404, f"no asset {name!r}")
    return FileResponse(path, headers={"Cache-Control": "max-age=3600"})
