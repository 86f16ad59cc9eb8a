// Every schema of the fastact library, defined once. Kernels are registered
// per device in cpu/ and cuda/; fake kernels and autograd in python/fastact/ops/.
#include <torch/library.h>

#include <string>
#include <vector>

#include "fastact/alloc.h"
#include "fastact/build_info.h"
#include "fastact/ops.h"

namespace {

std::string with_args(const char* head, const char* args) {
  std::string s(head);
  if (args[0] != '\0') s += std::string(", ") + args;
  return s;
}

std::vector<std::string> activation_ops() {
  std::vector<std::string> ops;
#define FA_LIST_OP(name, F, ARGS, SCHEMA) ops.push_back(std::string(#name "|") + SCHEMA);
  FASTACT_ACTIVATIONS(FA_LIST_OP)
#undef FA_LIST_OP
  return ops;
}

std::vector<std::string> glu_ops() {
  std::vector<std::string> ops;
#define FA_LIST_OP(name, F, ARGS, SCHEMA) ops.push_back(std::string(#name "|") + SCHEMA);
  FASTACT_GLUS(FA_LIST_OP)
#undef FA_LIST_OP
  return ops;
}

// The CPU output cache (fastact/alloc.h): {cached bytes, live bytes, limit,
// bytes released by this call}; release=True frees every cached buffer first.
std::vector<int64_t> cpu_cache(bool release) {
  fastact::CpuOutputCache& cache = fastact::CpuOutputCache::get();
  const int64_t released = release ? cache.release() : 0;
  std::vector<int64_t> s = cache.stats();
  s.push_back(released);
  return s;
}

}  // namespace

TORCH_LIBRARY(fastact, m) {
#define FA_DEF_ACTIVATION(name, F, ARGS, SCHEMA)                                          \
  m.def((with_args(#name "(Tensor self", SCHEMA) + ") -> Tensor").c_str());               \
  m.def((with_args(#name "_(Tensor(a!) self", SCHEMA) + ") -> ()").c_str());              \
  m.def((with_args(#name "_backward(Tensor grad_output, Tensor self", SCHEMA) + ") -> Tensor") \
            .c_str());
  FASTACT_ACTIVATIONS(FA_DEF_ACTIVATION)
#undef FA_DEF_ACTIVATION

#define FA_DEF_GLU(name, F, ARGS, SCHEMA)                                                     \
  m.def((with_args(#name "(Tensor gate, Tensor up", SCHEMA) + ") -> Tensor").c_str());       \
  m.def((with_args(#name "_backward(Tensor grad_output, Tensor gate, Tensor up", SCHEMA) +   \
         ") -> (Tensor, Tensor)")                                                             \
            .c_str());                                                                        \
  m.def((with_args(#name "_packed(Tensor input, int dim=-1", SCHEMA) +                        \
         ", bool interleaved=False) -> Tensor")                                               \
            .c_str());                                                                        \
  m.def((with_args(#name "_packed_backward(Tensor grad_output, Tensor input, int dim=-1", SCHEMA) + \
         ", bool interleaved=False) -> Tensor")                                               \
            .c_str());
  FASTACT_GLUS(FA_DEF_GLU)
#undef FA_DEF_GLU
  m.def("glu(Tensor self, int dim=-1) -> Tensor");
  m.def("glu_backward(Tensor grad_output, Tensor self, int dim=-1) -> Tensor");

  // Activations whose parameter varies per element (indexed_ops.h).
  m.def("prelu(Tensor self, Tensor weight) -> Tensor");
  m.def("prelu_backward(Tensor grad_output, Tensor self, Tensor weight) -> (Tensor, Tensor)");
  m.def("swish_beta(Tensor self, Tensor beta) -> Tensor");
  m.def("swish_beta_backward(Tensor grad_output, Tensor self, Tensor beta) -> (Tensor, Tensor)");
  // seed: the [seed, offset] int64 tensor of the Philox stream that draws the
  // slopes, on the input's device (_philox_seed, as for dropout).
  m.def("rrelu_train(Tensor self, float lower, float upper, Tensor seed) -> Tensor");
  m.def("rrelu_train_backward(Tensor grad_output, Tensor self, float lower, float upper, "
        "Tensor seed) -> Tensor");

  // Fused dropout (dropout_ops.h). `seed` is the [seed, offset] int64 tensor
  // of the Philox stream, drawn by _philox_seed on the input's device.
  m.def("_philox_seed(Tensor like, Generator? generator=None) -> Tensor",
        {at::Tag::nondeterministic_seeded});
  m.def("dropout(Tensor input, float p, Tensor seed) -> Tensor");
  m.def("dropout_(Tensor(a!) self, float p, Tensor seed) -> ()");
  m.def("dropout_add(Tensor input, Tensor residual, float p, Tensor seed) -> Tensor");
  m.def("bias_dropout_add(Tensor input, Tensor? bias, Tensor residual, float p, Tensor seed) -> Tensor");
  m.def("bias_act_dropout(Tensor input, Tensor? bias, str activation, float p, Tensor seed) -> Tensor");
  m.def("bias_act_dropout_backward(Tensor grad_output, Tensor input, Tensor? bias, str activation, "
        "float p, Tensor seed) -> Tensor");

  // Cross-entropy over [rows, classes] logits (cross_entropy_ops.h): per-row
  // float32 losses and log-sum-exp; the reductions are torch ops in Python.
  m.def("cross_entropy_rows(Tensor logits, Tensor target, Tensor? weight, int ignore_index, "
        "float label_smoothing, float z_loss, float softcap) -> (Tensor, Tensor)");
  m.def("cross_entropy_rows_backward(Tensor grad, Tensor logits, Tensor target, Tensor? weight, "
        "Tensor lse, int ignore_index, float label_smoothing, float z_loss, float softcap) -> Tensor");
  // The same, overwriting the (contiguous) logits with their gradient: the
  // fused linear cross-entropy reuses its chunk buffer.
  m.def("cross_entropy_rows_backward_(Tensor grad, Tensor(a!) logits, Tensor target, Tensor? weight, "
        "Tensor lse, int ignore_index, float label_smoothing, float z_loss, float softcap) -> ()");

  // Log-probabilities of tempered [rows, classes] logits (logprob_ops.h), for
  // the post-training heads: per row the float64 lse of z / temperature, log
  // p(target) (0 where target == ignore_index) and, with entropy=True, the
  // entropy (else an empty tensor), in one pass over the row.
  m.def("logprob_rows(Tensor logits, Tensor target, float temperature, int ignore_index, bool entropy) "
        "-> (Tensor, Tensor, Tensor)");
  // The logits' gradient from the rows' gradients of (lse, log p, entropy)
  // (absent: 0); the in-place form overwrites the (contiguous) logits.
  m.def("logprob_rows_backward(Tensor logits, Tensor target, Tensor lse, Tensor? entropy, Tensor? grad_lse, "
        "Tensor? grad_logp, Tensor? grad_entropy, float temperature, int ignore_index) -> Tensor");
  m.def("logprob_rows_backward_(Tensor(a!) logits, Tensor target, Tensor lse, Tensor? entropy, Tensor? grad_lse, "
        "Tensor? grad_logp, Tensor? grad_entropy, float temperature, int ignore_index) -> ()");

  // softmax / log_softmax over the last dim of [rows, classes] (log = log_softmax).
  m.def("softmax_rows(Tensor input, bool log) -> Tensor");
  m.def("softmax_rows_backward(Tensor grad_output, Tensor output, bool log) -> Tensor");

  // mse_loss (mse_ops.h): reduction='none' elementwise, forward and backward.
  m.def("squared_difference(Tensor input, Tensor target) -> Tensor");
  m.def("squared_difference_backward(Tensor grad_output, Tensor input, Tensor target) -> (Tensor, Tensor)");
  // mean/sum: sum((x - t)^2) fused (a 0-dim float32/64), and its input gradient.
  m.def("squared_difference_sum(Tensor input, Tensor target) -> Tensor");
  m.def("squared_difference_sum_backward(Tensor grad, Tensor input, Tensor target) -> Tensor");

  // Introspection for the Python layer, the tests and the benchmarks.
  m.def("_activation_ops() -> str[]", &activation_ops);
  m.def("_glu_ops() -> str[]", &glu_ops);
  m.def("_build_info() -> str", &fastact::build_info_string);
  m.def("_cpu_cache(bool release=False) -> int[]", &cpu_cache);
}

#ifdef FASTACT_PYTHON_MODULE
// `import fastact._C` (or fastact._C_emu, the emulation build) loads this
// library, whose static initializers register the ops; the module itself is
// empty.
#include <Python.h>
#define FA_CONCAT_(a, b) a##b
#define FA_CONCAT(a, b) FA_CONCAT_(a, b)
#define FA_STRING_(a) #a
#define FA_STRING(a) FA_STRING_(a)
extern "C" PyMODINIT_FUNC FA_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, FA_STRING(TORCH_EXTENSION_NAME), nullptr, -1,
                                          nullptr};
  return PyModule_Create(&module_def);
}
#endif
