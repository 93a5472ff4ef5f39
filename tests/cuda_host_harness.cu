// Runs the kernels' per-element code (the __host__ __device__ functions of runtime/cuda/*.cu) on the CPU.
//
// Where no GPU is present this still executes exactly the C++ the kernels execute for each pixel and each
// anchor (indexing, mirroring, padding, channel order, fixed-point rounding, NaN handling, the threshold),
// looping over what the GPU's grid would cover. tests/test_cuda_host.py compiles it with nvcc, feeds it
// files written by NumPy and compares the result with runtime/cuda/reference.py bit for bit. What it does
// not cover: the launch geometry, the atomic counter's concurrency, memory transfers (needs_cuda tests).
//
// Usage:
//   harness preprocess f32|f16 frame.bin H W params.bin N xtab.bin TX ytab.bin TY lut.bin OUT_H OUT_W out.bin
//   harness filter f32|f16 output.bin N_VIEWS ROWS ANCHORS THRESHOLD index.bin values.bin
// (filter prints the number of candidates kept.)

#include "preprocess.cu"
#include "filter.cu"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

template <typename T>
static std::vector<T> load(const char* path, size_t count)
{
    std::vector<T> data(count);
    FILE* f = std::fopen(path, "rb");
    if (f == nullptr || std::fread(data.data(), sizeof(T), count, f) != count) {
        std::fprintf(stderr, "cannot read %zu items from %s\n", count, path);
        std::exit(2);
    }
    std::fclose(f);
    return data;
}

template <typename T>
static void save(const char* path, const std::vector<T>& data)
{
    FILE* f = std::fopen(path, "wb");
    if (f == nullptr || std::fwrite(data.data(), sizeof(T), data.size(), f) != data.size()) {
        std::fprintf(stderr, "cannot write %s\n", path);
        std::exit(2);
    }
    std::fclose(f);
}

template <typename T>
static int run_preprocess(char** a)
{
    const int h = std::atoi(a[1]), w = std::atoi(a[2]);
    const int n = std::atoi(a[4]), tx = std::atoi(a[6]), ty = std::atoi(a[8]);
    const int out_h = std::atoi(a[10]), out_w = std::atoi(a[11]);
    std::vector<unsigned char> frame = load<unsigned char>(a[0], (size_t)h * w * 3);
    std::vector<int> params = load<int>(a[3], (size_t)n * VIEW_PARAMS);
    std::vector<int4> xtab = load<int4>(a[5], (size_t)tx);
    std::vector<int4> ytab = load<int4>(a[7], (size_t)ty);
    std::vector<T> lut = load<T>(a[9], 256);
    std::vector<T> out((size_t)n * 3 * out_h * out_w);
    for (int v = 0; v < n; ++v) {
        for (int y = 0; y < out_h; ++y) {
            for (int x = 0; x < out_w; ++x) {
                preprocess_pixel<T>(frame.data(), w * 3, params.data(), xtab.data(), ytab.data(), lut.data(),
                                    out.data(), out_h, out_w, x, y, v);
            }
        }
    }
    save(a[12], out);
    return 0;
}

template <typename T>
static int run_filter(char** a)
{
    const int n = std::atoi(a[1]), rows = std::atoi(a[2]), anchors = std::atoi(a[3]);
    const float threshold = std::strtof(a[4], nullptr);
    std::vector<T> out = load<T>(a[0], (size_t)n * rows * anchors);
    std::vector<int> index;
    std::vector<T> values;
    for (long long i = 0; i < (long long)n * anchors; ++i) {  // the grid, one anchor after another
        const T* column = out.data() + (size_t)(i / anchors) * rows * anchors + (size_t)(i % anchors);
        if (candidate_passes<T>(column, rows, anchors, threshold)) {
            index.push_back((int)i);
            values.resize(values.size() + rows);
            copy_candidate<T>(column, rows, anchors, values.data() + values.size() - rows);
        }
    }
    save(a[5], index);
    save(a[6], values);
    std::printf("%zu\n", index.size());
    return 0;
}

int main(int argc, char** argv)
{
    if (argc < 3) {
        std::fprintf(stderr, "usage: harness preprocess|filter f32|f16 ...\n");
        return 2;
    }
    const bool half = std::strcmp(argv[2], "f16") == 0;
    if (std::strcmp(argv[1], "preprocess") == 0 && argc == 16) {
        return half ? run_preprocess<unsigned short>(argv + 3) : run_preprocess<float>(argv + 3);
    }
    if (std::strcmp(argv[1], "filter") == 0 && argc == 10) {
        return half ? run_filter<__half>(argv + 3) : run_filter<float>(argv + 3);
    }
    std::fprintf(stderr, "usage: harness preprocess|filter f32|f16 ... (wrong arguments)\n");
    return 2;
}
