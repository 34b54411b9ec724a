"""export-refs: plain kerchunk maps with one site's URLs, read back with fsspec + zarr only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401 - h5py reads the bitshuffle samples through it
import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from hyperslab.access.export import export_refs
from hyperslab.cli import app
from hyperslab.convert.ingest import ingest
from hyperslab.convert.verify import open_refs_store, verify_store
from hyperslab.errors import BadInputError, ConfigError, NotFoundError
from hyperslab.references.refmap_files import read_refmap
from hyperslab.references.repository import Repository
from tests.access.conftest import CorpusRepo
from tests.conftest import S3Endpoint

runner = CliRunner()


def cli(*args: str) -> tuple[int, dict[str, Any]]:
    res = runner.invoke(app, [*args, "--json"], catch_exceptions=False)
    return res.exit_code, json.loads(res.stdout)


def remote(s3: S3Endpoint) -> dict[str, Any]:
    """What a plain fsspec user passes to reach the test S3 server (never in the refs).

    zarr 3 drives the filesystem from its own event loop: s3fs must be asynchronous.
    """
    return {
        "endpoint_url": s3.endpoint_url,
        "key": s3.key,
        "secret": s3.secret,
        "asynchronous": True,
        "skip_instance_cache": True,
    }


def assert_no_secrets(text: str, s3: S3Endpoint) -> None:
    assert "hyperslab-source:" not in text
    for secret in (s3.endpoint_url, s3.key, s3.secret, "endpoint"):
        assert secret not in text


@pytest.mark.parametrize("entry", ["corpus_nexus", "corpus_filters", "corpus_layouts"])
def test_json_export_reads_bit_exact_with_plain_fsspec(
    corpus_repo: CorpusRepo, s3_env: None, s3_endpoint: S3Endpoint, tmp_path: Path, entry: str
) -> None:
    out = tmp_path / f"{entry}.json"
    res = export_refs(corpus_repo.spec, entry, corpus_repo.spec, out)
    assert res.path == out.absolute() and res.format == "json" and res.remote_protocol == "s3"
    text = out.read_text()
    assert_no_secrets(text, s3_endpoint)
    urls = set(read_refmap(out).sources)
    assert urls and urls == {s["url"] for s in res.sources}
    assert all(u.startswith(f"{corpus_repo.spec}/sources/") for u in urls)
    # plain fsspec reference:// + zarr, the endpoint given as the reader's own option
    store, paths = open_refs_store(out, remote_options=remote(s3_endpoint))
    report = verify_store(corpus_repo.files[entry], store, paths, label=str(out))
    assert report.ok, [(a.path, a.detail) for a in report.arrays if not a.ok]
    assert report.counts["virtual"] > 0 and report.counts["arrays"] == res.arrays


def test_parquet_export_of_a_sample_with_plain_fsspec(
    nexus_repo: CorpusRepo, s3_env: None, s3_endpoint: S3Endpoint, tmp_path: Path
) -> None:
    from fsspec.implementations.reference import LazyReferenceMapper, ReferenceFileSystem
    from zarr.storage import FsspecStore

    out = tmp_path / "scan.parquet"
    code, doc = cli(
        "export-refs", nexus_repo.spec, "scan_0002_bslz4", "--site", nexus_repo.spec, "-o", str(out)
    )
    assert code == 0, doc
    assert doc["ok"] and doc["format"] == "parquet" and doc["remote_protocol"] == "s3"
    assert (out / ".zmetadata").is_file()
    assert_no_secrets(json.dumps(doc), s3_endpoint)
    assert all(u.startswith(f"{nexus_repo.spec}/sources/") for u in read_refmap(out).sources)
    # fsspec's own lazy Parquet reader (pyarrow engine; the protocol named, as documented)
    refs = LazyReferenceMapper(str(out), engine="pyarrow")
    fs = ReferenceFileSystem(
        refs, remote_protocol="s3", remote_options=remote(s3_endpoint), asynchronous=True
    )
    frames = zarr.open_array(
        FsspecStore(fs, read_only=True), path="entry/data/data", mode="r", zarr_format=2
    )
    with h5py.File(nexus_repo.files["scan_0002_bslz4"]) as f:
        want = f["entry/data/data"][()]
    got = frames[...]
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


def test_site_must_hold_every_source(corpus_repo: CorpusRepo, s3_env: None, tmp_path: Path) -> None:
    empty = f"{corpus_repo.spec}-mirror"  # another prefix: holds nothing
    out = tmp_path / "x.json"
    with pytest.raises(NotFoundError, match=r"does not hold source corpus_nexus\.nxs") as info:
        export_refs(corpus_repo.spec, "corpus_nexus", empty, out)
    assert info.value.details["missing"][0].startswith("corpus_nexus.nxs (sha256 ")
    assert not out.exists()
    code, doc = cli(
        "export-refs", corpus_repo.spec, "corpus_nexus", "--site", empty, "-o", str(out)
    )
    assert code == 3 and doc["error"]["code"] == "not_found"
    assert "corpus_nexus.nxs" in doc["error"]["message"]
    assert not out.exists()


def test_bad_input(corpus_repo: CorpusRepo, s3_env: None, tmp_path: Path) -> None:
    spec = corpus_repo.spec
    with pytest.raises(BadInputError, match=r"\*\.json .* \*\.parquet"):
        export_refs(spec, "corpus_nexus", spec, tmp_path / "refs.txt")
    # the name is checked before anything is opened
    code, doc = cli("export-refs", "s3://no-bucket/none", "e", "--site", spec, "-o", "refs.csv")
    assert code == 2 and doc["error"]["code"] == "bad_input"
    code, doc = cli(
        "export-refs", spec, "no_such_entry", "--site", spec, "-o", str(tmp_path / "a.json")
    )
    assert code == 3 and "no_such_entry" in doc["error"]["message"]
    code, doc = cli(
        "export-refs", spec, "corpus_nexus", "--site", spec, "--ref", "no-such-tag", "-o", "a.json"
    )
    assert code == 3 and doc["error"]["code"] == "not_found"
    with pytest.raises(ConfigError, match="neither a configured site"):
        export_refs(spec, "corpus_nexus", "nosuchsite", tmp_path / "a.json")
    assert list(tmp_path.iterdir()) == []


def test_site_by_name_with_a_configured_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--site cloud` for REPO given as `beamline:path`: the same path at the named site."""
    beamline, cloud = tmp_path / "beamline", tmp_path / "cloud"
    config = tmp_path / "hyperslab.toml"
    config.write_text(
        f'[sites.beamline]\nurl = "{beamline.as_uri()}"\n[sites.cloud]\nurl = "{cloud.as_uri()}"\n'
    )
    monkeypatch.setenv("HYPERSLAB_CONFIG", str(config))
    f = tmp_path / "scan.h5"
    with h5py.File(f, "w") as h:
        h.create_dataset(
            "frames", data=np.arange(4000, dtype="<i4").reshape(4, 1000), chunks=(1, 1000)
        )
    repo = Repository.init("beamline:repos/run1")
    ingest(repo, [str(f)], upload_sources=True)
    code, doc = cli(
        "export-refs",
        "beamline:repos/run1",
        "scan",
        "--site",
        "beamline",
        "-o",
        str(tmp_path / "b.json"),
    )
    assert code == 0, doc
    assert doc["sources"][0]["url"].startswith(f"{beamline.as_uri()}/repos/run1/sources/")
    store, _ = open_refs_store(tmp_path / "b.json")
    np.testing.assert_array_equal(
        zarr.open_array(store, path="frames", mode="r", zarr_format=2)[...],
        np.arange(4000).reshape(4, 1000),
    )
    # the cloud site has no copy of the source (nothing was synced): refused by name
    code, doc = cli(
        "export-refs",
        "beamline:repos/run1",
        "scan",
        "--site",
        "cloud",
        "-o",
        str(tmp_path / "c.json"),
    )
    assert code == 3 and "scan.h5" in doc["error"]["message"]
    # a site name needs REPO as SITE:path
    code, doc = cli(
        "export-refs", str(beamline / "repos" / "run1"), "scan", "--site", "cloud", "-o", "d.json"
    )
    assert code == 2 and "SITE:path" in doc["error"]["message"]


@pytest.mark.parametrize("output", ["refs.json", "refs.parquet"])
def test_entry_stored_as_parquet_exports_every_reference(tmp_path: Path, output: str) -> None:
    """Large entries keep their map as Parquet in the repository (read lazily by stores):
    the export must still carry every reference."""
    f = tmp_path / "big.h5"
    data = np.arange(60_000, dtype="<i4").reshape(60, 1000)
    with h5py.File(f, "w") as h:
        h.create_dataset("frames", data=data, chunks=(1, 1000))
    repo = Repository.init(str(tmp_path / "repo"))
    ingest(repo, [str(f)], upload_sources=True, refmap_format="parquet")
    assert repo.entry("main", "big")["refmap"]["format"] == "parquet"
    res = export_refs(str(tmp_path / "repo"), "big", str(tmp_path / "repo"), tmp_path / output)
    assert res.refs == 60
    store, _ = open_refs_store(tmp_path / output)
    got = zarr.open_array(store, path="frames", mode="r", zarr_format=2)[...]
    assert got.tobytes() == data.tobytes()
