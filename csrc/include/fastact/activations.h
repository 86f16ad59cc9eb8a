#pragma once
// One functor per activation: fwd(x) and bwd(x, dy) = dy * f'(x), written once
// for float and double (the opmath types) and for host and device. The CPU
// and CUDA kernels, the GLU family and the fused dropout variants all call
// these; no formula is written twice.
//
// Transcendental calls are made before any select, never inside one arm of
// a ?: (the CPU loops vectorize a call only when it is unconditional).
//
// The formulas follow ATen's kernels operation for operation (comparison
// direction included), so that special values behave as in torch: NaN
// propagates where torch propagates it, and the gradient at a kink (relu at 0,
// hardtanh at its bounds, shrink at +-lambd, softplus past threshold) is
// torch's choice.
#include <c10/util/Exception.h>

#include <cmath>
#include <c10/util/string_view.h>

#include "fastact/macros.h"
#include "fastact/math.h"

namespace fastact {

namespace m = ::fastact::math;

struct Relu {
  template <class T> FA_HD T fwd(T x) const { return x < T(0) ? T(0) : x; }
  template <class T> FA_HD T bwd(T x, T dy) const { return x <= T(0) ? T(0) : dy; }
};

struct LeakyRelu {
  double slope;
  explicit LeakyRelu(double negative_slope) : slope(negative_slope) {}
  template <class T> FA_HD T fwd(T x) const { return fwd_with(x, T(slope)); }
  template <class T> FA_HD T bwd(T x, T dy) const { return bwd_with(x, dy, T(slope)); }
  // With a slope that varies per element (prelu's per-channel weight, rrelu's draws).
  template <class T> static FA_HD T fwd_with(T x, T s) { return x > T(0) ? x : x * s; }
  template <class T> static FA_HD T bwd_with(T x, T dy, T s) { return x > T(0) ? dy : dy * s; }
};

// torch's elu(x, alpha, scale, input_scale); selu and celu are instances.
struct Elu {
  double alpha, scale, input_scale;
  explicit Elu(double alpha_ = 1.0, double scale_ = 1.0, double input_scale_ = 1.0)
      : alpha(alpha_), scale(scale_), input_scale(input_scale_) {}
  template <class T> FA_HD T fwd(T x) const {
    const T neg = T(alpha * scale) * m::expm1(x * T(input_scale));
    return x <= T(0) ? neg : x * T(scale);
  }
  // x > 0 tested first: a NaN input takes the exp branch and gives NaN, as in ATen.
  template <class T> FA_HD T bwd(T x, T dy) const {
    const T neg = dy * T(input_scale * alpha * scale) * m::exp(x * T(input_scale));
    return x > T(0) ? dy * T(scale) : neg;
  }
};

struct Selu : Elu {
  Selu() : Elu(1.6732632423543772848170429916717, 1.0507009873554804934193349852946, 1.0) {}
};

struct Celu : Elu {
  explicit Celu(double alpha_) : Elu(check_alpha(alpha_), 1.0, 1.0 / alpha_) {}
  static double check_alpha(double a) {
    TORCH_CHECK_VALUE(a != 0, "fastact.celu: alpha cannot be 0");
    return a;
  }
};

struct Gelu {
  bool tanh_form;
  Gelu() : tanh_form(false) {}
  explicit Gelu(c10::string_view approximate) : tanh_form(parse(approximate)) {}
  static bool parse(c10::string_view a) {
    TORCH_CHECK_VALUE(a == "none" || a == "tanh",
                      "fastact.gelu: approximate must be 'none' or 'tanh', got '", a, "'");
    return a == "tanh";
  }
  static constexpr double kSqrt1_2 = 0.70710678118654752440;      // 1/sqrt(2)
  static constexpr double kInvSqrt2Pi = 0.39894228040143267794;   // 1/sqrt(2*pi)
  static constexpr double kSqrt2OverPi = 0.79788456080286535588;  // sqrt(2/pi)
  static constexpr double kKappa = 0.044715;
  // sigmoid(v) and sigmoid(-v), each without cancellation (e = exp(-|v|) <= 1).
  template <class T> FA_HD static void sigmoid_pair(T v, T& s, T& s_neg) {
    const T e = m::exp(-m::abs(v));
    const T big = T(1) / (T(1) + e);  // sigmoid(|v|)
    const T small = e * big;          // sigmoid(-|v|)
    s = v >= T(0) ? big : small;
    s_neg = v >= T(0) ? small : big;
  }
  template <class T> FA_HD T fwd(T x) const {
    if (tanh_form) {
      // 0.5 x (1 + tanh(u)) = x sigmoid(2u): no cancellation for u << 0
      T s, s_neg;
      sigmoid_pair(T(2) * T(kSqrt2OverPi) * (x + T(kKappa) * x * x * x), s, s_neg);
      return x * s;
    }
    return x * T(0.5) * (T(1) + m::erf(x * T(kSqrt1_2)));
  }
  template <class T> FA_HD T bwd(T x, T dy) const {
    if (tanh_form) {
      // with t = tanh(u): 0.5 (1 + t) = sigmoid(2u), 1 - t^2 = 4 sigmoid(2u) sigmoid(-2u)
      T x_sq = x * x;
      T s, s_neg;
      sigmoid_pair(T(2) * T(kSqrt2OverPi) * (x + T(kKappa) * x_sq * x), s, s_neg);
      T right_derivative = T(2) * x * s * s_neg * T(kSqrt2OverPi) * (T(1) + T(3 * kKappa) * x_sq);
      return dy * (s + right_derivative);
    }
    T cdf = T(0.5) * (T(1) + m::erf(x * T(kSqrt1_2)));
    T pdf = m::exp(T(-0.5) * x * x) * T(kInvSqrt2Pi);
    return dy * (cdf + x * pdf);
  }
};

// x * sigmoid(beta * x); silu and quick_gelu are instances.
struct Swish {
  double beta;
  explicit Swish(double beta_ = 1.0) : beta(beta_) {}
  template <class T> FA_HD T fwd(T x) const { return fwd_with(x, T(beta)); }
  template <class T> FA_HD T bwd(T x, T dy) const { return bwd_with(x, dy, T(beta)); }
  // With a beta that varies per element (a tensor beta, one value per feature).
  template <class T> static FA_HD T fwd_with(T x, T b) { return x / (T(1) + m::exp(-b * x)); }
  template <class T> static FA_HD T bwd_with(T x, T dy, T b) {
    T s = T(1) / (T(1) + m::exp(-b * x));
    return dy * s * (T(1) + b * x * (T(1) - s));
  }
  // d/d(beta) of x * sigmoid(beta * x), times dy.
  template <class T> static FA_HD T dbeta_with(T x, T dy, T b) {
    T s = T(1) / (T(1) + m::exp(-b * x));
    return dy * x * x * s * (T(1) - s);
  }
};
struct Silu : Swish { Silu() : Swish(1.0) {} };
struct QuickGelu : Swish { QuickGelu() : Swish(1.702) {} };

// gpt-oss's gated unit, a gated functor (kGated, elementwise.h: it defines
// the whole unit rather than an activation of the gate): g = min(gate, limit),
// u = clamp(up, -limit, limit), out = g sigmoid(alpha g) (u + 1). The clamps
// keep a NaN (their comparisons are false for it), as torch's clamp does. The
// gradient is the composite's with the clamps passing it where the input lies
// within the bounds, ends included (API.md; torch <= 2.11's clamp backward,
// `min <= x <= max`): at gate == limit and up == +-limit too (ties are common
// in bfloat16), never at a NaN. (torch 2.14 and 2.15's clamp passes it only
// strictly inside; the contract, not the torch release, decides.)
struct ClampedSwiglu {
  static constexpr bool kGated = true;
  double alpha, limit;
  ClampedSwiglu(double alpha_, double limit_) : alpha(alpha_), limit(limit_) {
    TORCH_CHECK_VALUE(std::isfinite(alpha_), "fastact.clamped_swiglu: alpha must be finite, got ", alpha_);
    // limit = inf clamps nothing; 0 would drop `up` altogether (a misconfiguration)
    TORCH_CHECK_VALUE(limit_ > 0, "fastact.clamped_swiglu: limit must be positive, got ", limit_);
  }
  template <class T> FA_HD T clamp_gate(T gate) const { return gate > T(limit) ? T(limit) : gate; }
  template <class T> FA_HD T clamp_up(T up) const {
    return up < -T(limit) ? -T(limit) : (up > T(limit) ? T(limit) : up);
  }
  template <class T> FA_HD T fwd(T gate, T up) const {
    return Swish::fwd_with(clamp_gate(gate), T(alpha)) * (clamp_up(up) + T(1));
  }
  template <class T> FA_HD void bwd(T gate, T up, T dy, T& d_gate, T& d_up) const {
    const T g = clamp_gate(gate);
    const T s = T(1) / (T(1) + m::exp(-T(alpha) * g));
    const T d_g = dy * (clamp_up(up) + T(1)) * s * (T(1) + T(alpha) * g * (T(1) - s));
    const T d_u = dy * g * s;
    d_gate = gate <= T(limit) ? d_g : T(0);
    d_up = (up >= -T(limit) && up <= T(limit)) ? d_u : T(0);
  }
};

struct Mish {
  template <class T> FA_HD T fwd(T x) const { return x * m::tanh(m::log1p(m::exp(x))); }
  template <class T> FA_HD T bwd(T x, T dy) const {
    T s = T(1) / (T(1) + m::exp(-x));
    T t = m::tanh(m::log1p(m::exp(x)));
    return dy * (t + x * s * (T(1) - t * t));
  }
};

struct Sigmoid {
  template <class T> FA_HD T fwd(T x) const { return T(1) / (T(1) + m::exp(-x)); }
  template <class T> FA_HD T bwd(T x, T dy) const {
    T y = fwd(x);
    return dy * (T(1) - y) * y;
  }
};

struct Tanh {
  template <class T> FA_HD T fwd(T x) const { return m::tanh(x); }
  template <class T> FA_HD T bwd(T x, T dy) const {
    T t = m::tanh(x);
    return dy * (T(1) - t * t);
  }
};

struct LogSigmoid {
  template <class T> FA_HD T fwd(T x) const {
    return m::min_nan(T(0), x) - m::log1p(m::exp(-m::abs(x)));
  }
  // sigmoid(-x) = (x < 0 ? 1 : z) / (1 + z), z = exp(-|x|) <= 1 (a z below
  // FLT_MIN, |x| > 87.3, is 0: the gradient's 1e-38 is then 0)
  template <class T> FA_HD T bwd(T x, T dy) const {
    T z = m::exp_nonpositive(-m::abs(x));
    return dy * (x < T(0) ? T(1) : z) / (T(1) + z);
  }
};

// hardswish and hardsigmoid multiply by 1/6 and 1/3 where ATen divides by 6
// and 3: a vector division costs more than the rest of the op (bf16
// hardswish ran at half of relu's speed in cache). x * (clamp * (1/6)) keeps
// hardswish(x) == x for x >= 3 (6 * (1/6) rounds to 1) and torch's NaN,
// -0 and -inf -> NaN; the result differs from ATen's by at most an ulp.
struct Hardswish {
  template <class T> FA_HD T fwd(T x) const {
    return x * (m::min_nan(m::max_nan(x + T(3), T(0)), T(6)) * T(1.0 / 6.0));
  }
  template <class T> FA_HD T bwd(T x, T dy) const {
    return x <= T(-3) ? T(0) : (x >= T(3) ? dy : dy * (x * T(1.0 / 3.0) + T(0.5)));
  }
};

struct Hardsigmoid {
  template <class T> FA_HD T fwd(T x) const {
    return m::min_nan(m::max_nan(x + T(3), T(0)), T(6)) * T(1.0 / 6.0);
  }
  template <class T> FA_HD T bwd(T x, T dy) const {
    return (x > T(-3) && x < T(3)) ? dy * T(1.0 / 6.0) : T(0);
  }
};

struct Hardtanh {
  double lo, hi;
  Hardtanh(double min_val, double max_val) : lo(min_val), hi(max_val) {
    TORCH_CHECK_VALUE(min_val <= max_val, "fastact.hardtanh: min_val (", min_val,
                      ") cannot be greater than max_val (", max_val, ")");
  }
  template <class T> FA_HD T fwd(T x) const {
    return x < T(lo) ? T(lo) : (x > T(hi) ? T(hi) : x);
  }
  template <class T> FA_HD T bwd(T x, T dy) const {
    return (x > T(lo) && x < T(hi)) ? dy : T(0);
  }
};
struct Relu6 : Hardtanh { Relu6() : Hardtanh(0.0, 6.0) {} };

struct Softplus {
  double beta, threshold;
  Softplus(double beta_, double threshold_) : beta(beta_), threshold(threshold_) {}
  template <class T> FA_HD T fwd(T x) const {
    const T bx = x * T(beta);
    const T soft = m::log1p(m::exp(bx)) / T(beta);
    return bx > T(threshold) ? x : soft;
  }
  template <class T> FA_HD T bwd(T x, T dy) const {
    T bx = x * T(beta);
    T z = m::exp(bx);
    return bx > T(threshold) ? dy : dy * z / (z + T(1));
  }
};

struct Softshrink {
  double lambd;
  explicit Softshrink(double l) : lambd(l) {
    TORCH_CHECK_VALUE(l >= 0, "fastact.softshrink: lambd must be greater or equal to 0, got ", l);
  }
  template <class T> FA_HD T fwd(T x) const {
    return x > T(lambd) ? x - T(lambd) : (x < -T(lambd) ? x + T(lambd) : x * T(0));
  }
  template <class T> FA_HD T bwd(T x, T dy) const {
    return (x < -T(lambd) || x > T(lambd)) ? dy : T(0);
  }
};

struct Hardshrink {
  double lambd;
  explicit Hardshrink(double l) : lambd(l) {}
  template <class T> FA_HD T fwd(T x) const {
    return (x >= -T(lambd) && x <= T(lambd)) ? T(0) : x;
  }
  template <class T> FA_HD T bwd(T x, T dy) const {
    return (x < -T(lambd) || x > T(lambd)) ? dy : T(0);
  }
};

struct Tanhshrink {
  template <class T> FA_HD T fwd(T x) const { return x - m::tanh(x); }
  template <class T> FA_HD T bwd(T x, T dy) const {
    T t = m::tanh(x);
    return dy * t * t;
  }
};

struct Softsign {
  template <class T> FA_HD T fwd(T x) const { return x / (T(1) + m::abs(x)); }
  // torch differentiates x / (1 + |x|) as a composition, which gives NaN at
  // +-inf; the closed form below gives the same everywhere else.
  template <class T> FA_HD T bwd(T x, T dy) const {
    T d = T(1) + m::abs(x);
    return m::abs(x) == T(INFINITY) ? T(NAN) : dy / (d * d);
  }
};

struct Threshold {
  double threshold, value;
  Threshold(double threshold_, double value_) : threshold(threshold_), value(value_) {}
  template <class T> FA_HD T fwd(T x) const { return x <= T(threshold) ? T(value) : x; }
  template <class T> FA_HD T bwd(T x, T dy) const { return x <= T(threshold) ? T(0) : dy; }
};

struct SquaredRelu {
  template <class T> FA_HD T fwd(T x) const {
    T r = x < T(0) ? T(0) : x;
    return r * r;
  }
  template <class T> FA_HD T bwd(T x, T dy) const { return x <= T(0) ? T(0) : T(2) * x * dy; }
};

}  // namespace fastact
