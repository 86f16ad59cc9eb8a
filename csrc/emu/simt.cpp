// The SIMT emulator's runtime (see simt.h): launches, the fiber scheduler of
// a block, barriers, warp shuffles, shared memory, device traps, and the
// traffic and coalescing counters of the traces.
#include "emu/simt.h"

#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <sstream>
#include <unordered_map>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define FA_EMU_ASAN 1
#else
#define FA_EMU_ASAN 0
#endif

thread_local fastact_emu_uint3 threadIdx, blockIdx, blockDim, gridDim;

namespace fastact::emu {

bool g_trace = false;

namespace {

constexpr int kMaxThreads = 1024;
constexpr size_t kStackBytes = size_t{256} << 10;
// the lowest page of each fiber stack is a guard (PROT_NONE): an overflow faults
constexpr size_t kGuardBytes = 4096;
constexpr size_t kSharedLimit = size_t{48} << 10;  // without an opt-in attribute

enum class State : uint8_t { Ready, BlockBarrier, WarpBarrier, Done };

// A fiber's saved context. On x86-64 a switch saves the callee-saved
// registers and the FP control words on the stack and swaps stack pointers
// (a few nanoseconds; a CUDA thread switches at least twice); elsewhere
// ucontext (two signal-mask system calls per switch).
#if defined(__x86_64__)
struct Context {
  void* sp = nullptr;
};
extern "C" void fastact_emu_switch(void** save_sp, void* next_sp);
asm(R"(
  .text
  .globl fastact_emu_switch
  .hidden fastact_emu_switch
  .type fastact_emu_switch, @function
fastact_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fastact_emu_switch, .-fastact_emu_switch
)");

// A fresh context that enters entry() on the stack [lo, lo + size).
void make_context(Context& c, char* lo, size_t size, void (*entry)()) {
  auto* top = reinterpret_cast<uint64_t*>(reinterpret_cast<uintptr_t>(lo + size) & ~uintptr_t{15});
  top[-1] = 0;                                      // entry's return address slot (it never returns)
  top[-2] = reinterpret_cast<uint64_t>(entry);      // popped by ret
  for (int i = 3; i <= 8; ++i) top[-i] = 0;         // rbp, rbx, r12-r15
  top[-9] = 0x1F80u | (uint64_t{0x037F} << 32);     // MXCSR and x87 control word defaults
  c.sp = top - 9;
}
inline void switch_context(Context& from, Context& to) { fastact_emu_switch(&from.sp, to.sp); }
#else
struct Context {
  ucontext_t uc;
};
void make_context(Context& c, char* lo, size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = lo;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
inline void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

struct Settings {
  int multiprocessors = 8;
  int order = 0;  // 0 mixed, 1 forward, 2 reverse, 3 shuffled
  uint64_t seed = 0x5eedULL;
};
Settings g_settings;
std::mutex g_mutex;  // the launch log, the traces and the bounds table

std::map<std::string, int>& bounds_table() {
  static std::map<std::string, int> table;
  return table;
}

std::string base_name(const char* kernel) {
  std::string s(kernel);
  s = s.substr(0, s.find('<'));
  s.erase(std::remove_if(s.begin(), s.end(), [](char c) { return c == ' ' || c == '&' || c == '('; }),
          s.end());
  const size_t colon = s.rfind("::");
  return colon == std::string::npos ? s : s.substr(colon + 2);
}

uint64_t splitmix(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// ---- traces -------------------------------------------------------------------

struct SiteStats {
  std::string where;  // file:line:column
  bool store = false;
  size_t width = 0;  // bytes per access
  uint64_t accesses = 0, bytes = 0, warp_accesses = 0, sectors = 0, min_sectors = 0, max_excess = 0;
  uint64_t max_runs = 0;  // most separate address runs in one warp access (1: lanes contiguous)
  // warp accesses touching more sectors than their runs need: a run of n
  // bytes touches at most ceil(n / 32) + 1 sectors, so r runs at most
  // ceil(bytes / 32) + 2r - 1; more means lanes scattered within a run
  uint64_t uncoalesced = 0;
};

struct Region {
  std::string name;
  uintptr_t begin, end;
  std::vector<uint16_t> reads, writes;  // per byte
  uint64_t read_bytes = 0, write_bytes = 0;
};

struct LaunchRecord {
  std::string kernel;
  int64_t grid[3], block[3];
  size_t shared_bytes = 0;
  std::vector<SiteStats> sites;
  std::vector<std::pair<uint64_t, uint64_t>> region_bytes;  // per region: read, written
};

struct Trace {
  std::vector<Region> regions;
  std::vector<LaunchRecord> launches;
  int64_t launch_count = 0;
  // the launch being traced
  std::map<std::tuple<const char*, unsigned, unsigned, bool, size_t>, int> site_ids;
  std::vector<SiteStats> sites;
  // (site, block, warp, occurrence) -> the lanes' (address, bytes)
  std::map<std::tuple<int, int64_t, int, uint32_t>, std::vector<std::pair<uintptr_t, size_t>>> warp_accesses;
  std::unordered_map<uint64_t, uint32_t> occurrence;  // (thread, site) -> count, per block
  std::vector<std::pair<uint64_t, uint64_t>> region_bytes;
};
Trace g_trace_data;
std::string g_report;
std::map<std::pair<std::string, std::string>, int64_t> g_coverage;  // (kernel, parameter types) -> launches

// "void fastact::emu::launch(...) [with P = {a, b}; A = {...}]" -> "a, b"
std::string parameter_types(const char* signature) {
  std::string s(signature);
  const size_t at = s.find("P = {");
  if (at == std::string::npos) return s;
  size_t depth = 0, end = at + 5;
  for (; end < s.size(); ++end) {
    if (s[end] == '{') ++depth;
    if (s[end] == '}' && depth-- == 0) break;
  }
  return s.substr(at + 5, end - at - 5);
}

// ---- the block runner ---------------------------------------------------------

struct Fiber {
  Context ctx;
  State state = State::Ready;
  unsigned mask = 0;
  char* stack = nullptr;
};

struct SharedSlot {
  uint64_t generation = 0;
  size_t offset = 0;
};

struct Runner {
  Fiber fibers[kMaxThreads];
  Context sched;
  int current = -1;
  int nthreads = 0;
  unsigned bx = 1, by = 1;
  int64_t block_linear = 0;
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
  alignas(64) unsigned char arena[kSharedLimit];
  size_t arena_used = 0, shared_peak = 0, shared_limit = kSharedLimit;
  uint64_t generation = 0;
  uint64_t exchange[kMaxThreads / 32][32];
  bool trapped = false;
  std::string error;
#if FA_EMU_ASAN
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
  // A block left unfinished (a trap, a deadlock, an error thrown by the
  // scheduler) abandons its fibers inside their frames: AddressSanitizer's
  // shadow of those frames (redzones, out-of-scope marks) stays poisoned and
  // would flag the next block that runs on the same stacks.
  bool stacks_dirty = false;
  void unpoison_stacks() {
    for (Fiber& f : fibers)
      if (f.stack) ASAN_UNPOISON_MEMORY_REGION(f.stack + kGuardBytes, kStackBytes - kGuardBytes);
    stacks_dirty = false;
  }
#endif

  ~Runner() {
    for (Fiber& f : fibers)
      if (f.stack) munmap(f.stack, kStackBytes);
  }

  char* stack_of(int t) {
    Fiber& f = fibers[t];
    if (!f.stack) {
      void* p = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
      if (p == MAP_FAILED) throw Error("fastact emulator: cannot map a fiber stack");
      mprotect(p, kGuardBytes, PROT_NONE);  // a guard page below the stack
      f.stack = static_cast<char*>(p);
    }
    return f.stack;
  }
};

thread_local Runner* t_runner = nullptr;

Runner& runner() {
  thread_local std::unique_ptr<Runner> r;
  if (!r) {
    r = std::make_unique<Runner>();
    t_runner = r.get();
  }
  return *r;
}

void fiber_entry();

// Scheduler -> fiber t.
void resume(Runner& r, int t) {
  r.current = t;
  threadIdx.x = static_cast<unsigned>(t) % r.bx;
  threadIdx.y = static_cast<unsigned>(t) / r.bx % r.by;
  threadIdx.z = static_cast<unsigned>(t) / (r.bx * r.by);
#if FA_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, r.fibers[t].stack + kGuardBytes, kStackBytes - kGuardBytes);
  switch_context(r.sched, r.fibers[t].ctx);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  switch_context(r.sched, r.fibers[t].ctx);
#endif
  r.current = -1;
}

// Fiber -> scheduler. A finished (or trapped) fiber never comes back.
void yield(Runner& r, bool finished) {
  Fiber& f = r.fibers[r.current];
#if FA_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(finished ? nullptr : &fake, r.sched_bottom, r.sched_size);
  switch_context(f.ctx, r.sched);
  __sanitizer_finish_switch_fiber(fake, &r.sched_bottom, &r.sched_size);
#else
  (void)finished;
  switch_context(f.ctx, r.sched);
#endif
}

void fiber_entry() {
  Runner& r = *t_runner;
#if FA_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &r.sched_bottom, &r.sched_size);
#endif
  r.body(r.ctx);
  r.fibers[r.current].state = State::Done;
  yield(r, true);
  __builtin_unreachable();
}

std::string describe(const LaunchConfig& cfg) {
  std::ostringstream s;
  s << cfg.kernel << " <<<(" << cfg.grid.x << "," << cfg.grid.y << "," << cfg.grid.z << "), ("
    << cfg.block.x << "," << cfg.block.y << "," << cfg.block.z << "), " << cfg.dynamic_smem << ">>>";
  return s.str();
}

[[noreturn]] void fail(const LaunchConfig& cfg, const std::string& what) {
  throw Error("fastact CUDA emulation: " + what + " in " + describe(cfg));
}

void check_config(const LaunchConfig& cfg) {
  const dim3 g = cfg.grid, b = cfg.block;
  if (g.x == 0 || g.y == 0 || g.z == 0 || b.x == 0 || b.y == 0 || b.z == 0)
    fail(cfg, "invalid configuration argument (an empty grid or block)");
  if (g.x > 2147483647u || g.y > 65535 || g.z > 65535)
    fail(cfg, "grid too large (grid.x <= 2^31-1, grid.y and grid.z <= 65535)");
  const uint64_t threads = uint64_t{b.x} * b.y * b.z;
  if (b.x > 1024 || b.y > 1024 || b.z > 64 || threads > 1024)
    fail(cfg, "too many threads per block (at most 1024; x, y <= 1024, z <= 64)");
  int bound = 1024;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = bounds_table().find(base_name(cfg.kernel));
    if (it != bounds_table().end()) bound = it->second;
  }
  if (threads > static_cast<uint64_t>(bound))
    fail(cfg, "block of " + std::to_string(threads) + " threads exceeds the kernel's __launch_bounds__(" +
                  std::to_string(bound) + ")");
  if (cfg.dynamic_smem > kSharedLimit) fail(cfg, "dynamic shared memory over 48 KB");
}

std::vector<int> thread_order(int n, int mode, uint64_t seed) {
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  if (mode == 2) {
    std::reverse(order.begin(), order.end());
  } else if (mode == 3) {
    for (int i = n - 1; i > 0; --i) std::swap(order[i], order[splitmix(seed) % (i + 1)]);
  }
  return order;
}

std::string lane_states(const Runner& r, int warp) {
  std::ostringstream s;
  for (int l = 0; l < 32 && warp * 32 + l < r.nthreads; ++l) {
    const State st = r.fibers[warp * 32 + l].state;
    s << (st == State::Done ? 'x' : st == State::BlockBarrier ? 'B' : st == State::WarpBarrier ? 'w' : 'r');
  }
  return s.str();
}

// After a pass every live thread waits at a barrier: release what can go on.
// Returns false when every thread has finished.
bool release(Runner& r, const LaunchConfig& cfg) {
  int alive = 0, at_block = 0;
  for (int t = 0; t < r.nthreads; ++t) {
    alive += r.fibers[t].state != State::Done;
    at_block += r.fibers[t].state == State::BlockBarrier;
  }
  if (alive == 0) return false;
  bool released = false;
  const int warps = (r.nthreads + 31) / 32;
  for (int w = 0; w < warps; ++w) {
    unsigned waiting = 0, mask = 0;
    bool mixed = false;
    for (int l = 0; l < 32 && w * 32 + l < r.nthreads; ++l) {
      const Fiber& f = r.fibers[w * 32 + l];
      if (f.state != State::WarpBarrier) continue;
      if (waiting && f.mask != mask) mixed = true;
      waiting |= 1u << l;
      mask = f.mask;
    }
    if (!waiting) continue;
    if (mixed) fail(cfg, "lanes of warp " + std::to_string(w) + " of block " + std::to_string(r.block_linear) +
                             " wait in warp operations with different masks");
    if ((waiting & mask) == mask) {
      for (int l = 0; l < 32; ++l)
        if (waiting >> l & 1) r.fibers[w * 32 + l].state = State::Ready;
      released = true;
      continue;
    }
    for (int l = 0; l < 32; ++l) {
      if (!(mask >> l & 1) || (waiting >> l & 1)) continue;
      if (r.fibers[w * 32 + l].state == State::Done) {
        char m[16];
        std::snprintf(m, sizeof m, "0x%08x", mask);
        fail(cfg, std::string("a warp operation with mask ") + m + " waits for lane " + std::to_string(l) +
                      " of warp " + std::to_string(w) + ", which has exited (lanes " + lane_states(r, w) + ")");
      }
    }
  }
  if (released) return true;
  if (at_block == alive) {
    if (alive != r.nthreads)
      fail(cfg, "__syncthreads() reached by " + std::to_string(alive) + " threads while " +
                    std::to_string(r.nthreads - alive) + " threads of block " + std::to_string(r.block_linear) +
                    " have exited (a barrier in divergent code)");
    for (int t = 0; t < r.nthreads; ++t) r.fibers[t].state = State::Ready;
    return true;
  }
  std::string states;
  for (int w = 0; w < warps; ++w) states += " " + lane_states(r, w);
  fail(cfg, "deadlock in block " + std::to_string(r.block_linear) +
                ": threads wait at __syncthreads() (B) and in warp operations (w) that cannot complete; lanes:" +
                states);
}

void run_block(Runner& r, const LaunchConfig& cfg, int64_t launch_id) {
  r.nthreads = static_cast<int>(cfg.block.x * cfg.block.y * cfg.block.z);
  r.bx = cfg.block.x;
  r.by = cfg.block.y;
  ++r.generation;
  r.arena_used = 0;
  r.trapped = false;
#if FA_EMU_ASAN
  if (r.stacks_dirty) r.unpoison_stacks();
  r.stacks_dirty = true;  // until the block completes
#endif
  for (int t = 0; t < r.nthreads; ++t) {
    Fiber& f = r.fibers[t];
    char* stack = r.stack_of(t);
    make_context(f.ctx, stack + kGuardBytes, kStackBytes - kGuardBytes, fiber_entry);
    f.state = State::Ready;
  }
  if (g_trace) g_trace_data.occurrence.clear();
  for (uint64_t round = 0;; ++round) {
    int mode = g_settings.order;
    if (mode == 0) mode = 1 + static_cast<int>((round + static_cast<uint64_t>(r.block_linear) + launch_id) % 3);
    uint64_t seed = g_settings.seed ^ (launch_id * 0x100000001B3ULL) ^ (r.block_linear << 20) ^ round;
    for (int t : thread_order(r.nthreads, mode, seed)) {
      if (r.fibers[t].state != State::Ready) continue;
      resume(r, t);
      if (r.trapped) return;
    }
    if (!release(r, cfg)) break;
  }
#if FA_EMU_ASAN
  r.stacks_dirty = false;
#endif
  r.shared_peak = std::max(r.shared_peak, r.arena_used);
}

void finish_trace(LaunchRecord& rec) {
  Trace& tr = g_trace_data;
  for (auto& [key, lanes] : tr.warp_accesses) {
    SiteStats& s = tr.sites[std::get<0>(key)];
    std::vector<uint64_t> sectors;
    std::vector<std::pair<uintptr_t, uintptr_t>> spans;
    for (auto [addr, bytes] : lanes) {
      for (uintptr_t sec = addr >> 5; sec <= (addr + bytes - 1) >> 5; ++sec) sectors.push_back(sec);
      spans.emplace_back(addr, addr + bytes);
    }
    std::sort(sectors.begin(), sectors.end());
    const uint64_t touched = std::unique(sectors.begin(), sectors.end()) - sectors.begin();
    std::sort(spans.begin(), spans.end());
    uint64_t distinct = 0, runs = 1;
    uintptr_t lo = spans[0].first, hi = spans[0].second;
    for (auto [a, b] : spans) {
      if (a > hi) {
        ++runs;
        distinct += hi - lo;
        lo = a;
        hi = b;
      } else {
        hi = std::max(hi, b);
      }
    }
    distinct += hi - lo;
    const uint64_t minimum = (distinct + 31) / 32;
    s.warp_accesses += 1;
    s.sectors += touched;
    s.min_sectors += minimum;
    s.max_excess = std::max<uint64_t>(s.max_excess, touched - minimum);
    s.max_runs = std::max<uint64_t>(s.max_runs, runs);
    s.uncoalesced += touched > minimum + 2 * runs - 1;
  }
  rec.sites = tr.sites;
  rec.region_bytes = tr.region_bytes;
  tr.sites.clear();
  tr.site_ids.clear();
  tr.warp_accesses.clear();
  tr.occurrence.clear();
  std::fill(tr.region_bytes.begin(), tr.region_bytes.end(), std::pair<uint64_t, uint64_t>{0, 0});
}

}  // namespace

LaunchBounds::LaunchBounds(const char* kernel, int max_threads) {
  std::lock_guard<std::mutex> lock(g_mutex);
  auto [it, inserted] = bounds_table().emplace(base_name(kernel), max_threads);
  if (!inserted) it->second = std::min(it->second, max_threads);
}

void run_kernel(const LaunchConfig& cfg, void (*body)(void*), void* ctx) {
  check_config(cfg);
  Runner& r = runner();
  if (r.current >= 0) fail(cfg, "a kernel launch from device code");
  int64_t launch_id;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    launch_id = ++g_trace_data.launch_count;
    ++g_coverage[{cfg.kernel, parameter_types(cfg.signature)}];
  }
  r.body = body;
  r.ctx = ctx;
  r.shared_peak = 0;
  r.shared_limit = kSharedLimit - cfg.dynamic_smem;
  r.error.clear();
  r.trapped = false;
  gridDim = {cfg.grid.x, cfg.grid.y, cfg.grid.z};
  blockDim = {cfg.block.x, cfg.block.y, cfg.block.z};
  const bool tracing = g_trace;
  LaunchRecord rec;
  rec.kernel = cfg.kernel;
  rec.grid[0] = cfg.grid.x, rec.grid[1] = cfg.grid.y, rec.grid[2] = cfg.grid.z;
  rec.block[0] = cfg.block.x, rec.block[1] = cfg.block.y, rec.block[2] = cfg.block.z;
  try {
    for (unsigned z = 0; z < cfg.grid.z && !r.trapped; ++z)
      for (unsigned y = 0; y < cfg.grid.y && !r.trapped; ++y)
        for (unsigned x = 0; x < cfg.grid.x && !r.trapped; ++x) {
          blockIdx = {x, y, z};
          r.block_linear = (int64_t{z} * cfg.grid.y + y) * cfg.grid.x + x;
          run_block(r, cfg, launch_id);
        }
  } catch (...) {
    r.current = -1;
    if (tracing) finish_trace(rec);
    throw;
  }
  rec.shared_bytes = r.shared_peak;
  if (tracing) {
    std::lock_guard<std::mutex> lock(g_mutex);
    finish_trace(rec);
    g_trace_data.launches.push_back(std::move(rec));
  } else {
    std::lock_guard<std::mutex> lock(g_mutex);
    LaunchRecord brief;
    brief.kernel = cfg.kernel;
    std::copy(rec.grid, rec.grid + 3, brief.grid);
    std::copy(rec.block, rec.block + 3, brief.block);
    brief.shared_bytes = r.shared_peak;
    if (g_trace_data.launches.size() < 100000) g_trace_data.launches.push_back(std::move(brief));
  }
  if (r.trapped) fail(cfg, r.error);
}

// ---- device side ----------------------------------------------------------------

void syncthreads() {
  Runner& r = *t_runner;
  r.fibers[r.current].state = State::BlockBarrier;
  yield(r, false);
}

namespace {
void warp_wait(Runner& r, unsigned mask) {
  Fiber& f = r.fibers[r.current];
  f.state = State::WarpBarrier;
  f.mask = mask;
  yield(r, false);
}

void check_mask(Runner& r, unsigned mask, const char* op) {
  const int t = r.current, lane = t & 31, warp = t >> 5;
  const int lanes = std::min(32, r.nthreads - warp * 32);
  if (!(mask >> lane & 1))
    device_trap((std::string(op) + " called by lane " + std::to_string(lane) + ", which is not in its mask").c_str(),
                __FILE__, __LINE__);
  if (lanes < 32 && (mask >> lanes) != 0)
    device_trap((std::string(op) + " mask names lanes past the block's " + std::to_string(r.nthreads) +
                 " threads (a block size that is not a multiple of 32)")
                    .c_str(),
                __FILE__, __LINE__);
}
}  // namespace

void syncwarp(unsigned mask) {
  Runner& r = *t_runner;
  check_mask(r, mask, "__syncwarp");
  warp_wait(r, mask);
}

uint64_t shuffle(unsigned mask, uint64_t bits, int arg, int width, int mode) {
  Runner& r = *t_runner;
  check_mask(r, mask, "__shfl_*_sync");
  if (width < 1 || width > 32 || (width & (width - 1)))
    device_trap("__shfl_*_sync width must be a power of 2 up to 32", __FILE__, __LINE__);
  const int t = r.current, lane = t & 31, warp = t >> 5;
  r.exchange[warp][lane] = bits;
  warp_wait(r, mask);
  const int seg = lane & ~(width - 1);
  int src = lane;
  switch (mode) {
    case 0: src = lane ^ arg; break;
    case 1: src = lane + arg; break;
    case 2: src = lane - arg; break;
    default: src = seg + (arg & (width - 1)); break;
  }
  // as the hardware: a lane past its own width-segment gives the caller's own
  // value, but xor may read an earlier segment (CUDA programming guide,
  // __shfl_xor_sync: "able to access elements from earlier groups")
  if (src >= seg + width || (mode != 0 && src < seg) || src < 0) src = lane;
  if (!(mask >> src & 1))
    device_trap(("__shfl_*_sync reads lane " + std::to_string(src) + ", which is not in its mask").c_str(),
                __FILE__, __LINE__);
  const uint64_t out = r.exchange[warp][src];
  warp_wait(r, mask);  // nobody overwrites the slots before every lane has read
  return out;
}

void* shared_array(void** slot, size_t bytes, size_t align) {
  Runner& r = *t_runner;
  auto*& s = reinterpret_cast<SharedSlot*&>(*slot);
  if (!s) s = new SharedSlot();  // one per declaration and OS thread, for the process's life
  if (s->generation != r.generation) {
    const size_t offset = (r.arena_used + align - 1) / align * align;
    if (offset + bytes > r.shared_limit)
      device_trap(("shared memory of the block exceeds " + std::to_string(r.shared_limit) + " bytes").c_str(),
                  __FILE__, __LINE__);
    std::memset(r.arena + offset, 0xFF, bytes);  // NaN for floats: a read before any write shows
    s->offset = offset;
    s->generation = r.generation;
    r.arena_used = offset + bytes;
  }
  return r.arena + s->offset;
}

void device_trap(const char* what, const char* file, int line) {
  Runner& r = *t_runner;
  if (r.current < 0) throw Error(std::string("fastact CUDA emulation: ") + what);
  if (!r.trapped) {
    std::ostringstream s;
    s << "device-side assert triggered: " << what << " at " << file << ":" << line << " (block "
      << r.block_linear << ", thread " << r.current << ")";
    r.error = s.str();
    r.trapped = true;
  }
  r.fibers[r.current].state = State::Done;
  yield(r, true);
  __builtin_unreachable();
}

void check_alignment(const void* p, size_t align, const std::source_location& site) {
  if (reinterpret_cast<uintptr_t>(p) % align == 0) return;
  std::ostringstream s;
  s << "misaligned address " << p << " for a " << align << "-byte access";
  device_trap(s.str().c_str(), site.file_name(), static_cast<int>(site.line()));
}

namespace {
// The trace's id of a load or store site (registered at its first use).
int site_id(Trace& tr, size_t bytes, bool store, const std::source_location& site) {
  const auto key = std::make_tuple(site.file_name(), site.line(), site.column(), store, bytes);
  auto it = tr.site_ids.find(key);
  if (it == tr.site_ids.end()) {
    it = tr.site_ids.emplace(key, static_cast<int>(tr.sites.size())).first;
    SiteStats s;
    std::string file = site.file_name();
    const size_t cut = file.find("csrc/");
    s.where = (cut == std::string::npos ? file : file.substr(cut)) + ":" + std::to_string(site.line());
    s.store = store;
    s.width = bytes;
    tr.sites.push_back(s);
  }
  return it->second;
}
}  // namespace

void record_access(const void* p, size_t bytes, bool store, const std::source_location& site) {
  Runner& r = *t_runner;
  std::lock_guard<std::mutex> lock(g_mutex);
  Trace& tr = g_trace_data;
  const int id = site_id(tr, bytes, store, site);
  SiteStats& s = tr.sites[id];
  s.accesses += 1;
  s.bytes += bytes;
  const uint32_t k = tr.occurrence[(static_cast<uint64_t>(r.current) << 32) | static_cast<uint32_t>(id)]++;
  tr.warp_accesses[std::make_tuple(id, r.block_linear, r.current >> 5, k)].emplace_back(
      reinterpret_cast<uintptr_t>(p), bytes);
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  for (size_t i = 0; i < tr.regions.size(); ++i) {
    Region& g = tr.regions[i];
    const uintptr_t lo = std::max(a, g.begin), hi = std::min(a + bytes, g.end);
    if (lo >= hi) continue;
    auto& counts = store ? g.writes : g.reads;
    for (uintptr_t b = lo; b < hi; ++b) counts[b - g.begin] += counts[b - g.begin] < 65535;
    (store ? g.write_bytes : g.read_bytes) += hi - lo;
    (store ? tr.region_bytes[i].second : tr.region_bytes[i].first) += hi - lo;
  }
}

void skip_access(size_t bytes, bool store, const std::source_location& site) {
  Runner& r = *t_runner;
  std::lock_guard<std::mutex> lock(g_mutex);
  Trace& tr = g_trace_data;
  const int id = site_id(tr, bytes, store, site);
  ++tr.occurrence[(static_cast<uint64_t>(r.current) << 32) | static_cast<uint32_t>(id)];
}

}  // namespace fastact::emu

// ---- C ABI --------------------------------------------------------------------

using namespace fastact::emu;

namespace {
std::string quoted(const std::string& v) {
  std::string o = "\"";
  for (char c : v) o += (c == '"' || c == '\\') ? std::string("\\") + c : std::string(1, c);
  return o + "\"";
}
}  // namespace

extern "C" {

void fastact_emu_reset() {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_trace_data.launches.clear();
  g_trace_data.launch_count = 0;
  g_trace_data.regions.clear();
  g_trace_data.region_bytes.clear();
}

void fastact_emu_trace_begin() {
  fastact_emu_reset();
  g_trace = true;
}

void fastact_emu_trace_end() { g_trace = false; }

void fastact_emu_add_region(const char* name, uint64_t ptr, uint64_t bytes) {
  std::lock_guard<std::mutex> lock(g_mutex);
  Region g;
  g.name = name;
  g.begin = ptr;
  g.end = ptr + bytes;
  g.reads.assign(bytes, 0);
  g.writes.assign(bytes, 0);
  g_trace_data.regions.push_back(std::move(g));
  g_trace_data.region_bytes.emplace_back(0, 0);
}

const char* fastact_emu_coverage() {
  std::lock_guard<std::mutex> lock(g_mutex);
  std::ostringstream s;
  s << "[";
  bool first = true;
  for (const auto& [key, count] : g_coverage) {
    s << (first ? "" : ", ") << "[" << quoted(key.first) << ", " << quoted(key.second) << ", " << count << "]";
    first = false;
  }
  s << "]";
  g_report = s.str();
  return g_report.c_str();
}

int64_t fastact_emu_launch_count() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_trace_data.launch_count;
}

void fastact_emu_configure(int multiprocessors, int order, uint64_t seed) {
  if (multiprocessors > 0) g_settings.multiprocessors = multiprocessors;
  if (order >= 0 && order <= 3) g_settings.order = order;
  g_settings.seed = seed;
}

int fastact_emu_multiprocessors() { return g_settings.multiprocessors; }

int fastact_emu_blocks_per_multiprocessor(int threads, uint64_t dynamic_smem) {
  // an sm_90 multiprocessor: 2048 threads, 32 blocks, 227 KB of shared
  // memory (registers and static shared arrays are not modelled)
  constexpr int kThreads = 2048, kBlocks = 32;
  constexpr uint64_t kShared = 227u << 10;
  int blocks = std::min(kBlocks, kThreads / std::max(threads, 1));
  if (dynamic_smem > 0) blocks = std::min<int>(blocks, static_cast<int>(kShared / dynamic_smem));
  return std::max(blocks, 1);
}

const char* fastact_emu_report() {
  std::lock_guard<std::mutex> lock(g_mutex);
  std::ostringstream s;
  s << "{\"launch_count\": " << g_trace_data.launch_count << ", \"launches\": [";
  for (size_t i = 0; i < g_trace_data.launches.size(); ++i) {
    const LaunchRecord& l = g_trace_data.launches[i];
    s << (i ? ", " : "") << "{\"kernel\": " << quoted(l.kernel) << ", \"grid\": [" << l.grid[0] << ", "
      << l.grid[1] << ", " << l.grid[2] << "], \"block\": [" << l.block[0] << ", " << l.block[1] << ", "
      << l.block[2] << "], \"shared_bytes\": " << l.shared_bytes << ", \"sites\": [";
    for (size_t j = 0; j < l.sites.size(); ++j) {
      const SiteStats& t = l.sites[j];
      s << (j ? ", " : "") << "{\"where\": " << quoted(t.where) << ", \"store\": " << (t.store ? "true" : "false")
        << ", \"width\": " << t.width << ", \"accesses\": " << t.accesses << ", \"bytes\": " << t.bytes
        << ", \"warp_accesses\": " << t.warp_accesses << ", \"sectors\": " << t.sectors
        << ", \"min_sectors\": " << t.min_sectors << ", \"max_excess\": " << t.max_excess
        << ", \"max_runs\": " << t.max_runs << ", \"uncoalesced\": " << t.uncoalesced << "}";
    }
    s << "], \"regions\": {";
    for (size_t j = 0; j < l.region_bytes.size() && j < g_trace_data.regions.size(); ++j)
      s << (j ? ", " : "") << quoted(g_trace_data.regions[j].name) << ": [" << l.region_bytes[j].first << ", "
        << l.region_bytes[j].second << "]";
    s << "}}";
  }
  s << "], \"regions\": {";
  for (size_t j = 0; j < g_trace_data.regions.size(); ++j) {
    const Region& g = g_trace_data.regions[j];
    auto [rmin, rmax] = std::minmax_element(g.reads.begin(), g.reads.end());
    auto [wmin, wmax] = std::minmax_element(g.writes.begin(), g.writes.end());
    const bool empty = g.reads.empty();
    s << (j ? ", " : "") << quoted(g.name) << ": {\"bytes\": " << (g.end - g.begin)
      << ", \"read_bytes\": " << g.read_bytes << ", \"write_bytes\": " << g.write_bytes
      << ", \"min_reads\": " << (empty ? 0 : *rmin) << ", \"max_reads\": " << (empty ? 0 : *rmax)
      << ", \"min_writes\": " << (empty ? 0 : *wmin) << ", \"max_writes\": " << (empty ? 0 : *wmax) << "}";
  }
  s << "}}";
  g_report = s.str();
  return g_report.c_str();
}

}  // extern "C"
