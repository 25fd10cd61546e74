// Fast CPU convolution for EDSR: stride 1, odd square kernel, same padding, float32 NCHW, with bias.
//
// MindSpore's stock CPU Conv2d hands oneDNN plain weight layouts, which on AVX-512 CPUs forces oneDNN's reference
// loops. Here oneDNN chooses its own (blocked) layouts for activations and weights ("any"), we reorder at the
// boundaries, and we give oneDNN a thread pool whose idle workers sleep instead of spinning. The oneDNN library is
// the one inside the MindSpore wheel (lib/libdnnl.so.3, built with the threadpool runtime); only its public C API
// is used, with headers from the `onednn-devel` package.
//
// MindSpore AOT entry points (see edsr_lib/kernels/conv.py; kernels/build.py lists them):
//   ConvForward(x[N,C,H,W], w[O,C,K,K], b[O]) -> y[N,O,H,W]
//   ConvReluForward(x, w, b) -> relu(y)                                   (ReLU fused as a oneDNN post-op)
//   ConvResidualForward(x, w, b, skip[N,O,H,W], scale[1]) -> y * scale + skip   (EDSR's residual block tail)
//   ResBlockForward(x, w1, b1, w2, b2, scale) -> x + scale * conv(relu(conv(x)))  (a whole residual block, inference)
//   WinogradConvShuffleForward(x, w[r^2 C, C, 3, 3], b) -> pixel_shuffle(conv(x), r)        (the upsampler, inference)
//   ConvBackwardData(dy[N,O,H,W], w[O,C,K,K]) -> dx[N,C,H,W]
//   ConvBackwardWeights(x[N,C,H,W], dy[N,O,H,W], w[O,C,K,K]) -> dw[O,C,K,K], db[O]   (w for its shape only)
// and Winograd forms of the forward, block, upsampler, backward-data and backward-weights entry points, 3x3 only:
// `Winograd<name>` by F(4x4, 3x3), `WinogradF2<name>` by F(2x2, 3x3),
// each with its `<name>InferShape`: MindSpore calls these C++ shape functions (not Python ones) when it runs a graph
// whose N, H and W are only known at run time, so one compiled graph serves every image size.
// The fused forms exist because each MindSpore op between two convolutions costs launch overhead on CPU, a sizeable
// share of an EDSR-baseline forward pass (docs/benchmarks.md).
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_threadpool.h>
#include <oneapi/dnnl/dnnl_threadpool_iface.hpp>
#include <sched.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

// One translation unit, split by concern: the thread pool, oneDNN's direct convolutions, the Winograd
// convolutions (with AVX-512 transposes where the compiler targets AVX-512), and below, the C entry points.
#include "thread_pool.h"
#include "onednn_plans.h"
#include "winograd.h"

extern "C" {

int ConvForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  return Forward(kForward, nparam, params, ndims, shapes, dtypes);
}

int ConvReluForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  return Forward(kForwardRelu, nparam, params, ndims, shapes, dtypes);
}

int ConvResidualForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                        void *) {
  // inputs x, w, b, skip (shaped as the output) and scale (one float), output y
  if (nparam != 6 || ndims[0] != 4 || ndims[1] != 4 || ndims[3] != 4 || !IsFloat32(dtypes[0])) return kBadArguments;
  const int64_t *x = shapes[0], *w = shapes[1], *skip = shapes[3];
  if (skip[0] != x[0] || skip[1] != w[0] || skip[2] != x[2] || skip[3] != x[3]) return kShapeMismatch;
  const int status = Run(kForward, {x[0], x[1], x[2], x[3], w[0], w[2]}, {params[0], params[1], params[2], params[5]});
  if (status != kOk) return status;
  ScaleAndAdd(static_cast<float *>(params[5]), static_cast<const float *>(params[3]),
              *static_cast<const float *>(params[4]), skip[0] * skip[1] * skip[2] * skip[3]);
  return kOk;
}

int ConvBackwardData(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 3 || ndims[0] != 4 || ndims[1] != 4 || !IsFloat32(dtypes[0])) return kBadArguments;
  const int64_t *dy = shapes[0], *w = shapes[1];
  return Run(kBackwardData, {dy[0], w[1], dy[2], dy[3], w[0], w[2]}, {params[0], params[1], params[2]});
}

int ConvBackwardWeights(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                        void *) {
  // inputs x, dy and w (w only for its shape), outputs dw and db
  if (nparam != 5 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 4 || !IsFloat32(dtypes[0])) return kBadArguments;
  const int64_t *x = shapes[0], *dy = shapes[1], *w = shapes[2];
  return Run(kBackwardWeights, {x[0], x[1], x[2], x[3], dy[1], w[2]}, {params[0], params[1], params[3], params[4]});
}

// Shape inference for dynamic-shape graphs. An unknown dimension is -1 and stays -1; an unknown rank is {-2}.
std::vector<int64_t> ConvForwardInferShape(int *, int64_t **shapes, void *) {
  const int64_t *x = shapes[0], *w = shapes[1];
  if (x[0] == -2) return {-2};
  return {x[0], w[0], x[2], x[3]};
}

std::vector<int64_t> ConvReluForwardInferShape(int *ndims, int64_t **shapes, void *extra) {
  return ConvForwardInferShape(ndims, shapes, extra);
}

std::vector<int64_t> ConvResidualForwardInferShape(int *ndims, int64_t **shapes, void *extra) {
  return ConvForwardInferShape(ndims, shapes, extra);
}

std::vector<int64_t> ConvBackwardDataInferShape(int *, int64_t **shapes, void *) {
  const int64_t *dy = shapes[0], *w = shapes[1];
  if (dy[0] == -2) return {-2};
  return {dy[0], w[1], dy[2], dy[3]};
}

std::vector<std::vector<int64_t>> ConvBackwardWeightsInferShape(int *, int64_t **shapes, void *) {
  const int64_t *w = shapes[2];  // weights are never dynamic
  return {{w[0], w[1], w[2], w[3]}, {w[0]}};
}

int ResBlockForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  return ResBlockForward<void>(nparam, params, ndims, shapes, dtypes);
}

std::vector<int64_t> ResBlockForwardInferShape(int *, int64_t **shapes, void *) {
  const int64_t *x = shapes[0];
  if (x[0] == -2) return {-2};
  return {x[0], x[1], x[2], x[3]};
}

std::vector<int64_t> ConvShuffleForwardInferShape(int *, int64_t **shapes, void *) {
  const int64_t *x = shapes[0], *w = shapes[1];
  if (x[0] == -2) return {-2};
  const int64_t r = ShuffleFactor(x, w);
  auto times = [r](int64_t v) { return v < 0 ? v : v * r; };  // an unknown size stays unknown
  return {x[0], r ? w[0] / (r * r) : w[0], times(x[2]), times(x[3])};
}

// The Winograd entry points, one set per variant: `Winograd<name>` runs F(4x4, 3x3), `WinogradF2<name>` F(2x2, 3x3)
// (3x3 filters only). Backward data is the same convolution of dy with the filters flipped and transposed.
#define EDSR_WINOGRAD_ENTRY_POINTS(Prefix, W)                                                                        \
  int Prefix##ConvForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,      \
                          void *) {                                                                                  \
    return WinogradForward<W>(kPlain, nparam, params, ndims, shapes, dtypes);                                        \
  }                                                                                                                  \
  int Prefix##ConvReluForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,  \
                              void *) {                                                                              \
    return WinogradForward<W>(kRelu, nparam, params, ndims, shapes, dtypes);                                         \
  }                                                                                                                  \
  int Prefix##ConvResidualForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,      \
                                  void *, void *) {                                                                  \
    return WinogradForward<W>(kResidual, nparam, params, ndims, shapes, dtypes);                                     \
  }                                                                                                                  \
  int Prefix##ConvBackwardData(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, \
                               void *) {                                                                             \
    return WinogradBackwardData<W>(nparam, params, ndims, shapes, dtypes);                                           \
  }                                                                                                                  \
  int Prefix##ConvBackwardWeights(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,      \
                                  void *, void *) {                                                                  \
    return WinogradBackwardWeights<W>(nparam, params, ndims, shapes, dtypes);                                        \
  }                                                                                                                  \
  int Prefix##ResBlockForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,  \
                              void *) {                                                                              \
    return ResBlockForward<W>(nparam, params, ndims, shapes, dtypes);                                                \
  }                                                                                                                  \
  int Prefix##ConvShuffleForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,       \
                                 void *, void *) {                                                                   \
    return WinogradShuffleForward<W>(nparam, params, ndims, shapes, dtypes);                                         \
  }                                                                                                                  \
  std::vector<int64_t> Prefix##ConvForwardInferShape(int *ndims, int64_t **shapes, void *extra) {                    \
    return ConvForwardInferShape(ndims, shapes, extra);                                                              \
  }                                                                                                                  \
  std::vector<int64_t> Prefix##ConvReluForwardInferShape(int *ndims, int64_t **shapes, void *extra) {                \
    return ConvForwardInferShape(ndims, shapes, extra);                                                              \
  }                                                                                                                  \
  std::vector<int64_t> Prefix##ConvResidualForwardInferShape(int *ndims, int64_t **shapes, void *extra) {            \
    return ConvForwardInferShape(ndims, shapes, extra);                                                              \
  }                                                                                                                  \
  std::vector<int64_t> Prefix##ConvBackwardDataInferShape(int *ndims, int64_t **shapes, void *extra) {               \
    return ConvBackwardDataInferShape(ndims, shapes, extra);                                                         \
  }                                                                                                                  \
  std::vector<std::vector<int64_t>> Prefix##ConvBackwardWeightsInferShape(int *ndims, int64_t **shapes,             \
                                                                          void *extra) {                             \
    return ConvBackwardWeightsInferShape(ndims, shapes, extra);                                                      \
  }                                                                                                                  \
  std::vector<int64_t> Prefix##ResBlockForwardInferShape(int *ndims, int64_t **shapes, void *extra) {                \
    return ResBlockForwardInferShape(ndims, shapes, extra);                                                          \
  }                                                                                                                  \
  std::vector<int64_t> Prefix##ConvShuffleForwardInferShape(int *ndims, int64_t **shapes, void *extra) {             \
    return ConvShuffleForwardInferShape(ndims, shapes, extra);                                                       \
  }

EDSR_WINOGRAD_ENTRY_POINTS(Winograd, F4x4)
EDSR_WINOGRAD_ENTRY_POINTS(WinogradF2, F2x2)

}  // extern "C"
