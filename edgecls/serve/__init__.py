"""HTTP API (`POST /classify`, `/classify/batch`, `GET /health`, `/model`) and a web page for one model.

`create_app(predictor, ServeSettings())` builds the FastAPI app; `edgecls serve` / `serve.py` run it.
"""

from edgecls.serve.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
