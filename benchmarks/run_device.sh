#!/bin/bash
# The --device benchmarks of the six released architectures on one GPU.
#
#   OUT=runs/device bash benchmarks/run_device.sh
#
# For each architecture: forward and train step (forward + backward + Adam),
# float32 and bf16 compute, attention 'auto' (cuDNN's fused kernel where the
# shapes and dtypes allow, else chunked or einsum) against 'chunked'. Results
# go to $OUT/device.jsonl and the tables to $OUT/device.log. Needs jax with
# CUDA, optax and absl; dm-haiku, jmp and ml-collections are installed from
# .whl/ when present (wheels carried to a machine without a package index).
# Layers are looped with lax.scan to keep compile times short.
set -u
OUT=${OUT:-runs/device}
ARCHS=${ARCHS:-"language_perceiver_io_bytes imagenet_fourier_position_encoding optical_flow video_autoencoding imagenet_learned_position_encoding imagenet_conv_preprocessing"}
PER_ARCH_TIMEOUT=${PER_ARCH_TIMEOUT:-240}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c 'import jax; print("jax", jax.__version__, jax.devices())'
} 2>&1 | tee "$OUT/device.log"

batch_size() {
  case $1 in
    language_perceiver_io_bytes) echo 8 ;;
    imagenet_*) echo 16 ;;
    *) echo 1 ;;
  esac
}

for arch in $ARCHS; do
  echo "=== $arch (batch $(batch_size "$arch")) $(date +%T)" | tee -a "$OUT/device.log"
  python3 -m benchmarks.run --device --arch="$arch" \
    --batch_size="$(batch_size "$arch")" --repeats=5 \
    --override=runtime.scan_layers=True --timeout="$PER_ARCH_TIMEOUT" \
    --out="$OUT/device.jsonl" ${EXTRA_ARGS:-} 2>&1 \
    | grep -v -i warning | tee -a "$OUT/device.log"
done
echo "done $(date +%T)" | tee -a "$OUT/device.log"
