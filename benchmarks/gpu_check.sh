#!/usr/bin/env bash
# One pass of the GPU checks on a lent CUDA machine with no network (no pycuda, no TensorRT there).
#
# Run from the root of the checkout that travels to the machine, with:
#   .whl/       cp312 wheels: pycuda (built elsewhere against the CUDA 13 headers), its pure-Python
#               needs (pytools, platformdirs, mako, siphash24) and simplejpeg
#   .gpucheck/  this repository's code (git archive of the branch under test)
#
#   bash .gpucheck/benchmarks/gpu_check.sh
#
# Writes env.log, probe.log, pytest.log, pytest_cpu.log, bench.log, bench.json and sanitizer.log to $OUT
# (or /tmp/gpu_check_out). Every step is under `timeout`; the whole script ends within about 6 minutes.
set -u -o pipefail
ROOT=$(pwd)
OUT=${OUT:-/tmp/gpu_check_out}
WHL=${WHL:-$ROOT/.whl}
SRC=${SRC:-$ROOT/.gpucheck}
PY=${PY:-python3}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export XDG_CACHE_HOME=/tmp/gpu_check_cache
step() { echo; echo "=== $(date -u +%H:%M:%S) $*"; }

{
    step "machine"
    nvidia-smi || true
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv || true
    $PY --version
    command -v nvcc && nvcc --version | tail -2
    $PY -c "import numpy, cv2, pytest; print('numpy', numpy.__version__, 'opencv', cv2.__version__, 'pytest', pytest.__version__)"

    step "wheels into /tmp/site"
    timeout 120 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHL"/*.whl || exit 1

    step "edgetile from $SRC (editable, C merge extension built for this Python)"
    (cd "$SRC" && timeout 180 $PY -m pip install -q --no-index --no-deps --no-build-isolation -e .) || exit 1
} 2>&1 | tee "$OUT/env.log" || exit 1
export PYTHONPATH=/tmp/site

{
    step "versions"
    $PY -c "
import pycuda, pycuda.driver as drv
drv.init()
d = drv.Device(0)
print('pycuda', pycuda.VERSION_TEXT, 'built for CUDA', drv.get_version(), 'driver API', drv.get_driver_version())
print(d.name(), 'compute capability', d.compute_capability(), 'integrated', d.get_attribute(drv.device_attribute.INTEGRATED))
import edgetile.runtime, edgetile.runtime._merge as m
print('edgetile', edgetile.runtime.__version__, 'C merge', m.__file__)
from edgetile.runtime.cuda.device import cuda_status
print('cuda_status', cuda_status())
"
    step "probe: do pycuda's async copy and stream sync need a current context? (raw pycuda, none pushed)"
    timeout 60 $PY -c "
import numpy as np, pycuda.driver as drv
drv.init()
ctx = drv.Device(0).retain_primary_context()
ctx.push()
s = drv.Stream(); buf = drv.mem_alloc(16); h = drv.pagelocked_empty(4, np.float32)
drv.Context.pop()
for name, f in [('memcpy_htod_async', lambda: drv.memcpy_htod_async(buf, h, s)),
                ('memcpy_dtoh_async', lambda: drv.memcpy_dtoh_async(h, buf, s)),
                ('memset_d32_async', lambda: drv.memset_d32_async(buf, 0, 4, s)),
                ('Stream.synchronize', s.synchronize)]:
    try:
        f(); print(name + ': works with no current context')
    except drv.Error as e:
        print(name + ': FAILS with no current context:', type(e).__name__, e)
ctx.push(); s.synchronize(); buf.free(); drv.Context.pop(); ctx.detach()
"
} 2>&1 | tee "$OUT/probe.log"

cd "$SRC" || exit 1
step "pytest -m needs_cuda over tests/ (collection errors of unrelated modules tolerated)" | tee "$OUT/pytest.log"
timeout 240 $PY -m pytest -p no:cacheprovider -m needs_cuda -v -rs --timeout 120 --continue-on-collection-errors \
    tests/ 2>&1 | tee -a "$OUT/pytest.log"
echo "pytest needs_cuda exit: $?" | tee -a "$OUT/pytest.log"

step "the rest of tests/test_cuda_*.py and tests/test_tensorrt_backend.py" | tee "$OUT/pytest_cpu.log"
timeout 180 $PY -m pytest -p no:cacheprovider -v -rs --timeout 120 tests/test_cuda_compile.py tests/test_cuda_host.py \
    tests/test_cuda_reference.py tests/test_cuda_pipeline.py tests/test_tensorrt_backend.py 2>&1 | tee -a "$OUT/pytest_cpu.log"
echo "pytest rest exit: $?" | tee -a "$OUT/pytest_cpu.log"

step "bench_gpu.py --kernels-only" | tee "$OUT/bench.log"
timeout 120 $PY benchmarks/bench_gpu.py --kernels-only --repeat 20 --json "$OUT/bench.json" 2>&1 | tee -a "$OUT/bench.log"
echo "bench exit: $?" | tee -a "$OUT/bench.log"
timeout 60 $PY benchmarks/bench_gpu.py --engine missing.engine 2>&1 | tee -a "$OUT/bench.log"

step "compute-sanitizer memcheck over the kernel tests (the deliberate out-of-memory test apart)" | tee "$OUT/sanitizer.log"
timeout 240 compute-sanitizer --tool memcheck --show-backtrace device --print-limit 20 $PY -m pytest \
    -p no:cacheprovider -q tests/test_cuda_kernels.py -k "not errors_name_the_call" 2>&1 | tee -a "$OUT/sanitizer.log"
echo "sanitizer exit: $?" | tee -a "$OUT/sanitizer.log"
step "compute-sanitizer on the out-of-memory test alone (a failed cuMemAlloc is expected and reported)" \
    | tee -a "$OUT/sanitizer.log"
timeout 60 compute-sanitizer --tool memcheck --print-limit 2 $PY -m pytest -p no:cacheprovider -q \
    tests/test_cuda_kernels.py -k "errors_name_the_call" 2>&1 | tee -a "$OUT/sanitizer.log"
echo "sanitizer (oom test) exit: $?" | tee -a "$OUT/sanitizer.log"
step "done"
