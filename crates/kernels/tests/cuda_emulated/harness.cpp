// Runs the kernels of cuda/fer_kernels.cu on the CPU, for tests/cuda_emulated.rs: each block's
// threads are real threads meeting at a barrier for __syncthreads, blocks run one after another
// (so one shared-memory buffer serves them all). Checks the kernels' indexing and arithmetic on a
// machine without a GPU; the GPU itself is checked by `trainer gpu-check`.
//
// stdin: kernel name, block size, the int arguments, the input lengths, the output lengths (one
// line each, space separated), then the inputs as raw f32. stdout: the outputs as raw f32.
#include <math.h>
#include <stddef.h>

#include <barrier>
#include <cstdio>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

struct Dim3 {
  unsigned x, y, z;
};
thread_local Dim3 threadIdx, blockIdx, blockDim;
static std::barrier<>* block_barrier;
static float shared_floats[1 << 16];

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __syncthreads() block_barrier->arrive_and_wait()
#define FER_SHARED(name) float* name = shared_floats

#include "../../cuda/fer_kernels.cu"

// `blocks` blocks of `threads` threads; concurrently (with the barrier) when the kernel syncs.
static void launch(unsigned blocks, unsigned threads, bool syncs, const std::function<void()>& k) {
  auto as_thread = [&](unsigned t, unsigned b) {
    threadIdx = {t, 0, 0};
    blockIdx = {b, 0, 0};
    blockDim = {threads, 1, 1};
    k();
  };
  for (unsigned b = 0; b < blocks; ++b) {
    if (!syncs) {
      for (unsigned t = 0; t < threads; ++t) as_thread(t, b);
      continue;
    }
    std::barrier<> bar(threads);
    block_barrier = &bar;
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < threads; ++t) ts.emplace_back(as_thread, t, b);
    for (auto& t : ts) t.join();
  }
}

template <class T>
static std::vector<T> line_of() {
  std::string line;
  std::getline(std::cin, line);
  std::istringstream in(line);
  std::vector<T> v;
  T x;
  while (in >> x) v.push_back(x);
  return v;
}

int main() {
  std::string name;
  std::getline(std::cin, name);
  unsigned threads = line_of<unsigned>().at(0);
  std::vector<int> a = line_of<int>();
  std::vector<size_t> in_lens = line_of<size_t>(), out_lens = line_of<size_t>();
  std::vector<std::vector<float>> in, out;
  for (size_t n : in_lens) {
    in.emplace_back(n);
    if (n && fread(in.back().data(), sizeof(float), n, stdin) != n) return 2;
  }
  // Poisoned, as gpu-check does on the device: an unwritten element stays NaN.
  for (size_t n : out_lens) out.emplace_back(n, NAN);
  auto I = [&](size_t i) { return in.at(i).data(); };
  auto O = [&](size_t i) { return out.at(i).data(); };
  auto grid = [&](size_t n) { return (unsigned)((n + threads - 1) / threads); };
  if (name == "fer_lstm_fwd") {
    launch(grid((size_t)a[0] * a[1]), threads, false,
           [&] { fer_lstm_fwd(a[0], a[1], I(0), I(1), I(2), O(0)); });
  } else if (name == "fer_lstm_bwd") {
    launch(grid((size_t)a[0] * a[1]), threads, false, [&] {
      fer_lstm_bwd(a[0], a[1], I(0), I(1), I(2), I(3), I(4), O(0), O(1));
    });
  } else if (name == "fer_gru_fwd") {
    launch(grid((size_t)a[0] * a[1]), threads, false,
           [&] { fer_gru_fwd(a[0], a[1], I(0), I(1), I(2), O(0)); });
  } else if (name == "fer_gru_bwd") {
    launch(grid((size_t)a[0] * a[1]), threads, false, [&] {
      fer_gru_bwd(a[0], a[1], I(0), I(1), I(2), I(3), O(0), O(1), O(2));
    });
  } else if (name == "fer_attn_fwd") {
    launch(a[3], threads, true,
           [&] { fer_attn_fwd(a[0], a[1], a[2], I(0), I(1), I(2), O(0), a[3]); });
  } else if (name == "fer_attn_bwd") {
    launch(a[3], threads, true, [&] {
      fer_attn_bwd(a[0], a[1], a[2], I(0), I(1), I(2), I(3), I(4), O(0), O(1), O(2), a[3]);
    });
  } else if (name == "fer_im2col") {
    launch(grid(out_lens.at(0)), threads, false, [&] {
      fer_im2col(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], I(0), O(0));
    });
  } else if (name == "fer_col2im") {
    launch(grid(out_lens.at(0)), threads, false, [&] {
      fer_col2im(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], I(0), O(0));
    });
  } else if (name == "fer_fill") {
    launch(grid(out_lens.at(0)), threads, false,
           [&] { fer_fill(out_lens.at(0), 2.5f, O(0)); });
  } else {
    std::cerr << "unknown kernel " << name << "\n";
    return 3;
  }
  for (auto& o : out) fwrite(o.data(), sizeof(float), o.size(), stdout);
  return 0;
}
