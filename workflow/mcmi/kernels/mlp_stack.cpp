// One training epoch of M independent 3-layer ReLU MLPs (the synthetic Table 5 models), fused in C++.
//
// Members are independent, so each one runs all of its steps of the epoch back to back while its
// weights, gradients and optimizer state stay in the core's cache; members are spread over threads
// with at::parallel_for. Per step: gather the batch by the member's permutation, forward, soft-target
// cross-entropy (optionally minus lambda * KL(P_x || Q_y), the MCMI objective), hand-written backward,
// and the Adam or SGD (momentum) update with torch.optim's per-element arithmetic. Every matrix product
// is one mlp::combine_rows call (mlp_core.h). Python twin and reference: mcmi.synthetic.MLPStack.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <vector>

#include "mlp_core.h"

namespace {

constexpr int kLayers = 3;

template <typename T>
struct Member {  // pointers to one member's six tensors (w1, b1, w2, b2, w3, b3), weights (in, out)
  T* t[2 * kLayers];
};

template <typename T>
struct Workspace {
  int64_t padded;  // the class count rounded up to whole vectors
  std::vector<T> x, target, h1, h2, z, dz, dh2, dh1, w2t, w3t, w3p, b3p, g3t, grad;
  Workspace(int64_t batch, int64_t d, int64_t h, int64_t k, int64_t params)
      : padded((k + mlp::Vec<T>::lanes - 1) / mlp::Vec<T>::lanes * mlp::Vec<T>::lanes), x(batch * d),
        target(batch * k), h1(batch * h), h2(batch * h), z(batch * padded), dz(batch * k), dh2(batch * h),
        dh1(batch * h), w2t(h * h), w3t(k * h), w3p(h * padded), b3p(padded), g3t(k * h), grad(params) {}
};

// ReLU that lets NaN through, as torch.relu does (so a NaN input fails the epoch's loss check).
template <typename T>
void relu(T* __restrict__ v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) v[i] = v[i] < T(0) ? T(0) : v[i];
}

// g[i] = 0 where the ReLU output h[i] <= 0 (torch's threshold_backward(g, h, 0)).
template <typename T>
void relu_backward(T* __restrict__ g, const T* __restrict__ h, int64_t n) {
  for (int64_t i = 0; i < n; ++i) g[i] = h[i] <= T(0) ? T(0) : g[i];
}

template <typename T>
void column_sums(const T* __restrict__ g, int64_t rows, int64_t cols, T* __restrict__ out) {
  for (int64_t c = 0; c < cols; ++c) out[c] = T(0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[c] += g[r * cols + c];
}

template <typename T>
void train_member(int64_t m, const at::Tensor& x, const at::Tensor& targets, const at::Tensor& perms,
                  const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& state1,
                  const std::vector<at::Tensor>& state2, int64_t step0, const mlp::Optim& opt, int64_t batch_size,
                  const at::Tensor& lam, const at::Tensor& log_q, const at::Tensor& labels, Workspace<T>& ws,
                  double* loss_out) {
  const int64_t num = x.size(0), d = x.size(1), h = params[0].size(2), k = params[4].size(2);
  const T* xp = x.data_ptr<T>();
  const T* tp = targets.data_ptr<T>();
  const int64_t ts_m = targets.stride(0), ts_n = targets.stride(1), ts_k = targets.stride(2);
  const int64_t* perm = perms.data_ptr<int64_t>() + m * perms.stride(0);
  const bool mcmi = lam.defined() && lam.numel() > 0;
  const T lam_m = mcmi ? lam.data_ptr<T>()[m] : T(0);
  const T* log_q_m = mcmi ? log_q.data_ptr<T>() + m * k * k : nullptr;
  const int64_t* label = mcmi ? labels.data_ptr<int64_t>() : nullptr;

  Member<T> p, s1, s2, g;
  int64_t sizes[2 * kLayers];
  int64_t offset = 0;
  for (int j = 0; j < 2 * kLayers; ++j) {
    sizes[j] = params[j].size(1) * params[j].size(2);
    p.t[j] = params[j].data_ptr<T>() + m * sizes[j];
    s1.t[j] = state1[j].data_ptr<T>() + m * sizes[j];
    s2.t[j] = state2[j].data_ptr<T>() + m * sizes[j];
    g.t[j] = ws.grad.data() + offset;
    offset += sizes[j];
  }
  double loss_sum = 0;
  int64_t step = step0;
  for (int64_t begin = 0; begin < num; begin += batch_size) {
    const int64_t rows = std::min(batch_size, num - begin);
    for (int64_t b = 0; b < rows; ++b) {
      const int64_t idx = perm[begin + b];
      for (int64_t c = 0; c < d; ++c) ws.x[b * d + c] = xp[idx * d + c];
      const T* t_row = tp + m * ts_m + idx * ts_n;
      for (int64_t c = 0; c < k; ++c) ws.target[b * k + c] = t_row[c * ts_k];
    }
    // weights in the layouts the products need: W2^T, W3^T, and W3 padded to whole vectors
    mlp::transpose(p.t[2], h, h, ws.w2t.data());
    mlp::transpose(p.t[4], h, k, ws.w3t.data());
    const int64_t kp = ws.padded;
    for (int64_t i = 0; i < h; ++i)
      for (int64_t c = 0; c < kp; ++c) ws.w3p[i * kp + c] = c < k ? p.t[4][i * k + c] : T(0);
    for (int64_t c = 0; c < kp; ++c) ws.b3p[c] = c < k ? p.t[5][c] : T(0);
    // forward
    mlp::combine_rows(ws.h1.data(), h, rows, h, ws.x.data(), d, 1, d, p.t[0], h, p.t[1]);
    relu(ws.h1.data(), rows * h);
    mlp::combine_rows(ws.h2.data(), h, rows, h, ws.h1.data(), h, 1, h, p.t[2], h, p.t[3]);
    relu(ws.h2.data(), rows * h);
    mlp::combine_rows(ws.z.data(), kp, rows, kp, ws.h2.data(), h, 1, h, ws.w3p.data(), kp, ws.b3p.data());
    // log-softmax, loss and dL/dz of the per-batch mean loss (z becomes log p, dz holds p first)
    for (int64_t b = 0; b < rows; ++b) {
      T* z = ws.z.data() + b * kp;
      T* dz = ws.dz.data() + b * k;
      const T* t = ws.target.data() + b * k;
      T top = z[0];
      for (int64_t c = 1; c < k; ++c) top = z[c] > top ? z[c] : top;
      T total = 0;
      for (int64_t c = 0; c < k; ++c) total += std::exp(z[c] - top);
      const T log_total = std::log(total);
      T ce = 0;
      for (int64_t c = 0; c < k; ++c) {
        z[c] = z[c] - top - log_total;
        ce -= t[c] * z[c];
        dz[c] = std::exp(z[c]);
      }
      double row_loss = double(ce);
      if (mcmi) {
        const T* lq = log_q_m + label[perm[begin + b]] * k;
        T kl = 0;
        for (int64_t c = 0; c < k; ++c) kl += dz[c] * (z[c] - lq[c]);
        for (int64_t c = 0; c < k; ++c) dz[c] = (dz[c] - t[c]) - lam_m * dz[c] * ((z[c] - lq[c]) - kl);
        row_loss -= double(lam_m) * double(kl);
      } else {
        for (int64_t c = 0; c < k; ++c) dz[c] -= t[c];
      }
      for (int64_t c = 0; c < k; ++c) dz[c] /= T(rows);
      loss_sum += row_loss;
    }
    // backward
    mlp::combine_rows(ws.g3t.data(), h, k, h, ws.dz.data(), 1, k, rows, ws.h2.data(), h, static_cast<T*>(nullptr));
    mlp::transpose(ws.g3t.data(), k, h, g.t[4]);
    column_sums(ws.dz.data(), rows, k, g.t[5]);
    mlp::combine_rows(ws.dh2.data(), h, rows, h, ws.dz.data(), k, 1, k, ws.w3t.data(), h, static_cast<T*>(nullptr));
    relu_backward(ws.dh2.data(), ws.h2.data(), rows * h);
    mlp::combine_rows(g.t[2], h, h, h, ws.h1.data(), 1, h, rows, ws.dh2.data(), h, static_cast<T*>(nullptr));
    column_sums(ws.dh2.data(), rows, h, g.t[3]);
    mlp::combine_rows(ws.dh1.data(), h, rows, h, ws.dh2.data(), h, 1, h, ws.w2t.data(), h, static_cast<T*>(nullptr));
    relu_backward(ws.dh1.data(), ws.h1.data(), rows * h);
    mlp::combine_rows(g.t[0], h, d, h, ws.x.data(), 1, d, rows, ws.dh1.data(), h, static_cast<T*>(nullptr));
    column_sums(ws.dh1.data(), rows, h, g.t[1]);
    ++step;
    for (int j = 0; j < 2 * kLayers; ++j) mlp::update(opt, step, p.t[j], g.t[j], s1.t[j], s2.t[j], sizes[j]);
  }
  *loss_out = loss_sum;
}

void check(bool ok, const char* what) { TORCH_CHECK(ok, "mlp_stack.train_epoch: ", what); }

}  // namespace

// Train every member for one pass over x; returns the per-member sum of per-sample losses (float64).
at::Tensor train_epoch(const at::Tensor& x, const at::Tensor& targets, const at::Tensor& perms,
                       const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& state1,
                       const std::vector<at::Tensor>& state2, int64_t step0, double lr, bool adam, double beta1,
                       double beta2, double eps, double momentum, int64_t batch_size, const at::Tensor& lam,
                       const at::Tensor& log_q, const at::Tensor& labels) {
  check(params.size() == 2 * kLayers && state1.size() == params.size() && state2.size() == params.size(),
        "expected six parameter tensors and six of each optimizer state");
  check(x.dim() == 2 && x.is_contiguous(), "x must be a contiguous (N, D) tensor");
  check(targets.dim() == 3 && perms.dim() == 2 && perms.scalar_type() == at::kLong, "bad targets/perms");
  const int64_t members = params[0].size(0), k = params[4].size(2);
  for (size_t j = 0; j < params.size(); ++j) {
    check(params[j].is_contiguous() && state1[j].is_contiguous() && state2[j].is_contiguous(),
          "parameters and states must be contiguous");
    check(params[j].scalar_type() == x.scalar_type() && targets.scalar_type() == x.scalar_type(), "dtype mismatch");
    check(params[j].size(0) == members, "all parameter tensors need the same member count");
  }
  check(perms.size(0) == members && perms.size(1) == x.size(0) && perms.stride(1) == 1, "perms must be (M, N)");
  check(targets.size(0) == members && targets.size(1) == x.size(0) && targets.size(2) == k,
        "targets must be (M, N, K)");
  const bool mcmi = lam.defined() && lam.numel() > 0;
  if (mcmi) check(lam.numel() == members && log_q.is_contiguous() && log_q.numel() == members * k * k &&
                      labels.scalar_type() == at::kLong && labels.numel() == x.size(0),
                  "MCMI needs lam (M,), contiguous log_q (M, K, K) and int64 labels (N,)");
  const mlp::Optim opt{adam, lr, beta1, beta2, eps, momentum};
  auto losses = at::zeros({members}, x.options().dtype(at::kDouble));
  double* loss_ptr = losses.data_ptr<double>();
  int64_t param_count = 0;
  for (const auto& t : params) param_count += t.size(1) * t.size(2);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mlp_stack_train_epoch", [&] {
    at::parallel_for(0, members, 1, [&](int64_t first, int64_t last) {
      Workspace<scalar_t> ws(batch_size, x.size(1), params[0].size(2), k, param_count);
      for (int64_t m = first; m < last; ++m)
        train_member<scalar_t>(m, x, targets, perms, params, state1, state2, step0, opt, batch_size, lam, log_q,
                               labels, ws, loss_ptr + m);
    });
  });
  return losses;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("train_epoch", &train_epoch, "one epoch of M independent MLPs (see mlp_stack.cpp)");
}
