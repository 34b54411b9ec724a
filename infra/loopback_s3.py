"""A throw-away S3 server on 127.0.0.1 (moto), for trying hyperslab without Docker.

    python infra/loopback_s3.py --port 0 --bucket beamline --bucket cloud

prints the endpoint and the environment to use, then serves until Ctrl-C. Data
lives in memory and is gone when it stops. moto enforces conditional writes
(If-None-Match / If-Match on PUT) like AWS and MinIO, but reads a whole object
for every range GET: fine for functional work, not for timing range reads.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: any free port)")
    parser.add_argument(
        "--bucket",
        action="append",
        default=[],
        metavar="NAME",
        help="create this bucket (repeatable)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)

    from moto.server import ThreadedMotoServer

    if not args.verbose:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"

    # moto accepts any credentials; clients still need some to sign requests.
    key = os.environ.get("AWS_ACCESS_KEY_ID", "testing")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "testing")
    if args.bucket:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            region_name="us-east-1",
        )
        for bucket in args.bucket:
            client.create_bucket(Bucket=bucket)

    print(endpoint, flush=True)
    print(
        f"# buckets: {', '.join(args.bucket) or '(none)'}\n"
        f"# export AWS_ENDPOINT_URL={endpoint}\n"
        "# export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing\n"
        + "".join(
            f"# export HYPERSLAB_SITE_{b.upper().replace('-', '_')}_URL=s3://{b} "
            f"HYPERSLAB_SITE_{b.upper().replace('-', '_')}_ENDPOINT_URL={endpoint}\n"
            for b in args.bucket
        )
        + "# Ctrl-C to stop (all data is lost)",
        file=sys.stderr,
        flush=True,
    )

    stop = threading.Event()
    # Explicit handlers: a shell starting us in the background sets SIGINT to ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
