// oneDNN direct convolutions: plans per (kind, shape) with the layouts oneDNN chooses, reordered at the boundaries.
// Part of conv.cpp's single translation unit: include it only from there.
#ifndef EDSR_KERNELS_ONEDNN_PLANS_H
#define EDSR_KERNELS_ONEDNN_PLANS_H
#include "thread_pool.h"

namespace {


#define CHECK(call)                                                                   \
  do {                                                                                \
    dnnl_status_t status_ = (call);                                                   \
    if (status_ != dnnl_success) {                                                    \
      std::fprintf(stderr, "edsr_lib onednn_conv: %s failed (%d)\n", #call, status_); \
      return nullptr;                                                                 \
    }                                                                                 \
  } while (0)

struct Runtime {
  dnnl_engine_t engine = nullptr;
  dnnl_stream_t stream = nullptr;
  std::unique_ptr<SleepingPool> pool;
};

Runtime *GetRuntime() {
  static Runtime *runtime = [] {
    auto *r = new Runtime();
    r->pool.reset(new SleepingPool(AvailableCpus()));
    if (dnnl_engine_create(&r->engine, dnnl_cpu, 0) != dnnl_success ||
        dnnl_threadpool_interop_stream_create(&r->stream, r->engine, r->pool.get()) != dnnl_success) {
      std::fprintf(stderr, "edsr_lib onednn_conv: cannot create the oneDNN engine/stream\n");
      return static_cast<Runtime *>(nullptr);
    }
    return r;
  }();
  return runtime;
}

// Runs `release` when leaving the scope, on every path (the CHECK macro returns early on failure).
template <class F>
struct Finally {
  F release;
  ~Finally() { release(); }
};
template <class F>
Finally<F> OnExit(F release) {
  return {release};
}

// A tensor as the user holds it (plain layout, caller's buffer) and as the primitive wants it (oneDNN's choice).
// It owns its oneDNN objects: destroying it (an evicted plan, a half-built one) frees them.
struct Operand {
  dnnl_memory_desc_t user_md = nullptr, prim_md = nullptr;
  dnnl_memory_t user = nullptr, prim = nullptr;
  dnnl_primitive_t reorder = nullptr;  // user -> prim for inputs, prim -> user for outputs; null if same layout
  size_t prim_bytes = 0;                // size of its buffer in the primitive's layout (see Workspace)
  Operand() = default;
  Operand(const Operand &) = delete;
  Operand &operator=(const Operand &) = delete;
  ~Operand() {
    if (reorder) dnnl_primitive_destroy(reorder);
    if (prim) dnnl_memory_destroy(prim);
    if (user) dnnl_memory_destroy(user);
    if (prim_md) dnnl_memory_desc_destroy(prim_md);
    if (user_md) dnnl_memory_desc_destroy(user_md);
  }
};

enum Kind { kForward = 0, kBackwardData = 1, kBackwardWeights = 2, kForwardRelu = 3 };

struct Plan {
  dnnl_primitive_t primitive = nullptr;
  std::vector<std::unique_ptr<Operand>> operands;  // in execution-argument order
  std::vector<int> arg_ids;
  std::vector<bool> is_output;
  Plan() = default;
  Plan(const Plan &) = delete;
  Plan &operator=(const Plan &) = delete;
  ~Plan() {
    if (primitive) dnnl_primitive_destroy(primitive);
  }
};

dnnl_memory_desc_t Plain(const std::vector<int64_t> &dims, dnnl_format_tag_t tag) {
  dnnl_memory_desc_t md = nullptr;
  dnnl_memory_desc_create_with_tag(&md, static_cast<int>(dims.size()), dims.data(), dnnl_f32, tag);
  return md;
}

// Takes ownership of user_md. Returns null (having freed everything) if oneDNN refuses a step.
Operand *MakeOperand(Runtime *rt, dnnl_memory_desc_t user_md, const_dnnl_memory_desc_t chosen, bool output) {
  auto op = std::make_unique<Operand>();
  op->user_md = user_md;
  CHECK(dnnl_memory_desc_clone(&op->prim_md, chosen));
  CHECK(dnnl_memory_create(&op->user, op->user_md, rt->engine, DNNL_MEMORY_NONE));
  if (dnnl_memory_desc_equal(op->user_md, op->prim_md)) return op.release();
  op->prim_bytes = dnnl_memory_desc_get_size(op->prim_md);
  CHECK(dnnl_memory_create(&op->prim, op->prim_md, rt->engine, DNNL_MEMORY_NONE));
  dnnl_primitive_desc_t rpd = nullptr;
  auto free_rpd = OnExit([&] {
    if (rpd) dnnl_primitive_desc_destroy(rpd);
  });
  if (output) {
    CHECK(dnnl_reorder_primitive_desc_create(&rpd, op->prim_md, rt->engine, op->user_md, rt->engine, nullptr));
  } else {
    CHECK(dnnl_reorder_primitive_desc_create(&rpd, op->user_md, rt->engine, op->prim_md, rt->engine, nullptr));
  }
  CHECK(dnnl_primitive_create(&op->reorder, rpd));
  return op.release();
}

Plan *BuildPlan(Kind kind, int64_t n, int64_t c, int64_t h, int64_t w, int64_t o, int64_t k) {
  Runtime *rt = GetRuntime();
  if (!rt) return nullptr;
  const int64_t pad = k / 2;
  dnnl_dims_t strides = {1, 1}, dilates = {0, 0}, padding = {pad, pad};
  std::vector<int64_t> x_dims = {n, c, h, w}, y_dims = {n, o, h, w}, w_dims = {o, c, k, k}, b_dims = {o};
  dnnl_memory_desc_t x_any = Plain(x_dims, dnnl_format_tag_any), y_any = Plain(y_dims, dnnl_format_tag_any);
  dnnl_memory_desc_t w_any = Plain(w_dims, dnnl_format_tag_any), b_md = Plain(b_dims, dnnl_a);
  dnnl_primitive_attr_t attr = nullptr;  // null: no post-op
  dnnl_post_ops_t relu = nullptr;
  dnnl_primitive_desc_t fwd = nullptr, pd = nullptr;
  auto free_descriptors = OnExit([&] {
    for (auto md : {x_any, y_any, w_any, b_md}) dnnl_memory_desc_destroy(md);
    if (relu) dnnl_post_ops_destroy(relu);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (pd && pd != fwd) dnnl_primitive_desc_destroy(pd);
    if (fwd) dnnl_primitive_desc_destroy(fwd);
  });
  if (kind == kForwardRelu) {
    CHECK(dnnl_post_ops_create(&relu));
    CHECK(dnnl_post_ops_append_eltwise(relu, dnnl_eltwise_relu, 0.f, 0.f));
    CHECK(dnnl_primitive_attr_create(&attr));
    CHECK(dnnl_primitive_attr_set_post_ops(attr, relu));
  }
  CHECK(dnnl_convolution_forward_primitive_desc_create(&fwd, rt->engine, dnnl_forward_training,
                                                       dnnl_convolution_direct, x_any, w_any, b_md, y_any, strides,
                                                       dilates, padding, padding, attr));
  auto plan = std::make_unique<Plan>();
  pd = fwd;
  // `index` 1 of the weights queries is the bias
  auto add = [&](int arg, dnnl_memory_desc_t user_md, dnnl_query_t what, int index, bool output) {
    plan->operands.emplace_back(MakeOperand(rt, user_md, dnnl_primitive_desc_query_md(pd, what, index), output));
    plan->arg_ids.push_back(arg);
    plan->is_output.push_back(output);
  };
  if (kind == kForward || kind == kForwardRelu) {
    add(DNNL_ARG_SRC, Plain(x_dims, dnnl_nchw), dnnl_query_src_md, 0, false);
    add(DNNL_ARG_WEIGHTS, Plain(w_dims, dnnl_oihw), dnnl_query_weights_md, 0, false);
    add(DNNL_ARG_BIAS, Plain(b_dims, dnnl_a), dnnl_query_weights_md, 1, false);
    add(DNNL_ARG_DST, Plain(y_dims, dnnl_nchw), dnnl_query_dst_md, 0, true);
  } else if (kind == kBackwardData) {
    CHECK(dnnl_convolution_backward_data_primitive_desc_create(&pd, rt->engine, dnnl_convolution_direct, x_any,
                                                               w_any, y_any, strides, dilates, padding, padding,
                                                               fwd, nullptr));
    add(DNNL_ARG_DIFF_DST, Plain(y_dims, dnnl_nchw), dnnl_query_diff_dst_md, 0, false);
    add(DNNL_ARG_WEIGHTS, Plain(w_dims, dnnl_oihw), dnnl_query_weights_md, 0, false);
    add(DNNL_ARG_DIFF_SRC, Plain(x_dims, dnnl_nchw), dnnl_query_diff_src_md, 0, true);
  } else {
    CHECK(dnnl_convolution_backward_weights_primitive_desc_create(&pd, rt->engine, dnnl_convolution_direct, x_any,
                                                                  w_any, b_md, y_any, strides, dilates, padding,
                                                                  padding, fwd, nullptr));
    add(DNNL_ARG_SRC, Plain(x_dims, dnnl_nchw), dnnl_query_src_md, 0, false);
    add(DNNL_ARG_DIFF_DST, Plain(y_dims, dnnl_nchw), dnnl_query_diff_dst_md, 0, false);
    add(DNNL_ARG_DIFF_WEIGHTS, Plain(w_dims, dnnl_oihw), dnnl_query_diff_weights_md, 0, true);
    add(DNNL_ARG_DIFF_BIAS, Plain(b_dims, dnnl_a), dnnl_query_diff_weights_md, 1, true);
  }
  for (auto &op : plan->operands)
    if (!op) return nullptr;
  CHECK(dnnl_primitive_create(&plan->primitive, pd));
  return plan.release();
}

// Plans are kept per (kind, shape); a bounded cache, since every image size in inference is a new shape.
constexpr size_t kMaxPlans = 32;
std::mutex pool_mutex;  // one job on the thread pool at a time: each uses all cores already
std::map<std::array<int64_t, 7>, std::unique_ptr<Plan>> plans;

// Buffers for operands in the primitive's layout, shared by all plans (one convolution runs at a time) and reused
// from call to call: allocating them per call cost a visible share of a forward pass in page faults, and keeping them per plan
// grew to gigabytes over the tile shapes of a large image. A slot larger than kKeptSlotBytes is freed after use.
constexpr size_t kKeptSlotBytes = size_t(64) << 20;
struct Slot {
  std::unique_ptr<char[]> data;
  size_t bytes = 0;
  void *Get(size_t need) {
    if (need > bytes) {
      data.reset();  // free first: the old and new buffers need not coexist
      data.reset(new char[need + 64]);
      bytes = need;
    }
    return reinterpret_cast<void *>((reinterpret_cast<uintptr_t>(data.get()) + 63) & ~uintptr_t(63));
  }
  void Trim() {
    if (bytes > kKeptSlotBytes) {
      data.reset();
      bytes = 0;
    }
  }
};
std::array<Slot, 4> workspace;  // one per operand position (a plan has at most 4)

// What the kernels return to MindSpore: 0 is success, anything else fails the op with this number in its message.
enum Status : int {
  kOk = 0,
  kPlanFailed = 1,        // oneDNN could not build a primitive for this shape (its reason is on stderr)
  kReorderInFailed = 2,   // converting an input to the primitive's layout failed
  kExecuteFailed = 3,     // the convolution itself failed
  kReorderOutFailed = 4,  // converting an output back to the plain layout failed
  kWaitFailed = 5,        // the stream did not finish
  kBadArguments = 10,     // wrong number, rank or dtype of the op's arguments
  kShapeMismatch = 11,    // the residual input's shape differs from the output's
};

int Run(Kind kind, const std::array<int64_t, 6> &shape, const std::vector<void *> &buffers) {
  std::lock_guard<std::mutex> lock(pool_mutex);
  std::array<int64_t, 7> key = {kind, shape[0], shape[1], shape[2], shape[3], shape[4], shape[5]};
  auto found = plans.find(key);
  if (found == plans.end()) {
    if (plans.size() >= kMaxPlans) plans.clear();  // the evicted plans free their oneDNN objects
    Plan *plan = BuildPlan(kind, shape[0], shape[1], shape[2], shape[3], shape[4], shape[5]);
    if (!plan) return kPlanFailed;
    found = plans.emplace(key, std::unique_ptr<Plan>(plan)).first;
  }
  Plan &plan = *found->second;
  Runtime *rt = GetRuntime();
  std::vector<dnnl_exec_arg_t> args;
  for (size_t i = 0; i < plan.operands.size(); ++i) {
    Operand &op = *plan.operands[i];
    dnnl_memory_set_data_handle(op.user, buffers[i]);
    if (op.reorder) dnnl_memory_set_data_handle(op.prim, workspace[i].Get(op.prim_bytes));
    if (op.reorder && !plan.is_output[i]) {
      dnnl_exec_arg_t r[2] = {{DNNL_ARG_FROM, op.user}, {DNNL_ARG_TO, op.prim}};
      if (dnnl_primitive_execute(op.reorder, rt->stream, 2, r) != dnnl_success) return kReorderInFailed;
    }
    args.push_back({plan.arg_ids[i], op.reorder ? op.prim : op.user});
  }
  if (dnnl_primitive_execute(plan.primitive, rt->stream, static_cast<int>(args.size()), args.data()) != dnnl_success)
    return kExecuteFailed;
  for (size_t i = 0; i < plan.operands.size(); ++i) {
    Operand &op = *plan.operands[i];
    if (op.reorder && plan.is_output[i]) {
      dnnl_exec_arg_t r[2] = {{DNNL_ARG_FROM, op.prim}, {DNNL_ARG_TO, op.user}};
      if (dnnl_primitive_execute(op.reorder, rt->stream, 2, r) != dnnl_success) return kReorderOutFailed;
    }
  }
  const bool ok = dnnl_stream_wait(rt->stream) == dnnl_success;
  for (auto &slot : workspace) slot.Trim();
  return ok ? kOk : kWaitFailed;
}

bool IsFloat32(const char *dtype) { return std::string(dtype) == "float32" || std::string(dtype) == "float"; }

// y = y * scale + skip over `count` floats, on the kit's threads.
void ScaleAndAdd(float *y, const float *skip, float scale, int64_t count) {
  std::lock_guard<std::mutex> lock(pool_mutex);
  SleepingPool *pool = GetRuntime()->pool.get();
  const int chunks = pool->get_num_threads();
  pool->parallel_for(chunks, [=](int chunk, int total) {
    const int64_t begin = count * chunk / total, end = count * (chunk + 1) / total;
    if (scale == 1.f) {
      for (int64_t i = begin; i < end; ++i) y[i] += skip[i];
    } else {
      for (int64_t i = begin; i < end; ++i) y[i] = y[i] * scale + skip[i];
    }
  });
}

// Inputs x, w, b and output y, as ConvForward and ConvReluForward receive them.
int Forward(Kind kind, int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  if (nparam != 4 || ndims[0] != 4 || ndims[1] != 4 || !IsFloat32(dtypes[0])) return kBadArguments;
  const int64_t *x = shapes[0], *w = shapes[1];
  return Run(kind, {x[0], x[1], x[2], x[3], w[0], w[2]}, {params[0], params[1], params[2], params[3]});
}

}  // namespace

#endif  // EDSR_KERNELS_ONEDNN_PLANS_H
