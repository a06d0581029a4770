"""`dlforge serve`: trained runs over HTTP (FastAPI + uvicorn) and the playground page.

    from dlforge.serve import create_app, serve
    serve(["runs/cnn-digits", "runs/gpt-small-tinyshakespeare"], port=8000)   # blocks; SIGTERM stops it
    app = create_app({"digits": dlforge.load("runs/cnn-digits")})             # an ASGI app to mount elsewhere
"""
from dlforge.serve.app import create_app, load_runs, serve
from dlforge.serve.limits import Limits

__all__ = ["create_app", "serve", "load_runs", "Limits"]
