// The fiber scheduler behind emu_core.h: one thread block at a time, its threads as ucontext
// fibers switched at barriers.
#include "emu_core.h"

#include <ucontext.h>

#include <cstdio>
#include <cstdlib>

#include "include/cuda_bf16.h"
#include "include/cuda_fp16.h"
#include <map>
#include <memory>
#include <vector>

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

namespace lsdm_emu {
namespace {

constexpr size_t kStack = 512 * 1024;
constexpr size_t kGuard = 64;  // canary bytes after the dynamic shared memory

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  unsigned tid = 0;
  bool done = false;
  int wait = 0;  // 0 runnable, 1 block barrier, 2 warp barrier
  uint64_t gen = 0;
};

struct Barrier {
  uint64_t gen = 0;
  int arrived = 0;
  int live = 0;
};

std::vector<Fiber> fibers;
std::vector<Barrier> warp_bar;
std::vector<std::vector<unsigned char>> warp_slots;  // exchange buffers, 32 x 8 bytes per warp
Barrier block_bar;
Fiber* current = nullptr;
ucontext_t sched_ctx;
const std::function<void()>* body = nullptr;
std::vector<unsigned char> smem_buf;
size_t smem_size = 0;
cudaError_t last_error = cudaSuccess;
std::map<const void*, int> func_smem;
bool reverse_order = false;

void fiber_main() {
  (*body)();
  Fiber& f = *current;
  f.done = true;
  const int w = static_cast<int>(f.tid / 32);
  for (Barrier* b : {&block_bar, &warp_bar[w]}) {  // an exited thread no longer holds a barrier back
    --b->live;
    if (b->arrived > 0 && b->arrived >= b->live) {
      ++b->gen;
      b->arrived = 0;
    }
  }
}

void arrive(Barrier& b, int kind) {
  Fiber& f = *current;
  f.wait = kind;
  f.gen = b.gen;
  if (++b.arrived >= b.live) {
    ++b.gen;
    b.arrived = 0;
  }
  swapcontext(&f.ctx, &sched_ctx);
}

void set_thread(unsigned tid) {
  threadIdx.x = tid % blockDim.x;
  threadIdx.y = tid / blockDim.x % blockDim.y;
  threadIdx.z = tid / (blockDim.x * blockDim.y);
}

void run_block(int n_threads) {
  if (static_cast<int>(fibers.size()) < n_threads) fibers.resize(n_threads);
  const int n_warps = (n_threads + 31) / 32;
  warp_bar.assign(n_warps, Barrier{});
  warp_slots.assign(n_warps, std::vector<unsigned char>(32 * 8));
  block_bar = Barrier{0, 0, n_threads};
  for (int w = 0; w < n_warps; ++w) warp_bar[w].live = std::min(32, n_threads - 32 * w);
  for (int t = 0; t < n_threads; ++t) {
    Fiber& f = fibers[t];
    if (!f.stack) f.stack.reset(new char[kStack]);
    f.tid = t;
    f.done = false;
    f.wait = 0;
    f.gen = 0;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.get();
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = &sched_ctx;
    makecontext(&f.ctx, fiber_main, 0);
  }
  int remaining = n_threads;
  while (remaining > 0) {
    bool progress = false;
    for (int i = 0; i < n_threads; ++i) {
      Fiber& f = fibers[reverse_order ? n_threads - 1 - i : i];
      if (f.done) continue;
      if (f.wait == 1 && block_bar.gen <= f.gen) continue;
      if (f.wait == 2 && warp_bar[f.tid / 32].gen <= f.gen) continue;
      f.wait = 0;
      current = &f;
      set_thread(f.tid);
      swapcontext(&sched_ctx, &f.ctx);
      progress = true;
      if (f.done) --remaining;
    }
    if (!progress) {
      std::fprintf(stderr, "emulated block (%u, %u, %u): barrier deadlock\n", blockIdx.x, blockIdx.y, blockIdx.z);
      std::abort();
    }
  }
}

}  // namespace

void launch(const void* kernel, dim3 grid, dim3 block, size_t smem, const std::function<void()>& fn) {
  const auto it = func_smem.find(kernel);
  const size_t allowed = it == func_smem.end() ? 48 * 1024 : static_cast<size_t>(it->second);
  const size_t threads = static_cast<size_t>(block.x) * block.y * block.z;
  if (smem > allowed || threads == 0 || threads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.y > 65535 || grid.z > 65535) {
    last_error = smem > allowed ? cudaErrorInvalidValue : cudaErrorInvalidConfiguration;
    return;
  }
  body = &fn;
  gridDim = grid;
  blockDim = block;
  smem_size = smem;
  smem_buf.assign(smem + kGuard + 128, 0);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = uint3{x, y, z};
        unsigned char* base = dynamic_smem();
        std::memset(base, 0xff, smem);  // NaN in every float type: reads of unwritten smem show
        std::memset(base + smem, 0xa5, kGuard);
        run_block(static_cast<int>(threads));
        for (size_t i = 0; i < kGuard; ++i)
          if (base[smem + i] != 0xa5) {
            std::fprintf(stderr, "emulated kernel wrote past its %zu bytes of dynamic shared memory\n", smem);
            std::abort();
          }
      }
}

unsigned char* dynamic_smem() {  // 128-byte aligned, as __align__(128) asks of the real one
  const uintptr_t p = reinterpret_cast<uintptr_t>(smem_buf.data());
  return smem_buf.data() + ((128 - p % 128) % 128);
}

void sync_block() { arrive(block_bar, 1); }
void sync_warp() { arrive(warp_bar[current->tid / 32], 2); }

void exchange(const void* in, void* out, size_t bytes, int src_lane) {
  const int w = static_cast<int>(current->tid / 32), lane = static_cast<int>(current->tid % 32);
  std::memcpy(&warp_slots[w][lane * 8], in, bytes);
  sync_warp();
  std::memcpy(out, &warp_slots[w][(src_lane & 31) * 8], bytes);
  sync_warp();
}

void all_gather(const void* in, void* out, size_t bytes) {
  const int w = static_cast<int>(current->tid / 32), lane = static_cast<int>(current->tid % 32);
  std::vector<unsigned char>& slots = warp_slots[w];
  if (slots.size() < 32 * bytes) slots.resize(32 * bytes);
  sync_warp();  // slots may still be read by a previous collective
  std::memcpy(&slots[lane * bytes], in, bytes);
  sync_warp();
  std::memcpy(out, slots.data(), 32 * bytes);
  sync_warp();
}

void set_error(cudaError_t e) { last_error = e; }
cudaError_t take_error() {
  const cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}
void set_func_smem(const void* kernel, int bytes) { func_smem[kernel] = bytes; }
void set_order(int reverse) { reverse_order = reverse != 0; }

}  // namespace lsdm_emu

void lsdm_emu_cp_async(void* smem, const void* gmem, int bytes, int src_bytes) {
  if (reinterpret_cast<uintptr_t>(smem) % bytes != 0 || (src_bytes > 0 && reinterpret_cast<uintptr_t>(gmem) % bytes != 0) ||
      src_bytes < 0 || src_bytes > bytes) {
    std::fprintf(stderr, "cp.async of %d bytes (%d read): misaligned %p <- %p\n", bytes, src_bytes, smem, gmem);
    std::abort();
  }
  std::memcpy(smem, gmem, static_cast<size_t>(src_bytes));
  std::memset(static_cast<char*>(smem) + src_bytes, 0, static_cast<size_t>(bytes - src_bytes));
}

void lsdm_emu_ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  const void* rows[32];
  lsdm_emu::all_gather(&row, rows, sizeof(row));
  const int lane = static_cast<int>(threadIdx.x % 32);
  for (int j = 0; j < 4; ++j) {
    const unsigned char* src = static_cast<const unsigned char*>(rows[8 * j + lane / 4]);
    if (reinterpret_cast<uintptr_t>(src) % 16 != 0) {
      std::fprintf(stderr, "ldmatrix: row address %p is not 16-byte aligned\n", static_cast<const void*>(src));
      std::abort();
    }
    std::memcpy(&r[j], src + 4 * (lane % 4), 4);  // the k pair (lane % 4) of row (lane / 4)
  }
}

namespace {
float half_bits_to_float(uint16_t h, bool bf16) {
  if (bf16) {
    __nv_bfloat16 v;
    v.bits = h;
    return __bfloat162float(v);
  }
  __half v;
  v.bits = h;
  return __half2float(v);
}
}  // namespace

void lsdm_emu_mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool bf16) {
  struct Frag {
    uint32_t a[4], b[2];
    float c[4];
  } mine{{a[0], a[1], a[2], a[3]}, {b0, b1}, {d[0], d[1], d[2], d[3]}}, all[32];
  lsdm_emu::all_gather(&mine, all, sizeof(Frag));
  float A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int r = 0; r < 4; ++r) {  // A register r: row g + 8 (r % 2), k pair t + 4 (r / 2)
      const int row = g + 8 * (r % 2), k = 2 * (t + 4 * (r / 2));
      A[row][k] = half_bits_to_float(static_cast<uint16_t>(all[l].a[r] & 0xffffu), bf16);
      A[row][k + 1] = half_bits_to_float(static_cast<uint16_t>(all[l].a[r] >> 16), bf16);
      C[g + 8 * (r / 2)][2 * t + r % 2] = all[l].c[r];  // D / C register r: row g + 8 (r / 2), col 2 t + r % 2
    }
    for (int r = 0; r < 2; ++r) {  // B register r: column g, k pair t + 4 r
      const int k = 2 * (t + 4 * r);
      B[k][g] = half_bits_to_float(static_cast<uint16_t>(all[l].b[r] & 0xffffu), bf16);
      B[k + 1][g] = half_bits_to_float(static_cast<uint16_t>(all[l].b[r] >> 16), bf16);
    }
  }
  const int lane = static_cast<int>(threadIdx.x % 32), g = lane / 4, t = lane % 4;
  for (int r = 0; r < 4; ++r) {
    const int row = g + 8 * (r / 2), col = 2 * t + r % 2;
    float s = C[row][col];
    for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][col];
    d[r] = s;
  }
}
