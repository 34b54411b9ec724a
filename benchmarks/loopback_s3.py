"""Loopback S3 for benchmarks: s3rver (npm) on 127.0.0.1 and a byte-counting TCP proxy.

* :func:`ensure_s3rver` installs s3rver (pinned) with npm into ``benchmarks/.node/``
  (git-ignored) unless it is already there, and fails with a clear message when
  Node.js or npm is missing.
* :class:`S3rver` starts it on a free 127.0.0.1 port over a temporary directory,
  with one bucket, and stops it on exit (also on errors and Ctrl-C; on Linux the
  server also dies with this process).
* :class:`CountingProxy` is a TCP proxy in its own process (so it never competes
  with the measured client for the GIL) that counts the bytes flowing each way and
  the HTTP requests. Point every client at :attr:`CountingProxy.url` and difference
  two :meth:`CountingProxy.counts` to get what one operation moved over the wire:
  status lines, headers and bodies, as the server sent them.

s3rver accepts any well-formed signature for its built-in key pair; :data:`KEY` and
:data:`SECRET` are those dummy credentials. It ignores conditional writes
(``If-None-Match``/``If-Match``).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

HERE = Path(__file__).resolve().parent
NODE_DIR = HERE / ".node"
S3RVER_VERSION = "3.7.1"
S3RVER_JS = NODE_DIR / "node_modules" / "s3rver" / "bin" / "s3rver.js"
#: s3rver's built-in access key pair (dummy credentials, loopback only)
KEY = "S3RVER"
SECRET = "S3RVER"


def use_loopback_credentials(
    key: str = KEY, secret: str = SECRET, region: str = "us-east-1"
) -> None:
    """This process talks to loopback servers only: drop every ``AWS_*`` variable (profiles,
    tokens, endpoints), set dummy credentials, and never read the user's AWS files."""
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        del os.environ[var]
    os.environ.update(
        AWS_ACCESS_KEY_ID=key,
        AWS_SECRET_ACCESS_KEY=secret,
        AWS_DEFAULT_REGION=region,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )


_LISTENING = re.compile(r"S3rver listening on ([0-9.]+):(\d+)")


class BenchSetupError(RuntimeError):
    """Something the benchmark needs is missing; the message says what to do."""


def _which(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BenchSetupError(
            f"`{name}` not found on PATH. This benchmark runs s3rver, an npm package: "
            "install Node.js >= 18 and npm (Debian/Ubuntu: `apt-get install nodejs npm`), "
            "then run `make bench-access`."
        )
    return path


def ensure_s3rver(*, install: bool = True, quiet: bool = False) -> tuple[str, Path]:
    """``(node, s3rver.js)``, installing s3rver into ``benchmarks/.node`` if needed."""
    node = _which("node")
    if S3RVER_JS.exists():
        return node, S3RVER_JS
    if not install:
        raise BenchSetupError("s3rver is not installed; run `make bench-access` (or npm) first")
    npm = _which("npm")
    if not quiet:
        print(f"installing s3rver {S3RVER_VERSION} into {NODE_DIR.relative_to(HERE.parent)}/")
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    cmd = [npm, "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund"]
    cmd += ["--loglevel=error", "--save-exact", f"s3rver@{S3RVER_VERSION}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not S3RVER_JS.exists():
        raise BenchSetupError(
            f"`npm install s3rver@{S3RVER_VERSION}` failed (exit {proc.returncode}):\n"
            + (proc.stderr or proc.stdout)[-2000:]
        )
    return node, S3RVER_JS


def _node_legacy_openssl(node: str) -> list[str]:
    """``--openssl-legacy-provider`` where Node.js has it (17 and later), else nothing."""
    out = subprocess.run([node, "--version"], capture_output=True, text=True).stdout
    m = re.match(r"v(\d+)\.", out.strip())
    return ["--openssl-legacy-provider"] if m and int(m.group(1)) >= 17 else []


def _die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGTERM the child when this process dies (even SIGKILL)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class S3rver:
    """s3rver on ``127.0.0.1:<free port>`` with ``bucket``, data in a temporary directory."""

    def __init__(self, bucket: str, *, directory: Path | None = None, install: bool = True):
        self.bucket = bucket
        self._node, self._js = ensure_s3rver(install=install)
        self._given_dir = directory
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.directory: Path | None = None
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self._log: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> S3rver:
        if self._given_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="s3rver-")
            self.directory = Path(self._tmp.name)
        else:
            self.directory = Path(self._given_dir)
            self.directory.mkdir(parents=True, exist_ok=True)
        # s3rver encrypts ListObjectsV2 continuation tokens with DES, which OpenSSL 3
        # (Node >= 17) only offers through its legacy provider: without it every listing
        # of more than 1,000 keys fails with InternalError (ERR_OSSL_EVP_UNSUPPORTED)
        cmd = [self._node, *_node_legacy_openssl(self._node), str(self._js)]
        cmd += ["--directory", str(self.directory)]
        cmd += ["--address", "127.0.0.1", "--port", "0", "--silent"]
        cmd += ["--configure-bucket", self.bucket]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # Ctrl-C reaches us, and we stop it in order
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        # The CLI prints "S3rver listening on ADDR:PORT" even with --silent; port 0
        # lets the kernel pick a free one (no race between choosing and binding).
        found = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self._log.append(line.rstrip())
                del self._log[:-50]
                m = _LISTENING.search(line)
                if m and not found.is_set():
                    self.port = int(m.group(2))
                    found.set()

        threading.Thread(target=pump, name="s3rver-output", daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchSetupError("s3rver did not start:\n" + "\n".join(self._log[-20:]))
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> S3rver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- proxy

_REQUEST = re.compile(rb"(?:GET|HEAD|PUT|POST|DELETE) /\S* HTTP/1\.[01]\r\n")
# counters in shared memory: bytes server->client, client->server, connections, requests
_DOWN, _UP, _CONNS, _REQS = range(4)


@dataclass(frozen=True)
class Counts:
    down: int = 0  # bytes the server sent (status lines, headers, bodies)
    up: int = 0  # bytes the client sent
    connections: int = 0
    requests: int = 0

    def __sub__(self, other: Counts) -> Counts:
        return Counts(
            self.down - other.down,
            self.up - other.up,
            self.connections - other.connections,
            self.requests - other.requests,
        )


def _proxy_main(upstream_port: int, counters: object, ready: object, parent: int) -> None:
    import asyncio

    c = counters  # mp.Array('q', 4, lock=False): single writer (this process)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        tail = b""
        try:
            while True:
                data = await reader.read(1 << 20)
                if not data:
                    break
                # Count before forwarding: once the client holds the bytes, they are
                # already in the counters the parent reads.
                c[index] += len(data)  # type: ignore[index]
                if index == _UP:
                    # count request lines, including one split across two reads
                    buf = tail + data
                    n = sum(1 for m in _REQUEST.finditer(buf) if m.end() > len(tail))
                    c[_REQS] += n  # type: ignore[index]
                    tail = buf[-4096:]
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        c[_CONNS] += 1  # type: ignore[index]
        try:
            sr, sw = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            cw.close()
            return
        for w in (cw, sw):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(pipe(cr, sw, _UP), pipe(sr, cw, _DOWN))

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=1 << 20)
        ready.put(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        while os.getppid() == parent:  # exit if the benchmark dies
            await asyncio.sleep(0.5)
        server.close()

    asyncio.run(main())


class CountingProxy:
    """127.0.0.1 TCP proxy in front of ``upstream_port``, counting bytes and requests."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        ctx = mp.get_context("spawn")
        self._counters = ctx.Array("q", 4, lock=False)
        self._ready = ctx.Queue()
        self._proc = ctx.Process(
            target=_proxy_main,
            args=(upstream_port, self._counters, self._ready, os.getpid()),
            name="counting-proxy",
            daemon=True,
        )
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> CountingProxy:
        self._proc.start()
        self.port = int(self._ready.get(timeout=timeout))
        return self

    def counts(self) -> Counts:
        c = self._counters
        return Counts(c[_DOWN], c[_UP], c[_CONNS], c[_REQS])

    def stop(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)

    def __enter__(self) -> CountingProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _serve() -> None:
    """Start s3rver and the proxy, print their URLs and wait for Ctrl-C (for poking)."""
    with S3rver("bench") as server, CountingProxy(server.port) as proxy:
        print(f"s3rver {server.url} (bucket 'bench', data in {server.directory})")
        print(f"counting proxy {proxy.url}; credentials {KEY}/{SECRET}; Ctrl-C stops both")
        try:
            while True:
                time.sleep(5)
                print(proxy.counts())
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="s3rver for the benchmarks")
    p.add_argument("command", choices=["install", "serve"])
    a = p.parse_args()
    try:
        if a.command == "install":
            node, js = ensure_s3rver()
            print(f"s3rver {S3RVER_VERSION}: {js.relative_to(HERE.parent)}")
        else:
            _serve()
    except BenchSetupError as exc:
        sys.exit(f"{Path(__file__).name}: {exc}")


def reference_store(refs: dict, endpoint: str, path: str = "") -> object:
    """kerchunk references ``refs`` (whose URLs point at ``endpoint``) as a read-only
    zarr 3 store over fsspec's ``reference://`` and an asynchronous s3fs, rooted at
    ``path``. zarr drives the filesystem from its own event loop, so s3fs must be
    asynchronous; its session opens now, on that loop (botocore loads its service model,
    ~0.1-0.3 s), so that it counts as opening, not as the first read."""
    import fsspec
    import zarr
    from zarr.core.sync import sync

    remote = {
        "endpoint_url": endpoint,
        "key": KEY,
        "secret": SECRET,
        "skip_instance_cache": True,
        "asynchronous": True,
    }
    fs = fsspec.filesystem(
        "reference",
        fo=refs,
        remote_protocol="s3",
        remote_options=remote,
        asynchronous=True,
        skip_instance_cache=True,
    )
    sync(fs.fss["s3"].set_session())
    return zarr.storage.FsspecStore(fs, read_only=True, path=path)


def close_reference_store(store: object) -> None:
    """Close the asynchronous s3fs sessions under a :func:`reference_store` on zarr's
    loop (else aiohttp reports every one as unclosed at exit)."""
    from zarr.core.sync import sync

    for fs in getattr(getattr(store, "fs", None), "fss", {}).values():
        creator = getattr(fs, "_s3creator", None)
        if creator is not None and getattr(fs, "asynchronous", False):
            with contextlib.suppress(Exception):
                sync(creator.__aexit__(None, None, None))
