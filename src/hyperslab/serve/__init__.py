"""``hyperslab serve``: a repository shared over HTTP (Zarr for zarr/xarray clients and a
JSON API), behind API keys. :func:`hyperslab.serve.app.create_app` builds the ASGI app
(it needs the ``serve`` extra: ``pip install 'hyperslab[serve]'``); :mod:`.keys` reads
the keys file. Importing this package needs neither Starlette nor uvicorn."""
