"""The web view: the server (`server`), its app assembled from route modules (`app`, `routes/`), the upload
worker process, and the static page (`static/`)."""
