"""Prepare a GPU run of the benchmarks on the lent device machine (see the README).

    python -m benchmarks.prepare_device            # writes .whl/ and .gpu_data/ (both git-ignored)

The device image has torch, scikit-learn, scipy and tqdm but not skorch or imbalanced-learn, and
``../shared`` does not travel: this writes wheels of the missing pure-Python packages to ``.whl/``
and subsets of the shared image data (uint8, the ``shared/data`` layout) plus the graphs to
``.gpu_data/``, together under the device's 64 MiB limit. Carry both and point the loaders at the
data with ``SKPCORESET_DATA=.gpu_data``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from skpcoreset.datasets import find_data_file

ROOT = Path(__file__).resolve().parent.parent
# Versions this repo is tested with; scikit-learn is carried too, the image's may predate 1.6.
WHEELS = ["skorch==1.4.0", "imbalanced-learn==0.14.2", "scikit-learn==1.9.1"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
# Rows kept per file (train, test): CIFAR-10 is 68 MB whole, so a stratified-enough random subset.
SUBSETS = {"cifar10.npz": (10000, 2000), "fashion_mnist.npz": (10000, 2000), "mnist.npz": (5000, 1000)}


def download_wheels(out: Path) -> None:
    out.mkdir(exist_ok=True)
    platform_args = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            *platform_args,
            "-d",
            str(out),
            *WHEELS,
        ],
        check=True,
    )


def subset_images(name: str, n_train: int, n_test: int, out: Path, seed: int = 0) -> None:
    path = find_data_file(name)
    if path is None:
        print(f"{name}: not in shared/data, skipped")
        return
    rng = np.random.RandomState(seed)
    with np.load(path) as data:
        keep_train = rng.choice(len(data["y_train"]), min(n_train, len(data["y_train"])), replace=False)
        keep_test = rng.choice(len(data["y_test"]), min(n_test, len(data["y_test"])), replace=False)
        np.savez_compressed(
            out / name,
            X_train=data["X_train"][keep_train],
            y_train=data["y_train"][keep_train],
            X_test=data["X_test"][keep_test],
            y_test=data["y_test"][keep_test],
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-wheels", action="store_true")
    args = parser.parse_args()
    data_out = ROOT / ".gpu_data"
    data_out.mkdir(exist_ok=True)
    for name, (n_train, n_test) in SUBSETS.items():
        subset_images(name, n_train, n_test, data_out)
    cora = find_data_file("graphs/cora.npz")
    if cora is not None:
        shutil.copytree(cora.parent, data_out / "graphs", dirs_exist_ok=True)
    if not args.no_wheels:
        download_wheels(ROOT / ".whl")
    total = sum(f.stat().st_size for d in (data_out, ROOT / ".whl") if d.exists() for f in d.rglob("*") if f.is_file())
    print(f"prepared .gpu_data and .whl: {total / 2**20:.1f} MiB (the device carries at most 64 MiB)")


if __name__ == "__main__":
    main()
