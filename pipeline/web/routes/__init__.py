"""The web view's routes, one module per group of endpoints; `pipeline/web/app.py` assembles them.

Each module has one function that takes what its endpoints read (the live state, the gallery service, the
unknown people) and returns its Starlette routes.
"""
