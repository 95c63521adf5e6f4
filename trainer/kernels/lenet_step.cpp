// One CPU training step of the trainer's LeNet (float32) in a single call: forward, loss,
// backward and the optimizer update, without autograd or an operator per layer.
//
// Why: at batch 16 PyTorch's eager step dispatches 78 operators and its small convolutions
// run far below sgemm speed. Here each convolution is an im2col copy and one sgemm (MKL,
// through the sgemm_ symbol torch exports), pooling, bias and ReLU are one pass over the
// convolution's output, and the batch is split into one chunk per thread. The threads meet
// once per step, at a barrier, after which each adds up the chunks' gradients over its own
// slice of every parameter and updates that slice. The loops that are not sgemm are compiled
// for AVX-512, AVX2 and the x86-64 baseline; the loader picks one at run time (target_clones).
//
// Layouts: activations are NHWC (channels innermost), so an im2col row of conv2 is 5
// copies of 100 contiguous floats. Pool2's output is turned to NCHW, the order in which
// torch.flatten hands it to fc1, so fc1's weight is used as it is.

#include <torch/extension.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

extern "C" void sgemm_(const char *transa, const char *transb, const int *m, const int *n,
                       const int *k, const float *alpha, const float *a, const int *lda,
                       const float *b, const int *ldb, const float *beta, float *c,
                       const int *ldc);

#if defined(__x86_64__)
#define KERNEL __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define KERNEL  // one build for the compiler's default target
#endif

namespace {

// The network's shapes.
constexpr int kImage = 28, kC1 = 20, kOut1 = 24, kPool1 = 12, kK = 5;
constexpr int kC2 = 50, kOut2 = 8, kPool2 = 4, kFlat = kC2 * kPool2 * kPool2;  // 800
constexpr int kHidden = 500, kClasses = 10;
constexpr int kCol1 = kK * kK;        // 25: an im2col row of conv1
constexpr int kCol2 = kK * kK * kC1;  // 500: an im2col row of conv2

// Row-major C[m x n] = op(A)[m x k] * op(B)[k x n] + beta * C, through column-major sgemm
// (computing C^T = op(B)^T op(A)^T).
void mm(bool ta, bool tb, int m, int n, int k, const float *a, int lda, const float *b, int ldb,
        float beta, float *c, int ldc) {
  const float one = 1.0f;
  const char opa = ta ? 'T' : 'N', opb = tb ? 'T' : 'N';
  sgemm_(&opb, &opa, &n, &m, &k, &one, b, &ldb, a, &lda, &beta, c, &ldc);
}

KERNEL void im2col1(int n, const float *x, float *cols) {
  for (int s = 0; s < n; ++s)
    for (int oy = 0; oy < kOut1; ++oy)
      for (int ox = 0; ox < kOut1; ++ox) {
        float *row = cols + ((s * kOut1 + oy) * kOut1 + ox) * kCol1;
        const float *in = x + (s * kImage + oy) * kImage + ox;
        for (int ky = 0; ky < kK; ++ky)
          for (int kx = 0; kx < kK; ++kx) row[ky * kK + kx] = in[ky * kImage + kx];
      }
}

// 2x2 max-pool of an NHWC map (side x side x channels) plus bias, then ReLU, into the
// pooled NHWC map. No record of each window's winner is kept: unpool finds it again from
// the same four values, which costs less than storing and loading it.
template <int kChannels>
inline void pool_relu(int n, int side, const float *__restrict conv,
                      const float *__restrict bias, float *__restrict out) {
  const int half = side / 2;
  for (int s = 0; s < n; ++s)
    for (int py = 0; py < half; ++py)
      for (int px = 0; px < half; ++px) {
        const float *w0 = conv + ((s * side + 2 * py) * side + 2 * px) * kChannels;
        const float *w1 = w0 + kChannels, *w2 = w0 + side * kChannels, *w3 = w2 + kChannels;
        float *o = out + ((s * half + py) * half + px) * kChannels;
#pragma omp simd
        for (int c = 0; c < kChannels; ++c)
          o[c] = std::max(std::max(std::max(w0[c], w1[c]), std::max(w2[c], w3[c])) + bias[c],
                          0.0f);
      }
}

KERNEL void pool_relu1(int n, const float *conv, const float *bias, float *out) {
  pool_relu<kC1>(n, kOut1, conv, bias, out);
}

KERNEL void pool_relu2(int n, const float *conv, const float *bias, float *out) {
  pool_relu<kC2>(n, kOut2, conv, bias, out);
}

// The gradient of pool_relu: each window's winner (the first of equals, as torch picks it)
// takes the pooled output's gradient where the ReLU let it through, the other three get 0,
// and the bias gradient adds up what passed.
template <int kChannels>
inline void unpool(int n, int side, const float *__restrict conv,
                   const float *__restrict pooled, const float *__restrict grad_out,
                   float *__restrict grad_conv, float *__restrict grad_bias) {
  const int half = side / 2;
  for (int s = 0; s < n; ++s)
    for (int py = 0; py < half; ++py)
      for (int px = 0; px < half; ++px) {
        const int window = ((s * side + 2 * py) * side + 2 * px) * kChannels;
        const float *v0 = conv + window, *v1 = v0 + kChannels, *v2 = v0 + side * kChannels;
        const float *v3 = v2 + kChannels;
        float *g0 = grad_conv + window, *g1 = g0 + kChannels, *g2 = g0 + side * kChannels;
        float *g3 = g2 + kChannels;
        const int cell = ((s * half + py) * half + px) * kChannels;
#pragma omp simd
        for (int c = 0; c < kChannels; ++c) {
          // Selects only, no branch, so that it vectorises: each place takes what the
          // earlier places left (all of g, or 0 once one of them won).
          const float up = grad_out[cell + c], a = v0[c], b = v1[c], d = v2[c], e = v3[c];
          const float g = pooled[cell + c] > 0.0f ? up : 0.0f;
          grad_bias[c] += g;
          const float best = std::max(std::max(a, b), std::max(d, e));
          const float r0 = a == best ? g : 0.0f, left0 = g - r0;
          const float r1 = b == best ? left0 : 0.0f, left1 = left0 - r1;
          const float r2 = d == best ? left1 : 0.0f;
          g0[c] = r0;
          g1[c] = r1;
          g2[c] = r2;
          g3[c] = left1 - r2;
        }
      }
}

KERNEL void unpool1(int n, const float *conv, const float *pooled, const float *grad_out,
                    float *grad_conv, float *grad_bias) {
  unpool<kC1>(n, kOut1, conv, pooled, grad_out, grad_conv, grad_bias);
}

KERNEL void unpool2(int n, const float *conv, const float *pooled, const float *grad_out,
                    float *grad_conv, float *grad_bias) {
  unpool<kC2>(n, kOut2, conv, pooled, grad_out, grad_conv, grad_bias);
}

// Between pool2's NHWC output and fc1's input, which torch.flatten gives in NCHW order: the
// forward pass goes to NCHW, the backward pass back to NHWC.
KERNEL void relayout(int n, const float *__restrict from, float *__restrict to, bool to_nchw) {
  constexpr int kCells = kPool2 * kPool2;
  for (int s = 0; s < n; ++s)
    for (int cell = 0; cell < kCells; ++cell)
      for (int c = 0; c < kC2; ++c) {
        const int nhwc = s * kFlat + cell * kC2 + c, nchw = s * kFlat + c * kCells + cell;
        if (to_nchw)
          to[nchw] = from[nhwc];
        else
          to[nhwc] = from[nchw];
      }
}

KERNEL void im2col2(int n, const float *map, float *cols) {
  for (int s = 0; s < n; ++s)
    for (int oy = 0; oy < kOut2; ++oy)
      for (int ox = 0; ox < kOut2; ++ox) {
        float *row = cols + ((s * kOut2 + oy) * kOut2 + ox) * kCol2;
        for (int ky = 0; ky < kK; ++ky) {
          const float *in = map + ((s * kPool1 + oy + ky) * kPool1 + ox) * kC1;
          std::memcpy(row + ky * kK * kC1, in, sizeof(float) * kK * kC1);
        }
      }
}

KERNEL void col2im2(int n, const float *cols, float *map) {
  std::memset(map, 0, sizeof(float) * n * kPool1 * kPool1 * kC1);
  for (int s = 0; s < n; ++s)
    for (int oy = 0; oy < kOut2; ++oy)
      for (int ox = 0; ox < kOut2; ++ox) {
        const float *row = cols + ((s * kOut2 + oy) * kOut2 + ox) * kCol2;
        for (int ky = 0; ky < kK; ++ky) {
          float *out = map + ((s * kPool1 + oy + ky) * kPool1 + ox) * kC1;
          const float *in = row + ky * kK * kC1;
          for (int j = 0; j < kK * kC1; ++j) out[j] += in[j];
        }
      }
}

// fc1's bias and ReLU, then dropout with a mask already scaled by 1/(1-p) (or none).
KERNEL void bias_relu_dropout(int n, const float *bias, float *hidden, const float *mask,
                              float *dropped) {
  for (int s = 0; s < n; ++s) {
    float *h = hidden + s * kHidden;
    for (int j = 0; j < kHidden; ++j) h[j] = std::max(h[j] + bias[j], 0.0f);
    if (mask != nullptr)
      for (int j = 0; j < kHidden; ++j) dropped[s * kHidden + j] = h[j] * mask[s * kHidden + j];
  }
}

KERNEL void relu_dropout_grad(int n, const float *hidden, const float *mask, float *grad,
                              float *grad_bias) {
  for (int s = 0; s < n; ++s)
    for (int j = 0; j < kHidden; ++j) {
      float g = hidden[s * kHidden + j] > 0.0f ? grad[s * kHidden + j] : 0.0f;
      if (mask != nullptr) g *= mask[s * kHidden + j];
      grad[s * kHidden + j] = g;
      grad_bias[j] += g;
    }
}

// Mean cross-entropy over the whole batch (`total` samples): returns this chunk's summed
// loss and turns its logits into their gradient, (softmax - one-hot) / total.
double cross_entropy(int n, int total, const float *bias, const int64_t *labels, float *logits,
                     float *grad_bias) {
  double loss = 0.0;
  for (int s = 0; s < n; ++s) {
    float *z = logits + s * kClasses;
    float top = -INFINITY;
    for (int j = 0; j < kClasses; ++j) top = std::max(top, z[j] += bias[j]);
    float sum = 0.0f;
    for (int j = 0; j < kClasses; ++j) sum += std::exp(z[j] - top);
    const float log_sum = std::log(sum) + top;
    loss += log_sum - z[labels[s]];
    for (int j = 0; j < kClasses; ++j) {
      const float g = (std::exp(z[j] - log_sum) - (j == labels[s] ? 1.0f : 0.0f)) / total;
      z[j] = g;
      grad_bias[j] += g;
    }
  }
  return loss;
}

KERNEL void add_into(int64_t count, const float *from, float *to) {
  for (int64_t i = 0; i < count; ++i) to[i] += from[i];
}

// One thread's scratch: activations and gradients of its chunk, and its weight gradients.
struct Chunk {
  std::vector<float> cols1, conv1, pool1, cols2, conv2, pool2, hidden, logits;
  // fc1's input and output gradient sit in batch-wide arrays (this chunk's rows), so that
  // fc1's weight gradient is one product over the whole batch (fc1_weight_step).
  float *flat = nullptr, *dropped = nullptr;
  std::vector<float> grad_flat, grad_pool2, grad_conv2, grad_pool1, grad_conv1;
  // All eight weight gradients, packed; fc1's weight is filled only when the gradients are
  // handed out, and then in chunk 0 (fc1_weight_step).
  std::vector<float> grads;
  double loss = 0.0;

  void fit(int n, int64_t grad_size) {
    cols1.resize(size_t(n) * kOut1 * kOut1 * kCol1);
    conv1.resize(size_t(n) * kOut1 * kOut1 * kC1);
    grad_conv1.resize(conv1.size());
    pool1.resize(size_t(n) * kPool1 * kPool1 * kC1);
    grad_pool1.resize(pool1.size());
    cols2.resize(size_t(n) * kOut2 * kOut2 * kCol2);
    conv2.resize(size_t(n) * kOut2 * kOut2 * kC2);
    grad_conv2.resize(conv2.size());
    pool2.resize(size_t(n) * kFlat);
    grad_pool2.resize(pool2.size());
    grad_flat.resize(pool2.size());
    hidden.resize(size_t(n) * kHidden);
    logits.resize(size_t(n) * kClasses);
    grads.resize(grad_size);
  }
};

// Where each parameter's gradient sits in a Chunk's packed `grads`, in the parameters' order.
constexpr int64_t kSizes[8] = {kC1 * kCol1,    kC1,     kC2 * kCol2,       kC2,
                               kHidden * kFlat, kHidden, kClasses * kHidden, kClasses};

std::vector<Chunk> &chunks() {
  static std::vector<Chunk> all;  // kept between steps: no allocation once warm
  return all;
}

// Weights as the kernels read them: conv2's as (out, ky, kx, in), the rest as they are.
struct Weights {
  const float *w[8];
};

void chunk_step(Chunk &ch, int n, int total, const float *images, const int64_t *labels,
                const float *mask, const Weights &wt, const int64_t *offsets) {
  float *g = ch.grads.data();
  float *gw1 = g + offsets[0], *gb1 = g + offsets[1], *gw2 = g + offsets[2];
  float *gb2 = g + offsets[3], *gb3 = g + offsets[5];  // fc1's weight: fc1_weight_step
  float *gw4 = g + offsets[6], *gb4 = g + offsets[7];
  std::fill(gb1, gb1 + kC1, 0.0f);
  std::fill(gb2, gb2 + kC2, 0.0f);
  std::fill(gb3, gb3 + kHidden, 0.0f);
  std::fill(gb4, gb4 + kClasses, 0.0f);
  const int rows1 = n * kOut1 * kOut1, rows2 = n * kOut2 * kOut2;

  // Forward.
  im2col1(n, images, ch.cols1.data());
  mm(false, true, rows1, kC1, kCol1, ch.cols1.data(), kCol1, wt.w[0], kCol1, 0.0f,
     ch.conv1.data(), kC1);
  pool_relu1(n, ch.conv1.data(), wt.w[1], ch.pool1.data());
  im2col2(n, ch.pool1.data(), ch.cols2.data());
  mm(false, true, rows2, kC2, kCol2, ch.cols2.data(), kCol2, wt.w[2], kCol2, 0.0f,
     ch.conv2.data(), kC2);
  pool_relu2(n, ch.conv2.data(), wt.w[3], ch.pool2.data());
  relayout(n, ch.pool2.data(), ch.flat, true);
  mm(false, true, n, kHidden, kFlat, ch.flat, kFlat, wt.w[4], kFlat, 0.0f,
     ch.hidden.data(), kHidden);
  bias_relu_dropout(n, wt.w[5], ch.hidden.data(), mask, ch.dropped);
  const float *fc2_in = mask != nullptr ? ch.dropped : ch.hidden.data();
  mm(false, true, n, kClasses, kHidden, fc2_in, kHidden, wt.w[6], kHidden, 0.0f,
     ch.logits.data(), kClasses);
  ch.loss = cross_entropy(n, total, wt.w[7], labels, ch.logits.data(), gb4);

  // Backward; `logits` now holds their gradient.
  // The dropout output is spent: the gradient of fc1's output takes its place, and stays
  // there for fc1_weight_step.
  float *grad_hidden = ch.dropped;
  mm(true, false, kClasses, kHidden, n, ch.logits.data(), kClasses, fc2_in, kHidden, 0.0f, gw4,
     kHidden);
  mm(false, false, n, kHidden, kClasses, ch.logits.data(), kClasses, wt.w[6], kHidden, 0.0f,
     grad_hidden, kHidden);
  relu_dropout_grad(n, ch.hidden.data(), mask, grad_hidden, gb3);
  mm(false, false, n, kFlat, kHidden, grad_hidden, kHidden, wt.w[4], kFlat, 0.0f,
     ch.grad_flat.data(), kFlat);
  relayout(n, ch.grad_flat.data(), ch.grad_pool2.data(), false);
  unpool2(n, ch.conv2.data(), ch.pool2.data(), ch.grad_pool2.data(), ch.grad_conv2.data(), gb2);
  mm(true, false, kC2, kCol2, rows2, ch.grad_conv2.data(), kC2, ch.cols2.data(), kCol2, 0.0f,
     gw2, kCol2);
  // conv2's im2col rows are spent: their gradient takes their place (2 MB less to cache).
  float *grad_cols2 = ch.cols2.data();
  mm(false, false, rows2, kCol2, kC2, ch.grad_conv2.data(), kC2, wt.w[2], kCol2, 0.0f,
     grad_cols2, kCol2);
  col2im2(n, grad_cols2, ch.grad_pool1.data());
  unpool1(n, ch.conv1.data(), ch.pool1.data(), ch.grad_pool1.data(), ch.grad_conv1.data(),
          gb1);
  mm(true, false, kC1, kCol1, rows1, ch.grad_conv1.data(), kC1, ch.cols1.data(), kCol1, 0.0f,
     gw1, kCol1);
}

// fc1's weight gradient is 400,000 floats, 93% of the parameters: summing one copy per
// thread and then updating would stream it through memory three more times. Instead each
// thread computes, after the barrier, blocks of its rows over the whole batch, and updates
// each block while it is in cache.
constexpr int kFc1Weight = 4, kBlockRows = 16;

template <class Apply>
void fc1_weight_step(const float *grad_out, const float *input, int total, int member, int team,
                     float *keep, Apply apply) {
  thread_local std::vector<float> block(size_t(kBlockRows) * kFlat);
  const int first = kHidden * member / team, last = kHidden * (member + 1) / team;
  for (int row = first; row < last; row += kBlockRows) {
    const int rows = std::min(kBlockRows, last - row);
    float *out = keep != nullptr ? keep + int64_t(row) * kFlat : block.data();
    // These rows of (gradient of fc1's output)^T x (its input).
    mm(true, false, rows, kFlat, total, grad_out + row, kHidden, input, kFlat, 0.0f, out, kFlat);
    apply(int64_t(row) * kFlat, int64_t(row + rows) * kFlat, out);
  }
}

void check_param(const torch::Tensor &t, const char *what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32,
              what, " must be a float32 CPU tensor");
  TORCH_CHECK(t.is_non_overlapping_and_dense(), what, " must be dense");
}

// conv2's weight (or gradient) as (out, ky, kx, in): a view when it is channels_last.
torch::Tensor kernel_order(const torch::Tensor &conv2) { return conv2.permute({0, 2, 3, 1}); }

}  // namespace

namespace {

KERNEL void sgd_kernel(int64_t count, float *__restrict param, const float *__restrict grad,
                       float *__restrict velocity, float lr, float momentum,
                       float weight_decay, bool first) {
  for (int64_t i = 0; i < count; ++i) {
    float g = grad[i] + weight_decay * param[i];
    if (velocity != nullptr) {
      g = first ? g : momentum * velocity[i] + g;
      velocity[i] = g;
    }
    param[i] -= lr * g;
  }
}

KERNEL void adam_kernel(int64_t count, float *__restrict param, const float *__restrict grad,
                        float *__restrict mean, float *__restrict square, float lr,
                        float weight_decay, bool decoupled, float beta1, float beta2, float eps,
                        float step_size, float root_correction) {
  for (int64_t i = 0; i < count; ++i) {
    float g = grad[i];
    if (decoupled)
      param[i] *= 1.0f - lr * weight_decay;
    else
      g += weight_decay * param[i];
    mean[i] += (1.0f - beta1) * (g - mean[i]);
    square[i] = beta2 * square[i] + (1.0f - beta2) * g * g;
    param[i] -= step_size * mean[i] / (std::sqrt(square[i]) / root_correction + eps);
  }
}

// What a step does with the batch's gradients: hand them out, or apply SGD or Adam(W) to
// the parameters in place, each thread on its own slice of every parameter.
struct Rule {
  enum Kind { kGradients, kSgd, kAdam } kind;
  std::vector<torch::Tensor> state1, state2;  // SGD: velocity (empty without momentum);
                                              // Adam: the moment estimates
  float lr = 0, momentum = 0, weight_decay = 0, beta1 = 0, beta2 = 0, eps = 0;
  float step_size = 0, root_correction = 0;
  bool first = false, decoupled = false;

  void apply(float *param, int i, int64_t begin, int64_t end, const float *grad) const {
    auto at = [&](const std::vector<torch::Tensor> &state) {
      return state.empty() ? nullptr : state[i].data_ptr<float>() + begin;
    };
    if (kind == kSgd)
      sgd_kernel(end - begin, param + begin, grad, at(state1), lr, momentum, weight_decay, first);
    else if (kind == kAdam)
      adam_kernel(end - begin, param + begin, grad, at(state1), at(state2), lr, weight_decay,
                  decoupled, beta1, beta2, eps, step_size, root_correction);
  }
};

// One batch through the network on `threads` threads that meet once: each runs its chunk of
// the batch, then (after the barrier) adds up every chunk's gradient over its own slice of
// each parameter and applies the rule there. Returns the mean loss; the summed gradients
// stay in chunk 0.
double run_step(const torch::Tensor &images, const torch::Tensor &labels,
                const std::vector<torch::Tensor> &params,
                const c10::optional<torch::Tensor> &dropout_mask, int64_t threads,
                const Rule &rule) {
  TORCH_CHECK(params.size() == 8, "expected the LeNet's 8 parameters");
  TORCH_CHECK(images.dim() == 4 && images.size(1) == 1 && images.size(2) == kImage &&
                  images.size(3) == kImage,
              "images must be (batch, 1, 28, 28)");
  const int total = int(images.size(0));
  TORCH_CHECK(total > 0 && labels.dim() == 1 && labels.size(0) == total &&
                  labels.scalar_type() == torch::kInt64,
              "labels must be int64 of the batch's length");
  const auto x = images.to(torch::kFloat32).contiguous();
  const auto y = labels.contiguous();
  const int64_t *label = y.data_ptr<int64_t>();
  TORCH_CHECK(std::all_of(label, label + total, [](int64_t c) { return c >= 0 && c < kClasses; }),
              "labels must lie in [0, 10)");
  torch::Tensor mask;
  if (dropout_mask.has_value()) {
    mask = dropout_mask->to(torch::kFloat32).contiguous();
    TORCH_CHECK(mask.numel() == int64_t(total) * kHidden, "the dropout mask must be (batch, 500)");
  }
  // The weights in kernel order: a view, except for conv2's when it is not channels_last.
  std::vector<torch::Tensor> held;
  Weights wt{};
  for (int i = 0; i < 8; ++i) {
    check_param(params[i], "a parameter");
    TORCH_CHECK(params[i].numel() == kSizes[i], "parameter ", i, " has the wrong size");
    held.push_back((i == 2 ? kernel_order(params[i]) : params[i]).contiguous());
    TORCH_CHECK(rule.kind == Rule::kGradients || held.back().data_ptr() == params[i].data_ptr(),
                "an update in place needs conv2's weight channels_last and the rest contiguous");
    for (const auto *state : {&rule.state1, &rule.state2})
      TORCH_CHECK(state->empty() || (*state)[i].strides() == params[i].strides(),
                  "optimizer state must have its parameter's layout");
    wt.w[i] = held.back().data_ptr<float>();
  }
  int64_t offsets[8], grad_size = 0;
  for (int i = 0; i < 8; ++i) offsets[i] = grad_size, grad_size += kSizes[i];

  const int parts = int(std::clamp<int64_t>(threads, 1, total));
  auto &all = chunks();
  if (int(all.size()) < parts) all.resize(parts);
  const int per = total / parts, extra = total % parts;
  auto start_of = [&](int p) { return p * per + std::min(p, extra); };
  static std::vector<float> batch_flat, batch_dropped;
  batch_flat.resize(size_t(total) * kFlat);
  batch_dropped.resize(size_t(total) * kHidden);
  auto forward_backward = [&](int p) {
    const int start = start_of(p), n = start_of(p + 1) - start;
    all[p].fit(n, grad_size);
    all[p].flat = batch_flat.data() + int64_t(start) * kFlat;
    all[p].dropped = batch_dropped.data() + int64_t(start) * kHidden;
    chunk_step(all[p], n, total, x.data_ptr<float>() + int64_t(start) * kImage * kImage,
               label + start,
               mask.defined() ? mask.data_ptr<float>() + int64_t(start) * kHidden : nullptr, wt,
               offsets);
  };
  auto reduce_and_apply = [&](int member, int team) {
    for (int i = 0; i < 8; ++i) {
      float *param = params[i].data_ptr<float>();
      if (i == kFc1Weight) {
        float *keep = rule.kind == Rule::kGradients ? all[0].grads.data() + offsets[i] : nullptr;
        fc1_weight_step(batch_dropped.data(), batch_flat.data(), total, member, team, keep,
                        [&](int64_t begin, int64_t end, const float *grad) {
                          rule.apply(param, i, begin, end, grad);
                        });
        continue;
      }
      const int64_t begin = kSizes[i] * member / team, end = kSizes[i] * (member + 1) / team;
      float *sum = all[0].grads.data() + offsets[i] + begin;
      for (int p = 1; p < parts; ++p)
        add_into(end - begin, all[p].grads.data() + offsets[i] + begin, sum);
      rule.apply(param, i, begin, end, sum);
    }
  };
  if (parts == 1) {
    forward_backward(0);
    reduce_and_apply(0, 1);
  } else {
#pragma omp parallel num_threads(parts)
    {
      const int member = omp_get_thread_num(), team = omp_get_num_threads();
      for (int p = member; p < parts; p += team) forward_backward(p);
#pragma omp barrier
      reduce_and_apply(member, team);
    }
  }
  double loss = 0.0;
  for (int p = 0; p < parts; ++p) loss += all[p].loss;
  return loss / total;
}

}  // namespace

// Forward and backward of one batch: write the eight gradients (conv1.weight, conv1.bias,
// conv2.weight, ..., fc2.bias) into `grads` and return the mean loss.
double forward_backward(const torch::Tensor &images, const torch::Tensor &labels,
                        const std::vector<torch::Tensor> &params,
                        const std::vector<torch::Tensor> &grads,
                        const c10::optional<torch::Tensor> &dropout_mask, int64_t threads) {
  TORCH_CHECK(grads.size() == 8, "expected the LeNet's 8 gradients");
  const double loss = run_step(images, labels, params, dropout_mask, threads,
                               Rule{Rule::kGradients, {}, {}});
  int64_t offset = 0;
  for (int i = 0; i < 8; ++i) {
    check_param(grads[i], "a gradient");
    TORCH_CHECK(grads[i].sizes() == params[i].sizes(), "gradient ", i, " has the wrong shape");
    auto target = i == 2 ? kernel_order(grads[i]) : grads[i];
    target.copy_(torch::from_blob(chunks()[0].grads.data() + offset, target.sizes()));
    offset += kSizes[i];
  }
  return loss;
}

// A whole SGD step, as mnist_trainer.optim.SGD: weight decay into the gradient, heavy-ball
// momentum whose velocity starts at the first gradient; `velocity` empty without momentum.
double sgd_step(const torch::Tensor &images, const torch::Tensor &labels,
                const std::vector<torch::Tensor> &params,
                const c10::optional<torch::Tensor> &dropout_mask, int64_t threads,
                const std::vector<torch::Tensor> &velocity, double lr, double momentum,
                double weight_decay, bool first) {
  Rule rule{Rule::kSgd, velocity, {}};
  rule.lr = float(lr), rule.momentum = float(momentum), rule.weight_decay = float(weight_decay);
  rule.first = first;
  return run_step(images, labels, params, dropout_mask, threads, rule);
}

// A whole Adam step, or AdamW when `decoupled`, as mnist_trainer.optim.Adam; `step` counts
// from 1.
double adam_step(const torch::Tensor &images, const torch::Tensor &labels,
                 const std::vector<torch::Tensor> &params,
                 const c10::optional<torch::Tensor> &dropout_mask, int64_t threads,
                 const std::vector<torch::Tensor> &means, const std::vector<torch::Tensor> &squares,
                 double lr, double weight_decay, bool decoupled, int64_t step, double beta1,
                 double beta2, double eps) {
  Rule rule{Rule::kAdam, means, squares};
  rule.lr = float(lr), rule.weight_decay = float(weight_decay), rule.decoupled = decoupled;
  rule.beta1 = float(beta1), rule.beta2 = float(beta2), rule.eps = float(eps);
  rule.step_size = float(lr / (1.0 - std::pow(beta1, double(step))));
  rule.root_correction = float(std::sqrt(1.0 - std::pow(beta2, double(step))));
  return run_step(images, labels, params, dropout_mask, threads, rule);
}

// The instruction set the loader chose for the loops above.
std::string instructions() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return "avx512";
  if (__builtin_cpu_supports("x86-64-v3")) return "avx2";
#endif
  return "baseline";
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "The trainer's LeNet training step as compiled CPU kernels.";
  m.def("forward_backward", &forward_backward, "forward and backward of one batch",
        py::arg("images"), py::arg("labels"), py::arg("params"), py::arg("grads"),
        py::arg("dropout_mask"), py::arg("threads"));
  m.def("sgd_step", &sgd_step, "a whole SGD training step on one batch");
  m.def("adam_step", &adam_step, "a whole Adam or AdamW training step on one batch");
  m.def("instructions", &instructions, "the instruction set the kernels run");
}
