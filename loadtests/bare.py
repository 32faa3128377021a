"""The yardstick: a bare FastAPI JSON endpoint, served exactly like the shop, in the same run."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()


@app.get("/bare")
async def bare() -> dict[str, str]:
    return {"status": "ok"}
