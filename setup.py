"""Image-dataset pipeline on Apache Beam: manifests -> fetch -> hashes -> Parquet + blobs."""
import setuptools

BEAM_VERSION = "2.77.0"  # the Dockerfile's SDK image must use the same version

setuptools.setup(
    name="beam-image-datasets",
    version="0.1.0",
    description="Clean, deduplicated, labelled image datasets from public URL manifests, on Apache Beam",
    packages=setuptools.find_packages(include=["pipelines", "pipelines.*", "transforms", "transforms.*"]),
    package_data={"pipelines.demo": ["sample/*"]},
    python_requires=">=3.10",
    install_requires=[
        f"apache-beam[gcp]=={BEAM_VERSION}",
        "pillow>=10",
        "imagehash>=4.3",
        "pyarrow>=14",
        "google-cloud-storage>=2.10",
        "aiohttp>=3.9",
        "brotli>=1.1",  # aiohttp decodes Content-Encoding: br only with it
        "backports.zstd>=1.0; python_version < '3.14'",  # ... and zstd only with this
        "ijson>=3.2",  # streams the 463K-object imagenet_captions.json array
        "matplotlib>=3.7",  # OUT/report.html plots (Agg, SVG)
        "scipy>=1.10",  # the picture views' DCT (transforms/hashing.py); imagehash needs it too
        "numpy>=2.0",  # dedup's near search: np.bitwise_count (Beam itself allows numpy<2.5)
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            # `make test` runs the suite on every core, one test file per worker (-n auto --dist loadfile)
            "pytest-xdist>=3.5",
            "gcp-storage-emulator>=2024.8",
            # `make lint` (configured in pyproject.toml): style, format and types.
            "ruff>=0.6",
            "mypy>=1.10",
            # tests/pipelines/test_export.py reads the export back with the real loaders
            "webdataset>=0.2.90",
            "datasets>=2.14",
        ],
        # bench/: the harness samples process trees (psutil); py-spy profiles the pipeline.
        "bench": [
            "psutil>=5.9",
            "py-spy>=0.3",
            "faiss-cpu>=1.8",  # bench/faiss_run.py: the peer of the dedup job (IndexBinaryMultiHash)
            # make bench-dedup-quality: the labelled set is cut from the photos these wheels ship
            "scikit-image>=0.22",
            "scikit-learn>=1.3",
        ],
    },
)
