// Fused preprocessing: one launch writes every view of a batch into the engine's input buffer.
//
// For each view: crop its window out of the frame (uint8 BGR, HWC), resize it to the view's content
// size with cv2.INTER_LINEAR's sampling and 8-bit fixed-point rounding, mirror it when asked, pad the
// rest of the slot with 114, swap BGR to RGB, scale to [0, 1] and write planar (CHW) FP32 or FP16.
//
// No floating-point arithmetic happens here. The host computes, the way OpenCV does, a table per axis
// of source indices and 11-bit weights (runtime/cuda/reference.py: axis_table), and a 256-entry table
// of output values per uint8 level (output_lut, the CPU path's own /255 conversion), so the kernel's
// result equals reference.preprocess_reference exactly and cv2.resize within 1/255.
//
// Grid: x and y over the input's columns and rows, z over the views of the batch. One thread writes
// the three channels of one output pixel; consecutive threads write consecutive addresses of each plane.
//
// Compiled at first use by pycuda (SourceModule, no_extern_c=True) for the GPU it runs on; CI compiles
// it with nvcc for the Jetson architectures (tests/test_cuda_compile.py).

#ifndef VIEW_PARAMS
#define VIEW_PARAMS 8  // keep equal to reference.VIEW_PARAMS
#endif

// One output pixel (x, y) of view v, all three channels. __host__ too, so that tests/cuda_host_harness.cu
// can run exactly this code on the CPU where no GPU is present.
template <typename T>
__host__ __device__ __forceinline__ void preprocess_pixel(
    const unsigned char* __restrict__ frame,  // (frame_h, row_bytes) uint8 BGR rows
    int row_bytes,                            // bytes from one frame row to the next
    const int* __restrict__ params,           // (n_views, VIEW_PARAMS)
    const int4* __restrict__ xtab,            // source column 0, column 1, weight 0, weight 1
    const int4* __restrict__ ytab,            // source row 0, row 1, weight 0, weight 1
    const T* __restrict__ lut,                // 256 output values, one per uint8 level
    T* __restrict__ out,                      // (n_views, 3, out_h, out_w)
    int out_h, int out_w, int x, int y, int v)
{
    const int* p = params + v * VIEW_PARAMS;
    const int x0 = p[0], y0 = p[1], cw = p[2], ch = p[3], flip = p[4], xoff = p[5], yoff = p[6];
    const size_t plane = (size_t)out_h * (size_t)out_w;
    T* o = out + (size_t)v * 3 * plane + (size_t)y * (size_t)out_w + (size_t)x;
    if (x >= cw || y >= ch) {
        const T pad = lut[114];
        o[0] = pad;
        o[plane] = pad;
        o[2 * plane] = pad;
        return;
    }
    const int4 tx = xtab[xoff + (flip ? cw - 1 - x : x)];
    const int4 ty = ytab[yoff + y];
    const unsigned char* r0 = frame + (size_t)(y0 + ty.x) * (size_t)row_bytes + (size_t)x0 * 3;
    const unsigned char* r1 = frame + (size_t)(y0 + ty.y) * (size_t)row_bytes + (size_t)x0 * 3;
    const int c0 = tx.x * 3, c1 = tx.y * 3;
#pragma unroll
    for (int c = 0; c < 3; ++c) {
        // Horizontal pass: exact integers, at most 255 * 2049.
        const int h0 = (int)r0[c0 + c] * tx.z + (int)r0[c1 + c] * tx.w;
        const int h1 = (int)r1[c0 + c] * tx.z + (int)r1[c1 + c] * tx.w;
        // Vertical pass rounded as OpenCV's SIMD path: (h >> 4) fits in int16, then a 16x16 high
        // multiply, then a rounding shift by 2.
        int value = ((((h0 >> 4) * ty.z) >> 16) + (((h1 >> 4) * ty.w) >> 16) + 2) >> 2;
        value = value < 0 ? 0 : (value > 255 ? 255 : value);
        o[(2 - c) * plane] = lut[value];  // BGR in, RGB out
    }
}

template <typename T>
__device__ __forceinline__ void preprocess_views(
    const unsigned char* __restrict__ frame, int row_bytes, const int* __restrict__ params,
    const int4* __restrict__ xtab, const int4* __restrict__ ytab, const T* __restrict__ lut,
    T* __restrict__ out, int out_h, int out_w, int n_views)
{
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    const int v = blockIdx.z;
    if (x >= out_w || y >= out_h || v >= n_views) {
        return;
    }
    preprocess_pixel<T>(frame, row_bytes, params, xtab, ytab, lut, out, out_h, out_w, x, y, v);
}

extern "C" __global__ void preprocess_views_f32(
    const unsigned char* __restrict__ frame, int row_bytes, const int* __restrict__ params,
    const int4* __restrict__ xtab, const int4* __restrict__ ytab, const float* __restrict__ lut,
    float* __restrict__ out, int out_h, int out_w, int n_views)
{
    preprocess_views<float>(frame, row_bytes, params, xtab, ytab, lut, out, out_h, out_w, n_views);
}

// FP16 output: the values are written as their IEEE half bit patterns, taken from the host-made table,
// so no half arithmetic (and no cuda_fp16.h) is needed.
extern "C" __global__ void preprocess_views_f16(
    const unsigned char* __restrict__ frame, int row_bytes, const int* __restrict__ params,
    const int4* __restrict__ xtab, const int4* __restrict__ ytab, const unsigned short* __restrict__ lut,
    unsigned short* __restrict__ out, int out_h, int out_w, int n_views)
{
    preprocess_views<unsigned short>(frame, row_bytes, params, xtab, ytab, lut, out, out_h, out_w, n_views);
}
