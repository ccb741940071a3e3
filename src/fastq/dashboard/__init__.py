"""The fastq web dashboard: ``fastq -A proj dashboard --port 5555``.

A Starlette app served by uvicorn (``pip install 'fastq[dashboard]'``), with
its page, script and style inside this package (no CDN, nothing fetched at run
time). ``create_app(app)`` returns the ASGI app to mount elsewhere; ``serve``
runs it.

Layer: apps; may import any layer.
"""

from .server import create_app, serve
from .state import DashboardState

__all__ = ["DashboardState", "create_app", "serve"]
