"""The web view: the ASGI app (`app`), the upload worker process, and the static page (`static/`)."""
