// Confidence filtering on the device: only the candidates above the threshold cross to the host.
//
// The model output is (B, 4 + nc, N): box centre x, centre y, width, height, then nc class scores, for
// each of N anchors. One thread per (view, anchor) of the first n_views views takes the best class
// score; when it passes the threshold, an atomic counter hands out a slot and the thread copies the
// anchor's whole column (4 + nc values, in the output's own type) there, with its flat index
// view * N + anchor. The host reads the counter, then only that many rows, and sorts them by index
// (runtime/cuda/reference.py: filter_reference and dense_candidates are the NumPy reference).
//
// The comparison is `best > threshold` in float, with the threshold chosen on the host
// (reference.score_threshold) so that it keeps exactly what the CPU decoder's NumPy comparison keeps.
// A NaN score anywhere in the column makes the best score NaN, which never passes (NumPy's max does the
// same).
//
// Capacity: the candidate buffers hold n_views * N rows, so the counter cannot run past them.

#include <cuda_fp16.h>

__host__ __device__ __forceinline__ float score_value(float s) { return s; }
__host__ __device__ __forceinline__ float score_value(__half s) { return __half2float(s); }

// Whether the anchor whose column starts at `column` passes. __host__ too, so that
// tests/cuda_host_harness.cu can run exactly this code on the CPU where no GPU is present.
template <typename T>
__host__ __device__ __forceinline__ bool candidate_passes(const T* __restrict__ column, int rows, int anchors,
                                                          float threshold)
{
    float best = score_value(column[(size_t)4 * anchors]);
    for (int r = 5; r < rows; ++r) {
        const float s = score_value(column[(size_t)r * anchors]);
        if (isnan(s) || s > best) {  // NaN wins, as in NumPy's max
            best = s;
        }
    }
    return best > threshold;
}

template <typename T>
__host__ __device__ __forceinline__ void copy_candidate(const T* __restrict__ column, int rows, int anchors,
                                                        T* __restrict__ dst)
{
    for (int r = 0; r < rows; ++r) {
        dst[r] = column[(size_t)r * anchors];
    }
}

template <typename T>
__device__ __forceinline__ void filter_candidates(
    const T* __restrict__ out,  // (>= n_views, rows, anchors)
    int n_views, int rows, int anchors, float threshold,
    int* __restrict__ count,    // one counter, zeroed by the host before the launch
    int* __restrict__ index,    // (n_views * anchors) flat index of each kept candidate
    T* __restrict__ values)     // (n_views * anchors, rows) the kept columns
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n_views * anchors) {
        return;
    }
    const int v = (int)(i / anchors);
    const int a = (int)(i % anchors);
    const T* column = out + (size_t)v * rows * anchors + a;
    if (!candidate_passes<T>(column, rows, anchors, threshold)) {
        return;
    }
    const int k = atomicAdd(count, 1);
    index[k] = (int)i;
    copy_candidate<T>(column, rows, anchors, values + (size_t)k * rows);
}

extern "C" __global__ void filter_candidates_f32(
    const float* __restrict__ out, int n_views, int rows, int anchors, float threshold,
    int* __restrict__ count, int* __restrict__ index, float* __restrict__ values)
{
    filter_candidates<float>(out, n_views, rows, anchors, threshold, count, index, values);
}

extern "C" __global__ void filter_candidates_f16(
    const __half* __restrict__ out, int n_views, int rows, int anchors, float threshold,
    int* __restrict__ count, int* __restrict__ index, __half* __restrict__ values)
{
    filter_candidates<__half>(out, n_views, rows, anchors, threshold, count, index, values);
}
