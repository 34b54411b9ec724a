"""S3-compatible object storage: the site, its transports, their errors.

``site.py`` keeps the site contract over a transport; ``transport.py`` is the
interface (and which transport a site gets); ``wire.py`` and ``auth.py`` are
hyperslab's own SigV4 client, ``boto.py`` the botocore client, ``obstore.py`` the
Rust ``object_store`` client; ``errors.py`` names what failed.
"""

from hyperslab.storage.s3.site import S3Site

__all__ = ["S3Site"]
