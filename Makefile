# hyperslab — two commands on a fresh machine:  make demo   and   make test
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HS := $(VENV)/bin/hyperslab
STAMP := $(VENV)/.installed-stamp
DEMO := demo-data

.PHONY: install demo test lint readme bench bench-ingest bench-frames bench-compress bench-access bench-sync bench-ml bench-chunk bench-serve clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,bench]" "s3fs>=2025"
	@touch $(STAMP)

install: $(STAMP)

demo: install
	@rm -rf $(DEMO)
	@echo "== 1. sample NeXus detector files (Pilatus-like, gzip and bitshuffle-LZ4)"
	$(HS) sample $(DEMO)/beamline --frames 20
	@echo "== 2. reference maps (refs): read each file's chunk index, write one map per file"
	$(HS) refs $(DEMO)/beamline -o $(DEMO)/maps/
	@echo "== 3. verify every array bit for bit against h5py"
	$(HS) verify $(DEMO)/beamline/scan_0001_gzip.nxs $(DEMO)/maps/scan_0001_gzip.json
	$(HS) verify $(DEMO)/beamline/scan_0002_bslz4.nxs $(DEMO)/maps/scan_0002_bslz4.json
	@echo "== 4. commit them to a versioned repository (local directory site), search, check"
	$(HS) init $(DEMO)/repo
	$(HS) ingest $(DEMO)/beamline --repo $(DEMO)/repo --name run42 -m "run 42" --upload-sources -q
	@echo "== 4b. the Pilatus CBF frames as one entry, then compressed into the repository (bitshuffle-LZ4)"
	$(HS) ingest $(DEMO)/beamline/pilatus_cbf --repo $(DEMO)/repo --name run42/frames -q
	$(HS) compress $(DEMO)/repo run42/frames -q
	$(HS) log $(DEMO)/repo
	$(HS) search $(DEMO)/repo 'sample~insulin energy>12'
	$(HS) fsck $(DEMO)/repo -q
	@echo "== 5. sync to a second site (the 'cloud' directory): refs, source files, hot frames"
	$(HS) sync $(DEMO)/repo $(DEMO)/cloud --sources --hot examples/hot.toml
	$(HS) sync $(DEMO)/repo $(DEMO)/cloud --sources --hot examples/hot.toml
	$(HS) fsck $(DEMO)/cloud -q
	@echo "== 6. read a slice with xarray from the second site (hyperslab.open_dataset)"
	$(PY) examples/open_dataset.py $(DEMO)/cloud run42/scan_0001_gzip
	@echo "== 7. export plain kerchunk refs for users without hyperslab; read them with fsspec"
	$(HS) export-refs $(DEMO)/repo run42/scan_0001_gzip --site $(DEMO)/repo -o $(DEMO)/export/scan_0001_gzip.json
	$(PY) examples/read_slice.py $(DEMO)/export/scan_0001_gzip.json

LINT_PATHS := $(wildcard src tests benchmarks examples infra lint)

lint: install
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

test: install lint
	$(VENV)/bin/pytest -n 2 -q -p no:cacheprovider

# Run the README's examples and rewrite the outputs it shows that changed
# (tests/test_readme.py checks them; see tests/readme_examples.py)
readme: install
	$(PY) -m tests.readme_examples --write

bench: install
	$(PY) benchmarks/refgen.py
	$(PY) benchmarks/repo.py
	$(PY) benchmarks/commit.py
	$(MAKE) --no-print-directory bench-ingest
	$(MAKE) --no-print-directory bench-frames
	$(MAKE) --no-print-directory bench-compress
	$(MAKE) --no-print-directory bench-access
	$(MAKE) --no-print-directory bench-sync
	$(MAKE) --no-print-directory bench-chunk
	$(MAKE) --no-print-directory bench-ml
	$(MAKE) --no-print-directory bench-serve

# Ingest throughput: serial, --dask local:1 and local:2 against kerchunk's dask.bag
# recipe, on 1,000 small NeXus files and 4 large stacks written once into bench-data/ingest/.
# Extra options: make bench-ingest INGEST_ARGS="--small 200 --repeats 5"
bench-ingest: install
	$(PY) benchmarks/ingest.py $(INGEST_ARGS)

# Frame-series ingest rate (frames/s): hyperslab refs and ingest of 2,000 Pilatus-like
# frames as CBF, deflate TIFF and uncompressed TIFF, against tifffile's own fsspec
# references and a fabio/tifffile + h5py "stack into NeXus" script. The first run writes
# the frames into bench-data/frames/. Extra options: make bench-frames FRAMES_ARGS="--repeats 5"
bench-frames: install
	$(PY) benchmarks/frames.py $(FRAMES_ARGS)

# hyperslab compress (bitshuffle-LZ4, zstd, Blosc2) against h5py + hdf5plugin writing the
# same codec, on photon-counting Pilatus 2M frames (written once into bench-data/compress/),
# and cold reads of a frame and a pixel series before and after on loopback S3 (s3rver,
# like bench-access). Extra options: make bench-compress COMPRESS_ARGS="--frames 100"
bench-compress: install
	$(PY) benchmarks/compress.py $(COMPRESS_ARGS)

# Range reads on loopback S3 (s3rver, an npm package installed once into the
# git-ignored benchmarks/.node; needs Node.js and npm). The first run writes a
# 1 GB NeXus file into bench-data/access/. Extra options: make bench-access ARGS="--repeats 5"
bench-access: install
	$(PY) benchmarks/loopback_s3.py install
	$(PY) benchmarks/access.py $(ARGS)

# hyperslab sync against rclone 1.60 and a plain s3fs copy between loopback s3rver
# servers. rclone is Debian's package, fetched with `apt-get download` (no root) and
# unpacked into the git-ignored benchmarks/.rclone. The first run builds the fixture
# repositories (~10,000 objects + a 78 MB file) into bench-data/sync/.
# `sync.py install` also installs s3rver. Extra options (SYNC_ARGS, since `make bench`
# passes ARGS to bench-access): make bench-sync SYNC_ARGS="--entries 2500 --increments 10"
bench-sync: install
	$(PY) benchmarks/sync.py install
	$(PY) benchmarks/sync.py $(SYNC_ARGS)

# One shuffled training epoch over >= 1 GB of frames on loopback s3rver: hyperslab.ml
# against a naive h5py Dataset, kerchunk + zarr and the decode-bound limit. The first
# run writes the data into bench-data/ml/. Extra options: make bench-ml ML_ARGS="--workers 4"
bench-ml: install
	$(PY) benchmarks/loopback_s3.py install
	$(PY) benchmarks/ml.py $(ML_ARGS)

# One cold chunk (a 1024 x 1024 uint16 gzip frame, array already open) on loopback
# s3rver: hyperslab against kerchunk + zarr, local h5py and the floor (one range GET
# plus one inflate). Extra options: make bench-chunk CHUNK_ARGS="--repeats 30"
bench-chunk: install
	$(PY) benchmarks/loopback_s3.py install
	$(PY) benchmarks/chunk.py $(CHUNK_ARGS)

# hyperslab serve against Tiled 0.2.20 (`tiled serve directory`) on loopback, the same
# 78 MB NeXus stack: single reads, first response from a cold server and a 16-client load
# test. Tiled is installed once into its own git-ignored venv, bench-data/tiled-venv
# (or give one: TILED=/path/to/tiled). Extra options: make bench-serve SERVE_ARGS="--repeats 9"
bench-serve: install
	$(PY) benchmarks/serve.py install
	$(PY) benchmarks/serve.py $(SERVE_ARGS)

clean:
	rm -rf $(VENV) $(DEMO) bench-data .pytest_cache .mypy_cache .ruff_cache
