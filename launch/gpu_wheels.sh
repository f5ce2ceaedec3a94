#!/usr/bin/env bash
# The Python packages launch/gpu_check.sh needs that the GPU machines' image lacks, as wheels
# for its Python 3.12, into .whl/ (not committed: .gitignore). Run where pip reaches PyPI;
# the check installs them with pip --no-index.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES="grain array_record tensorflow-datasets ml_collections tensorboardX sacremoses
  dm-tree immutabledict simple-parsing docstring-parser tensorflow-metadata termcolor
  toml more-itertools importlib_resources"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl $PACKAGES
# promise ships as a source distribution only: a pure-Python wheel built here.
python3 -m pip wheel -q --no-deps -w .whl promise
du -sh .whl
