#!/bin/sh
# One-shot accelerator check (benchmarks/device_check.py): ./benchmarks/device_check.sh --out=F.json [--quick]
cd "$(dirname "$0")/.." && exec "${PYTHON:-python}" -m benchmarks.device_check "$@"
