"""``hyperslab sync`` against rclone 1.60 and a plain parallel s3fs copy, on loopback s3rver.

    .venv/bin/python benchmarks/sync.py install     # rclone (apt-get download) + s3rver (npm)
    .venv/bin/python benchmarks/sync.py [--entries 250,2500] [--big-mb 78] [--increments 10,100]

For each repository size the script builds (once, cached under ``bench-data/sync/``) a
hyperslab repository on a local directory: one ~78 MB NeXus detector stack
(``write_big_detector_file``) ingested with ``--upload-sources``, then N tiny HDF5 files
(7.6 KB each, two 2 KiB chunks of random ``<i4``) ingested with their sources in
commits of 100. Every small entry is 4 objects (entry record, refmap, checksums, the
source file), so 2,500 entries make about 10,000 small objects plus the big file.

Four s3rver servers (``loopback_s3.S3rver``), each behind its own byte- and
request-counting proxy (``loopback_s3.CountingProxy``): A holds the repository
(uploaded with boto3, untimed), B receives ``hyperslab sync``, C ``rclone sync``, D the
plain copy. Every timed step is a fresh child process, timed from spawn to exit:

* first sync A→B with ``hyperslab sync s3://src/repo s3://hs-dst/repo --sources --json``,
  A→C with ``rclone sync --transfers 16 --checkers 16 --fast-list`` (see RCLONE_FLAGS
  for why --fast-list), A→D with a plain s3fs copy (list A, then GET and PUT every
  object, 16 at a time);
* no-op re-syncs: hyperslab; rclone; rclone with ``--size-only`` as well;
* incremental: ``ingest`` k new small entries at A (untimed, one commit), then
  ``hyperslab sync`` A→B and ``rclone sync`` A→C, for each k in ``--increments``.

Afterwards the keys at B, C and D are compared with A's, and their branches with A's.
Results: a table per size (seconds, CPU seconds and peak RSS of the child, requests and
bytes at the proxies), the issue's aims, and ``bench-data/sync/results.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loopback_s3 import (
    KEY,
    SECRET,
    BenchSetupError,
    CountingProxy,
    Counts,
    S3rver,
    ensure_s3rver,
    use_loopback_credentials,
)
from timing import wait_timed

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RCLONE_DIR = HERE / ".rclone"  # git-ignored: the Debian package, unpacked
RCLONE_BIN = RCLONE_DIR / "usr" / "bin" / "rclone"
REGION = "us-east-1"
PREFIX = "repo"
BRANCH = "refs/branches/main"
#: role → bucket; each role is its own s3rver process behind its own counting proxy
BUCKETS = {"src": "src", "hs": "hs-dst", "rclone": "rclone-dst", "copy": "copy-dst"}
#: --fast-list is needed for a correct sync here: without it rclone walks the tree with
#: delimiter listings, and s3rver 3.7.1 leaves out every "directory" that holds only
#: sub-directories (sources/, refs/), so rclone would never see those objects
RCLONE_FLAGS = ["--transfers", "16", "--checkers", "16", "--fast-list"]
RCLONE_FAST = ["--size-only"]
COPY_JOBS = 16
BATCH = 100  # small entries per ingest commit while building the fixture
MB = 1e6
FIXTURE_VERSION = 1


# --------------------------------------------------------------------------- rclone


def ensure_rclone(*, install: bool = True) -> Path:
    """The rclone binary unpacked from Debian's package into ``benchmarks/.rclone/``."""
    if RCLONE_BIN.exists():
        return RCLONE_BIN
    if not install:
        raise BenchSetupError("rclone is not unpacked yet; run `benchmarks/sync.py install`")
    apt, dpkg = shutil.which("apt-get"), shutil.which("dpkg")
    if apt is None or dpkg is None:
        raise BenchSetupError(
            "fetching rclone needs `apt-get` and `dpkg` (Debian/Ubuntu); elsewhere pass "
            "--rclone PATH to an rclone binary (the issue's figures are for rclone 1.60)"
        )
    print(f"fetching rclone with `apt-get download rclone` into {RCLONE_DIR.relative_to(ROOT)}/")
    with tempfile.TemporaryDirectory(prefix="rclone-deb-") as tmp:
        proc = subprocess.run([apt, "download", "rclone"], cwd=tmp, capture_output=True, text=True)
        debs = sorted(Path(tmp).glob("rclone_*.deb"))
        if proc.returncode != 0 or not debs:
            raise BenchSetupError(
                f"`apt-get download rclone` failed (exit {proc.returncode}); "
                "is a Debian mirror reachable, and has `apt-get update` run? Or pass "
                "--rclone PATH.\n" + (proc.stderr or proc.stdout)[-2000:]
            )
        RCLONE_DIR.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([dpkg, "-x", str(debs[0]), str(RCLONE_DIR)], capture_output=True)
        if proc.returncode != 0 or not RCLONE_BIN.exists():
            raise BenchSetupError(
                f"`dpkg -x {debs[0].name}` failed (exit {proc.returncode}): "
                + proc.stderr.decode(errors="replace")[-2000:]
            )
    return RCLONE_BIN


def rclone_version(rclone: Path) -> str:
    out = subprocess.run([str(rclone), "version"], capture_output=True, text=True).stdout
    return out.splitlines()[0].strip() if out else "?"


# --------------------------------------------------------------------------- fixture


@dataclass
class Fixture:
    entries: int
    big_mb: int
    path: Path
    objects: dict[str, int]  # key below the repository prefix → size
    built_s: float = 0.0

    @property
    def bytes(self) -> int:
        return sum(self.objects.values())

    def by_dir(self) -> Counter[str]:
        return Counter(k.split("/", 1)[0] for k in self.objects)


def write_small_file(path: Path, seed: int) -> None:
    """A tiny HDF5 file: /data, 1024 random ``<i4`` in two 2 KiB chunks (above the
    500-byte inline threshold, so the refmap references them)."""
    import h5py
    import numpy as np

    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        d = f.create_dataset("data", data=rng.integers(0, 2**31, 1024, dtype="<i4"), chunks=(512,))
        d.attrs["seed"] = seed


def small_files(directory: Path, seeds: range) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for seed in seeds:
        p = directory / f"s{seed:07d}.h5"
        if not p.exists():
            tmp = p.with_suffix(".tmp")
            write_small_file(tmp, seed)
            tmp.rename(p)
        out.append(p)
    return out


def big_file(data: Path, big_mb: int) -> Path:
    from hyperslab.samples import write_big_detector_file

    path = data / f"detector_{big_mb}MB.nxs"
    if not path.exists():
        print(f"writing {path} (once) ...", flush=True)
        tmp = path.with_suffix(".tmp")
        write_big_detector_file(tmp, target_bytes=big_mb * 10**6)
        tmp.rename(path)
    return path


def list_local(root: Path) -> dict[str, int]:
    """Objects of a file-site repository (FileSite's ``.hyperslab-lock`` files left out)."""
    return {
        p.relative_to(root).as_posix(): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def fixture(data: Path, entries: int, big_mb: int) -> Fixture:
    """The repository of ``entries`` small entries + the big file, built once and cached."""
    from hyperslab.convert.ingest import ingest
    from hyperslab.references.repository import Repository
    from hyperslab.storage import FileSite

    data.mkdir(parents=True, exist_ok=True)
    path = data / f"repo-{entries}-{big_mb}MB"
    marker = path / ".fixture.json"
    if marker.exists():
        doc = json.loads(marker.read_text())
        if doc.get("version") == FIXTURE_VERSION:
            return Fixture(entries, big_mb, path, doc["objects"], doc["built_s"])
    big = big_file(data, big_mb)
    files = small_files(data / "files", range(entries))
    print(f"building the {entries}-entry fixture in {path} (once) ...", flush=True)
    shutil.rmtree(path, ignore_errors=True)
    t0 = time.perf_counter()
    # single_writer: s3rver ignores conditional writes, so only such a repository can
    # be committed to once it is there (the incremental steps commit at A)
    repo = Repository.init(FileSite(path, fsync=False), single_writer=True)
    ingest(repo, [str(big)], name="big/detector", upload_sources=True, message="big file")
    for b in range(0, entries, BATCH):
        batch = [str(f) for f in files[b : b + BATCH]]
        ingest(repo, batch, name=f"small/b{b // BATCH:03d}", upload_sources=True)
    repo.close()
    built = time.perf_counter() - t0
    objects = list_local(path)
    doc = {"version": FIXTURE_VERSION, "objects": objects, "built_s": built}
    marker.write_text(json.dumps(doc))
    return Fixture(entries, big_mb, path, objects, built)


# --------------------------------------------------------------------------- S3 helpers


def boto_client(url: str) -> Any:
    import boto3
    from botocore.config import Config

    cfg = Config(max_pool_connections=32, retries={"max_attempts": 5, "mode": "standard"})
    return boto3.client("s3", endpoint_url=url, region_name=REGION, config=cfg)


def upload(url: str, bucket: str, fx: Fixture) -> float:
    """Put every fixture object into ``bucket/repo/`` (plain single PUTs, 16 at a time)."""
    client = boto_client(url)
    t0 = time.perf_counter()

    def put(key: str) -> None:
        client.put_object(Bucket=bucket, Key=f"{PREFIX}/{key}", Body=(fx.path / key).read_bytes())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, fx.objects))
    return time.perf_counter() - t0


def list_keys(url: str, bucket: str, prefix: str = PREFIX) -> dict[str, int]:
    client = boto_client(url)
    out: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix + "/"
    ):
        for obj in page.get("Contents", []):
            out[obj["Key"][len(prefix) + 1 :]] = obj["Size"]
    return out


def get_text(url: str, bucket: str, key: str, prefix: str = PREFIX) -> str | None:
    try:
        body = boto_client(url).get_object(Bucket=bucket, Key=f"{prefix}/{key}")["Body"]
        return str(body.read().decode())
    except Exception:
        return None


def commit_entries(url: str, files: list[Path], name: str) -> dict[str, Any]:
    """Ingest ``files`` (with sources) at A as one commit, straight to the server."""
    from hyperslab.convert.ingest import ingest
    from hyperslab.references.repository import Repository
    from hyperslab.storage import S3Site

    t0 = time.perf_counter()
    site = S3Site(BUCKETS["src"], PREFIX, endpoint_url=url, region=REGION, cas=False)
    with Repository.open(site) as repo:
        res = ingest(repo, [str(f) for f in files], name=name, upload_sources=True)
    assert res.commit is not None and res.commit.snapshot is not None
    return {
        "entries": len(files),
        "snapshot": res.commit.snapshot.id,
        "s": time.perf_counter() - t0,
    }


# --------------------------------------------------------------------------- the copy baseline


def plain_copy(src_url: str, dst_url: str, jobs: int, dst_prefix: str = PREFIX) -> None:
    """Child process: list A's repository, then GET and PUT every object, ``jobs`` at a
    time, with s3fs (the "plain parallel copy" of the issue)."""
    import s3fs

    async def main() -> int:
        src = s3fs.S3FileSystem(endpoint_url=src_url, asynchronous=True, skip_instance_cache=True)
        dst = s3fs.S3FileSystem(endpoint_url=dst_url, asynchronous=True, skip_instance_cache=True)
        s_sess, d_sess = await src.set_session(), await dst.set_session()
        base = f"{BUCKETS['src']}/{PREFIX}/"
        keys = await src._find(base)
        sem = asyncio.Semaphore(jobs)

        async def one(path: str) -> None:
            async with sem:
                data = await src._cat_file(path)
                await dst._pipe_file(f"{BUCKETS['copy']}/{dst_prefix}/{path[len(base) :]}", data)

        await asyncio.gather(*(one(p) for p in keys))
        await s_sess.close()
        await d_sess.close()
        return len(keys)

    n = asyncio.run(main())
    print(json.dumps({"objects": n}))


# --------------------------------------------------------------------------- running children


@dataclass
class Run:
    size: int  # small entries in the repository
    what: str  # "first", "no-op", "+10 entries", ...
    tool: str  # "hyperslab" (its own S3 client), "hyperslab/obstore", "rclone", "s3fs copy" ...
    cmd: list[str]
    repeat: int = 1  # which round of a repeated step (first syncs: --repeats)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    rss_mb: float = 0.0
    rc: int = 0
    src: Counts = field(default_factory=Counts)  # at A
    dst: Counts = field(default_factory=Counts)  # at this tool's destination
    report: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.error is None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["src"], d["dst"] = asdict(self.src), asdict(self.dst)
        return d


@dataclass
class Timing:
    wall_s: float  # from spawn to exit
    cpu_s: float  # user + system CPU of the child (and anything it waited for)
    rss_mb: float  # the child's peak RSS
    rc: int


def _spawn(cmd: list[str], env: dict[str, str], timeout: float, out: Any) -> Timing:
    """Run ``cmd``, writing its stdout and stderr to ``out``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    wall, rc, cpu, rss_mb = wait_timed(proc, t0, timeout, 0.002)
    return Timing(wall, cpu, rss_mb, rc)


def _spawner_main() -> None:
    """The lean helper process that starts every measured child (see :class:`Spawner`)."""
    for line in sys.stdin:
        job = json.loads(line)
        with open(job["out"], "wb") as out:
            timing = _spawn(job["cmd"], job["env"], job["timeout"], out)
        print(json.dumps(asdict(timing)), flush=True)


class Spawner:
    """Starts the measured children from a small helper process.

    A child forked from this process would report this process's peak RSS (Linux keeps
    the larger of the pre-exec and post-exec peaks, and after h5py, boto3 and hyperslab
    are imported here that is ~200 MB). The helper is a bare interpreter started before
    any of that, so a child's peak RSS is its own (floor: the helper's ~15 MB), and the
    timing runs in a process that does nothing else.
    """

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, __file__, "_spawner"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-sync-out-")

    def run(self, cmd: list[str], env: dict[str, str], timeout: float) -> tuple[Timing, str]:
        """How one child ran, and its stdout + stderr."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        out = Path(self._tmp.name) / "out"
        job = {"cmd": cmd, "env": env, "timeout": timeout, "out": str(out)}
        self._proc.stdin.write(json.dumps(job) + "\n")
        self._proc.stdin.flush()
        timing = Timing(**json.loads(self._proc.stdout.readline()))
        return timing, out.read_bytes().decode(errors="replace")

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait(10)
        self._tmp.cleanup()


def json_report(text: str) -> dict[str, Any]:
    """The JSON document a child printed: all of its output, or its last JSON line."""
    with contextlib.suppress(ValueError):
        doc = json.loads(text[text.find("{") :] if "{" in text else "")
        if isinstance(doc, dict):
            return doc
    for line in reversed(text.strip().splitlines()):
        with contextlib.suppress(ValueError):
            doc = json.loads(line.strip())
            if isinstance(doc, dict):
                return doc
    return {}


def rclone_stats(text: str) -> dict[str, Any]:
    """Objects transferred and checked, from the summary ``--stats-log-level NOTICE`` prints."""
    out: dict[str, Any] = {}
    for what, key in (("Transferred", "objects_copied"), ("Checks", "checks")):
        m = re.search(rf"^{what}:\s+(\d+) / \d+, ", text, re.MULTILINE)
        if m:
            out[key] = int(m.group(1))
    return out


def copied(run: Run) -> int | None:
    """Objects the run copied, as the tool reports it."""
    n = run.report.get("objects_copied", run.report.get("objects"))
    if n is None and run.tool.startswith("rclone") and run.ok:
        n = 0  # rclone prints no Transferred count line when it copied nothing
    return n if isinstance(n, int) else None


class Bench:
    """The four servers of one repository size and the commands that run against them."""

    def __init__(
        self, stack: contextlib.ExitStack, tmp: Path, hs: list[str], rclone: Path, spawner: Spawner
    ):
        self.spawner = spawner
        self.servers = {r: stack.enter_context(S3rver(b)) for r, b in BUCKETS.items()}
        self.proxies = {
            r: stack.enter_context(CountingProxy(s.port)) for r, s in self.servers.items()
        }
        self.hs, self.rclone = hs, str(rclone)
        self.env = self._env(tmp)

    def _env(self, tmp: Path) -> dict[str, str]:
        """Children's environment: dummy credentials, a config of our own, a scratch HOME."""
        home = tmp / "home"
        home.mkdir()
        toml = tmp / "hyperslab.toml"
        toml.write_text(
            "".join(
                f'[sites.{role}]\nurl = "s3://{bucket}"\n'
                f'endpoint_url = "{self.proxies[role].url}"\nregion = "{REGION}"\n\n'
                for role, bucket in BUCKETS.items()
            )
        )
        (tmp / "rclone.conf").write_text("")
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "HYPERSLAB_", "RCLONE_"))
        }
        env |= {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "HYPERSLAB_CONFIG": str(toml),
            "HYPERSLAB_CACHE_DIR": str(tmp / "hyperslab-cache"),
            "RCLONE_CONFIG": str(tmp / "rclone.conf"),
            "RCLONE_CACHE_DIR": str(tmp / "rclone-cache"),
        }
        for role, proxy in self.proxies.items():
            r = f"RCLONE_CONFIG_{role.upper()}_"
            env |= {
                r + "TYPE": "s3",
                r + "PROVIDER": "Other",
                r + "ENDPOINT": proxy.url,
                r + "REGION": REGION,
                r + "ACCESS_KEY_ID": KEY,
                r + "SECRET_ACCESS_KEY": SECRET,
            }
        return env

    def url(self, role: str, prefix: str = PREFIX) -> str:
        return f"s3://{BUCKETS[role]}/{prefix}"

    def hs_sync(self, *extra: str, prefix: str = PREFIX) -> list[str]:
        dst = self.url("hs", prefix)
        return [*self.hs, "sync", self.url("src"), dst, "--sources", "--json", *extra]

    def rclone_sync(self, *extra: str, prefix: str = PREFIX) -> list[str]:
        src, dst = f"src:{BUCKETS['src']}/{PREFIX}", f"rclone:{BUCKETS['rclone']}/{prefix}"
        stats = ["--stats-log-level", "NOTICE"]  # the final summary, for the object count
        return [self.rclone, "sync", src, dst, *RCLONE_FLAGS, *stats, *extra]

    def copy(self, prefix: str = PREFIX) -> list[str]:
        src, dst = self.proxies["src"].url, self.proxies["copy"].url
        return [sys.executable, __file__, "_copy", src, dst, str(COPY_JOBS), prefix]

    def run(
        self, size: int, what: str, tool: str, dst: str, cmd: list[str], repeat: int = 1
    ) -> Run:
        run = Run(size, what, tool, cmd, repeat)
        before = {r: p.counts() for r, p in self.proxies.items()}
        env = self.env
        if tool.startswith("hyperslab/"):  # another S3 client: HYPERSLAB_S3_CLIENT
            env = {**env, "HYPERSLAB_S3_CLIENT": tool.split("/", 1)[1]}
        t, text = self.spawner.run(cmd, env, timeout=1800)
        run.wall_s, run.cpu_s, run.rss_mb, run.rc = t.wall_s, t.cpu_s, t.rss_mb, t.rc
        after = {r: p.counts() for r, p in self.proxies.items()}
        run.src = after["src"] - before["src"]
        run.dst = after[dst] - before[dst]
        if tool.startswith("hyperslab") or tool == "s3fs copy":
            run.report = json_report(text)
        else:
            run.report = rclone_stats(text)
        if run.rc != 0:
            run.error = f"exit {run.rc}: {text.strip()[-1500:]}"
        label = what if repeat == 1 else f"{what} #{repeat}"
        print(
            f"  {label:14} {tool:32} {run.wall_s:7.2f} s  {run.src.requests + run.dst.requests:6d} requests"
            + (f"  FAILED {run.error[:300]}" if run.error else ""),
            flush=True,
        )
        return run


# --------------------------------------------------------------------------- one size


def unpacked_keys(
    url: str, bucket: str, keys: dict[str, int], prefix: str = PREFIX
) -> dict[str, int]:
    """``keys`` with hyperslab's object packs opened: every object a locator places in a
    pack counts as held (with its length); the packs and locators themselves do not."""
    out = {k: n for k, n in keys.items() if not k.startswith(("packs/", "locators/"))}
    for key in keys:
        if key.startswith("locators/"):
            doc = json.loads(get_text(url, bucket, key, prefix) or "{}")
            for objs in doc.get("entries", {}).values():
                for obj, (_pack, _offset, length) in objs.items():
                    out.setdefault(obj, length)
    return out


def verify(
    bench: Bench, role: str, want: dict[str, int], branch: str | None, prefix: str = PREFIX
) -> dict[str, Any]:
    """Keys at ``role``'s bucket below ``prefix`` (packed objects counted through the
    locators) against ``want`` (A's), and its branch against ``branch``."""
    listed = list_keys(bench.servers[role].url, BUCKETS[role], prefix)
    got = unpacked_keys(bench.servers[role].url, BUCKETS[role], listed, prefix)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    differ = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    out: dict[str, Any] = {
        "objects": len(got),
        "stored_objects": len(listed),
        "bytes": sum(got.values()),
        "missing": len(missing),
        "missing_by_dir": dict(Counter(k.split("/", 1)[0] for k in missing)),
        "missing_examples": missing[:5],
        "extra": len(extra),
        "extra_examples": extra[:5],
        "size_differs": differ[:5],
    }
    got_branch = get_text(bench.servers[role].url, BUCKETS[role], BRANCH, prefix)
    out["branch_matches"] = branch is not None and branch == got_branch
    return out


def run_size(
    fx: Fixture, args: argparse.Namespace, hs: list[str] | None, rclone: Path, spawner: Spawner
) -> dict[str, Any]:
    n = fx.entries
    print(
        f"\n== {n:,} small entries + {fx.big_mb} MB file: {len(fx.objects):,} objects, "
        f"{fx.bytes / MB:,.1f} MB ({dict(sorted(fx.by_dir().items()))})",
        flush=True,
    )
    runs: list[Run] = []
    out: dict[str, Any] = {"entries": n, "objects": len(fx.objects), "bytes": fx.bytes}
    out["objects_by_dir"] = dict(sorted(fx.by_dir().items()))
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-sync-")))
        bench = Bench(stack, tmp, hs or [], rclone, spawner)
        src_url = bench.servers["src"].url
        out["upload_s"] = upload(src_url, BUCKETS["src"], fx)
        first_branch = get_text(src_url, BUCKETS["src"], BRANCH)
        print(f"  uploaded to A in {out['upload_s']:.1f} s (boto3, 16 threads, untimed setup)")

        # hyperslab with each S3 client asked for (--clients), each into a prefix of its own
        hs_tools = [("hyperslab" if c == "wire" else f"hyperslab/{c}", c) for c in args.clients]

        def hs_prefix(client: str, prefix: str = PREFIX) -> str:
            return prefix if client == "wire" else f"{prefix}-{client}"

        # first syncs; hyperslab first, so it never profits from a cache the others warmed
        if hs:
            for tool, client in hs_tools:
                cmd = bench.hs_sync(prefix=hs_prefix(client))
                runs.append(bench.run(n, "first", tool, "hs", cmd))
        runs.append(bench.run(n, "first", "rclone", "rclone", bench.rclone_sync()))
        runs.append(bench.run(n, "first", "s3fs copy", "copy", bench.copy()))
        # more rounds into fresh prefixes, each starting with another tool: the servers'
        # speed drifts over minutes, and one round can favour whoever ran in a fast spell
        for k in range(2, args.repeats + 1):
            prefix = f"{PREFIX}-r{k}"
            steps = [
                (tool, "hs", bench.hs_sync(prefix=hs_prefix(client, prefix)))
                for tool, client in (hs_tools if hs else [])
            ]
            steps += [
                ("rclone", "rclone", bench.rclone_sync(prefix=prefix)),
                ("s3fs copy", "copy", bench.copy(prefix)),
            ]
            for i in range(len(steps)):
                tool, role, cmd = steps[(i + k - 1) % len(steps)]
                runs.append(bench.run(n, "first", tool, role, cmd, repeat=k))
        # no-op re-syncs
        if hs:
            for tool, client in hs_tools:
                runs.append(
                    bench.run(n, "no-op", tool, "hs", bench.hs_sync(prefix=hs_prefix(client)))
                )
        runs.append(bench.run(n, "no-op", "rclone", "rclone", bench.rclone_sync()))
        fast = "rclone " + " ".join(RCLONE_FAST)
        runs.append(bench.run(n, "no-op", fast, "rclone", bench.rclone_sync(*RCLONE_FAST)))
        # incremental: k new entries committed at A, then each tool syncs again
        out["increments"] = {}
        seed = 10_000_000  # the same new files at every size
        for k in args.increments:
            files = small_files(tmp / f"inc{k}", range(seed, seed + k))
            seed += k
            out["increments"][k] = commit_entries(src_url, files, f"inc/k{k}")
            what = f"+{k} entries"
            if hs:
                for tool, client in hs_tools:
                    cmd = bench.hs_sync(prefix=hs_prefix(client))
                    runs.append(bench.run(n, what, tool, "hs", cmd))
            runs.append(bench.run(n, what, "rclone", "rclone", bench.rclone_sync()))
        # did every copy arrive?
        want = list_keys(src_url, BUCKETS["src"])
        branch = get_text(src_url, BUCKETS["src"], BRANCH)
        out["objects_at_end"] = len(want)
        out["verify"] = {"rclone": verify(bench, "rclone", want, branch)}
        for tool, client in hs_tools if hs else []:
            out["verify"][tool] = verify(bench, "hs", want, branch, hs_prefix(client))
        # the s3fs copy only saw the first state
        first = {k: v for k, v in want.items() if k in fx.objects}
        out["verify"]["copy"] = verify(bench, "copy", first, first_branch)
    out["runs"] = [r.to_json() for r in runs]
    print_table(fx, runs)
    for role, v in out["verify"].items():
        print(
            f"  at {role:18}: {v['objects']:,} objects ({v['stored_objects']:,} stored), "
            f"missing {v['missing']} "
            f"{v['missing_by_dir'] or ''}, extra {v['extra']}, branch "
            f"{'matches A' if v['branch_matches'] else 'DIFFERS from A'}"
        )
    return out


# --------------------------------------------------------------------------- report


def find(runs: list[Run], what: str, tool: str, repeat: int = 1) -> Run | None:
    return next(
        (r for r in runs if r.what == what and r.tool == tool and r.repeat == repeat and r.ok),
        None,
    )


def ratio(other: Run | None, hs: Run | None) -> str:
    if other is None or hs is None or not other.ok or not hs.ok:
        return ""
    return f"{other.wall_s / hs.wall_s:.2f}"


def print_table(fx: Fixture, runs: list[Run]) -> None:
    print(
        f"\n  {fx.entries:,} small entries + {fx.big_mb} MB file, {len(fx.objects):,} objects "
        "(ratio = the other tool's seconds / hyperslab's: >1, hyperslab is faster)"
    )
    head = (
        f"  {'step':13} {'tool':20} {'seconds':>8} {'ratio':>6} {'CPU s':>6} {'copied':>7} {'req A':>6} "
        f"{'req dst':>7} {'MB from A':>9} {'MB to dst':>9} {'RSS MB':>6}  notes"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for r in runs:
        what = r.what if r.repeat == 1 else f"{r.what} #{r.repeat}"
        if not r.ok:
            print(f"  {what:13} {r.tool:20} FAILED: {(r.error or '')[-300:]}")
            continue
        rat = "" if r.tool == "hyperslab" else ratio(r, find(runs, r.what, "hyperslab", r.repeat))
        n = copied(r)
        note = ""
        if r.tool == "hyperslab" and isinstance(r.report.get("seconds"), int | float):
            note = f"{r.report['seconds']:.2f} s inside"
        print(
            f"  {what:13} {r.tool:20} {r.wall_s:8.2f} {rat:>6} {r.cpu_s:6.1f} "
            f"{'' if n is None else n:>7} "
            f"{r.src.requests:6d} {r.dst.requests:7d} {r.src.down / MB:9.2f} "
            f"{r.dst.up / MB:9.2f} {r.rss_mb:6.0f}  {note}"
        )


def aims(sizes: list[dict[str, Any]]) -> list[str]:
    """The issue's aims, checked against this run's hyperslab rows."""
    lines: list[str] = []

    def get(s: dict[str, Any], what: str, tool: str) -> dict[str, Any] | None:
        return next(
            (r for r in s["runs"] if r["what"] == what and r["tool"] == tool and r["rc"] == 0),
            None,
        )

    big = sizes[-1]

    def median_first(tool: str) -> tuple[float, list[float]] | None:
        walls = sorted(
            r["wall_s"]
            for r in big["runs"]
            if r["what"] == "first" and r["tool"] == tool and r["rc"] == 0
        )
        return (statistics.median(walls), walls) if walls else None

    hs = median_first("hyperslab")
    if hs is None:
        return ["hyperslab sync did not run (or failed): no aims checked"]
    for tool, aim, text in (
        ("rclone", 1.5, "first sync >= 1.5x faster than rclone"),
        ("s3fs copy", 0.9, "first sync >= 0.9x the speed of a plain parallel s3fs copy"),
    ):
        other = median_first(tool)
        if other is None:
            continue
        x = other[0] / hs[0]
        rounds = ", ".join(f"{w:.1f}" for w in other[1])
        mine = ", ".join(f"{w:.1f}" for w in hs[1])
        lines.append(
            f"{text}: {x:.2f}x (medians of {len(hs[1])} rounds: hyperslab {mine} s; "
            f"{tool} {rounds} s) -> {'met' if x >= aim else 'NOT met'}"
        )
    for s in sizes:
        r = get(s, "no-op", "hyperslab")
        if r:
            inside = r["report"].get("seconds")
            lines.append(
                f"no-op re-sync < 0.5 s at {s['objects']:,} objects: {r['wall_s']:.2f} s whole "
                f"process ({_secs(inside)} inside sync), {_reqs(r)} requests -> "
                f"{'met' if r['wall_s'] < 0.5 else 'NOT met'}"
                + (" (met inside sync)" if r["wall_s"] >= 0.5 and (inside or 1) < 0.5 else "")
            )
    incs = sorted(
        {r["what"] for s in sizes for r in s["runs"] if r["what"].startswith("+")},
        key=lambda w: int(w[1:].split()[0]),
    )
    for what in incs:
        cells = []
        for s in sizes:
            r = get(s, what, "hyperslab")
            if r:
                cells.append(
                    f"{s['objects']:,} objects: {r['wall_s']:.2f} s ({_secs(r['report'].get('seconds'))} "
                    f"inside), {_reqs(r)} requests, {r['report'].get('objects_copied')} copied"
                )
        if cells:
            lines.append(f"incremental sync, {what}: " + "; ".join(cells))
    return lines


def clients_summary(sizes: list[dict[str, Any]]) -> list[str]:
    """hyperslab's S3 clients side by side (--clients): per step, the median wall seconds,
    CPU seconds and requests per second of each, and each other client against ``wire``."""
    lines: list[str] = []
    for s in sizes:
        tools = sorted({r["tool"] for r in s["runs"] if r["tool"].startswith("hyperslab")})
        if len(tools) < 2:
            continue
        lines.append(f"{s['objects']:,} objects (medians over rounds; ratio = client / wire):")
        steps = list(dict.fromkeys(r["what"] for r in s["runs"]))
        for what in steps:
            cells: dict[str, tuple[float, float, float]] = {}
            for tool in tools:
                rs = [
                    r for r in s["runs"] if r["what"] == what and r["tool"] == tool and r["rc"] == 0
                ]
                if rs:
                    wall = statistics.median(r["wall_s"] for r in rs)
                    cpu = statistics.median(r["cpu_s"] for r in rs)
                    rps = statistics.median(_reqs(r) / r["wall_s"] for r in rs)
                    cells[tool] = (wall, cpu, rps)
            if "hyperslab" not in cells:
                continue
            base = cells["hyperslab"]
            parts = []
            for tool, (wall, cpu, rps) in cells.items():
                name = "wire" if tool == "hyperslab" else tool.split("/", 1)[1]
                rel = (
                    ""
                    if tool == "hyperslab"
                    else (
                        f" (wall {wall / base[0]:.2f}x, CPU {cpu / base[1]:.2f}x, req/s {rps / base[2]:.2f}x)"
                    )
                )
                parts.append(f"{name} {wall:.2f} s, {cpu:.2f} CPU-s, {rps:,.0f} req/s{rel}")
            lines.append(f"  {what:12} " + "; ".join(parts))
    return lines


def _reqs(r: dict[str, Any]) -> int:
    return int(r["src"]["requests"] + r["dst"]["requests"])


def _secs(x: object) -> str:
    return f"{x:.2f} s" if isinstance(x, int | float) else "?"


# --------------------------------------------------------------------------- main


def hyperslab_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("hyperslab")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "hyperslab.cli"]


def hyperslab_sync_available(hs: list[str]) -> str | None:
    """None if ``hyperslab sync --help`` works, else why not."""
    proc = subprocess.run([*hs, "sync", "--help"], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode == 0:
        return None
    return (proc.stderr or proc.stdout).strip()[-300:]


def cli_floor(spawner: Spawner, hs: list[str]) -> float:
    """Seconds to spawn ``hyperslab --version`` (interpreter + CLI imports), best of 3."""
    return min(spawner.run([*hs, "--version"], dict(os.environ), 60)[0].wall_s for _ in range(3))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("command", nargs="?", choices=["run", "install"], default="run")
    ap.add_argument("--entries", default="250,2500", help="small entries per repository size")
    ap.add_argument("--big-mb", type=int, default=78, help="size of the one big file (MB)")
    ap.add_argument("--increments", default="10,100", help="new entries per incremental sync")
    ap.add_argument(
        "--repeats", type=int, default=3, help="rounds of first syncs per size (medians compared)"
    )
    ap.add_argument("--dir", type=Path, default=ROOT / "bench-data", help="work directory")
    ap.add_argument("--json", type=Path, help="results file (default: DIR/sync/results.json)")
    ap.add_argument("--rclone", type=Path, help="an rclone binary (default: the Debian package)")
    ap.add_argument("--no-hyperslab", action="store_true", help="baselines only")
    ap.add_argument(
        "--clients",
        default="wire",
        help="hyperslab's S3 clients to time, each a contender of its own (HYPERSLAB_S3_CLIENT): "
        "wire (its own, the default), obstore, botocore; e.g. --clients wire,obstore",
    )
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_copy"]:  # child process of the copy baseline
        plain_copy(argv[1], argv[2], int(argv[3]), *argv[4:5])
        return 0
    if argv[:1] == ["_spawner"]:
        _spawner_main()
        return 0
    args = ap.parse_args(argv)
    args.increments = [int(k) for k in args.increments.split(",") if k]
    args.clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    entries = [int(n) for n in args.entries.split(",") if n]
    spawner = Spawner()  # first, while this process is still small
    try:
        ensure_s3rver()
        rclone = args.rclone or ensure_rclone()
        if args.command == "install":
            print(f"{rclone_version(rclone)}: {rclone}")
            return 0
        use_loopback_credentials(region=REGION)
        data = args.dir.resolve() / "sync"
        data.mkdir(parents=True, exist_ok=True)
        hs: list[str] | None = hyperslab_cmd()
        why = (
            "skipped (--no-hyperslab)" if args.no_hyperslab else hyperslab_sync_available(hs or [])
        )
        if why:
            print(f"hyperslab sync: not available ({why}); running the baselines only")
            hs = None
        results: dict[str, Any] = {
            "rclone": rclone_version(rclone),
            "rclone_flags": RCLONE_FLAGS,
            "rclone_fast_flags": RCLONE_FAST,
            "copy_jobs": COPY_JOBS,
            "hyperslab_cmd": f"hyperslab sync s3://src/{PREFIX} s3://hs-dst/{PREFIX} --sources --json",
            "hyperslab_missing": why,
            "load_average_start": os.getloadavg()[0],
            "sizes": [],
        }
        if hs:
            results["hyperslab_cli_floor_s"] = cli_floor(spawner, hs)
        fixtures = [fixture(data, n, args.big_mb) for n in entries]
        print(
            f"{results['rclone']}; load average {results['load_average_start']:.1f} on "
            f"{os.cpu_count()} cores"
            + (
                f"; `hyperslab --version` spawns in {results['hyperslab_cli_floor_s']:.2f} s"
                if hs
                else ""
            )
        )
        for fx in fixtures:
            results["sizes"].append(run_size(fx, args, hs, rclone, spawner))
        results["aims"] = aims(results["sizes"])
        results["clients"] = clients_summary(results["sizes"])
        if results["clients"]:
            print("\nhyperslab's S3 clients:")
            for line in results["clients"]:
                print("  " + line)
        results["load_average_end"] = os.getloadavg()[0]
        print("\nthe issue's aims (largest size for the first sync):")
        for line in results["aims"]:
            print("  " + line)
        print(f"load average at the end {results['load_average_end']:.1f}")
        out = args.json or data / "results.json"
        out.write_text(json.dumps(results, indent=1, default=str))
        print(f"results: {out}")
    except BenchSetupError as exc:
        print(f"benchmarks/sync.py: {exc}", file=sys.stderr)
        return 2
    finally:
        spawner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
