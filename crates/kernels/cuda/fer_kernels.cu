// CUDA twins of fer-kernels' CPU ops (built to PTX by build.rs with the `cuda` feature).
//
// Each kernel mirrors the CPU implementation in the Rust module named beside it, with the same
// formulas and the same packed layouts, so `trainer gpu-check` can compare the two element by
// element. Matrix products stay with cuBLAS (through candle's matmul); the kernels do what
// would otherwise be a dozen small element-wise launches, and the col2im scatter that candle's
// conv input gradient does with a naive direct kernel.

#include <stdint.h>

// Dynamic shared memory; tests/cuda_emulated replaces it when it runs these kernels on the CPU.
#ifndef FER_SHARED
#define FER_SHARED(name) extern __shared__ float name[]
#endif

__device__ __forceinline__ float sig(float x) { return 1.0f / (1.0f + expf(-x)); }

// ---- rnn_cell/: one LSTM step, gate order (i, f, g, o) ---------------------------------------
// The gate activations (i, f, g, o) of unit j from one row of gx and gh.
__device__ __forceinline__ void lstm_gates(const float* x, const float* y, int h, int j,
                                           float* i, float* f, float* g, float* o) {
  *i = sig(x[j] + y[j]);
  *f = sig(x[h + j] + y[h + j]);
  *g = tanhf(x[2 * h + j] + y[2 * h + j]);
  *o = sig(x[3 * h + j] + y[3 * h + j]);
}

// gx, gh: [B, 4h]; c: [B, h]; out: [2, B, h] (h' plane, then c' plane).
extern "C" __global__ void fer_lstm_fwd(int b, int h, const float* gx, const float* gh,
                                        const float* c, float* out) {
  int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= b * h) return;
  int r = k / h, j = k - r * h;
  float i, f, g, o;
  lstm_gates(gx + (size_t)r * 4 * h, gh + (size_t)r * 4 * h, h, j, &i, &f, &g, &o);
  float cn = f * c[k] + i * g;
  out[(size_t)b * h + k] = cn;
  out[k] = o * tanhf(cn);
}

// dpre: [B, 4h] (the gradient of gx and of gh alike); dc: [B, h]. out/dout as the forward's.
extern "C" __global__ void fer_lstm_bwd(int b, int h, const float* gx, const float* gh,
                                        const float* c, const float* out, const float* dout,
                                        float* dpre, float* dc) {
  int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= b * h) return;
  int r = k / h, j = k - r * h;
  float i, f, g, o;
  lstm_gates(gx + (size_t)r * 4 * h, gh + (size_t)r * 4 * h, h, j, &i, &f, &g, &o);
  size_t bh = (size_t)b * h;
  float tc = tanhf(out[bh + k]);
  float dh = dout[k];
  float dct = dout[bh + k] + dh * o * (1.0f - tc * tc);
  float* dp = dpre + (size_t)r * 4 * h;
  dp[j] = dct * g * i * (1.0f - i);
  dp[h + j] = dct * c[k] * f * (1.0f - f);
  dp[2 * h + j] = dct * i * (1.0f - g * g);
  dp[3 * h + j] = dh * tc * o * (1.0f - o);
  dc[k] = dct * f;
}

// ---- rnn_cell/: one GRU step, gate order (r, z, n) -------------------------------------------
// (r, z, n) of unit j from one row of gx and gh, and gh_n (the backward needs it).
__device__ __forceinline__ void gru_gates(const float* x, const float* y, int h, int j, float* r,
                                          float* z, float* n, float* ghn) {
  *r = sig(x[j] + y[j]);
  *z = sig(x[h + j] + y[h + j]);
  *ghn = y[2 * h + j];
  *n = tanhf(x[2 * h + j] + *r * *ghn);
}

// gx, gh: [B, 3h]; hp (previous state) and out: [B, h].
extern "C" __global__ void fer_gru_fwd(int b, int h, const float* gx, const float* gh,
                                       const float* hp, float* out) {
  int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= b * h) return;
  int r = k / h, j = k - r * h;
  float rr, z, n, ghn;
  gru_gates(gx + (size_t)r * 3 * h, gh + (size_t)r * 3 * h, h, j, &rr, &z, &n, &ghn);
  out[k] = n + z * (hp[k] - n);
}

extern "C" __global__ void fer_gru_bwd(int b, int h, const float* gx, const float* gh,
                                       const float* hp, const float* dout, float* dgx,
                                       float* dgh, float* dh) {
  int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= b * h) return;
  int r = k / h, j = k - r * h;
  size_t row = (size_t)r * 3 * h;
  float rr, z, n, ghn;
  gru_gates(gx + row, gh + row, h, j, &rr, &z, &n, &ghn);
  float d = dout[k];
  float dan = d * (1.0f - z) * (1.0f - n * n);
  float daz = d * (hp[k] - n) * z * (1.0f - z);
  float dar = dan * ghn * rr * (1.0f - rr);
  dgx[row + j] = dar;
  dgx[row + h + j] = daz;
  dgx[row + 2 * h + j] = dan;
  dgh[row + j] = dar;
  dgh[row + h + j] = daz;
  dgh[row + 2 * h + j] = dan * rr;
  dh[k] = d * z;
}

// ---- attention/: first-level attention pooling ----------------------------------------------
// One block per image; dynamic shared memory holds the image's N scores.
// s: [B*N, A] = p W^T (cuBLAS); p: [B, N, D]; bv: [2, A] (bias, then score vector).
// out: packed [u_0 g_0 u_1 g_1 ... | alpha_0 alpha_1 ...] as attention.rs's CPU op.
extern "C" __global__ void fer_attn_fwd(int n, int d, int a, const float* s, const float* p,
                                        const float* bv, float* out, int b) {
  FER_SHARED(e);
  int i = blockIdx.x;
  const float* bias = bv;
  const float* v = bv + a;
  const float* si = s + (size_t)i * n * a;
  for (int m = threadIdx.x; m < n; m += blockDim.x) {
    float acc = 0.0f;
    for (int j = 0; j < a; ++j) acc += tanhf(si[(size_t)m * a + j] + bias[j]) * v[j];
    e[m] = acc;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float mx = -INFINITY;
    for (int m = 0; m < n; ++m) mx = fmaxf(mx, e[m]);
    float sum = 0.0f;
    for (int m = 0; m < n; ++m) {
      e[m] = expf(e[m] - mx);
      sum += e[m];
    }
    for (int m = 0; m < n; ++m) e[m] /= sum;
  }
  __syncthreads();
  const float* pi = p + (size_t)i * n * d;
  float* ug = out + (size_t)i * 2 * d;
  float inv = 1.0f / (float)n;
  for (int k = threadIdx.x; k < d; k += blockDim.x) {
    float u = 0.0f, g = 0.0f;
    for (int m = 0; m < n; ++m) {
      float x = pi[(size_t)m * d + k];
      u += e[m] * x;
      g += x;
    }
    ug[k] = u;
    ug[d + k] = g * inv;
  }
  float* alpha = out + (size_t)b * 2 * d + (size_t)i * n;
  for (int m = threadIdx.x; m < n; m += blockDim.x) alpha[m] = e[m];
}

// One block per image; shared memory: 2N floats (dalpha, then de).
// dp_part: [B, N, D] = alpha_n du + dg / N (the W^T ds term is added by cuBLAS afterwards);
// ds: [B*N, A] = de_n v (1 - t^2) (the gradient of s); dbv_part: [B, 2A] per-image (db, dv).
extern "C" __global__ void fer_attn_bwd(int n, int d, int a, const float* s, const float* p,
                                        const float* bv, const float* out, const float* dout,
                                        float* dp_part, float* ds, float* dbv_part, int b) {
  FER_SHARED(sh);
  float* dal = sh;
  float* de = sh + n;
  __shared__ float c;
  int i = blockIdx.x;
  const float* bias = bv;
  const float* v = bv + a;
  const float* alpha = out + (size_t)b * 2 * d + (size_t)i * n;
  const float* du = dout + (size_t)i * 2 * d;
  const float* dg = du + d;
  const float* dalpha_in = dout + (size_t)b * 2 * d + (size_t)i * n;
  const float* pi = p + (size_t)i * n * d;
  const float* si = s + (size_t)i * n * a;
  for (int m = threadIdx.x; m < n; m += blockDim.x) {
    float acc = dalpha_in[m];
    for (int k = 0; k < d; ++k) acc += pi[(size_t)m * d + k] * du[k];
    dal[m] = acc;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float acc = 0.0f;
    for (int m = 0; m < n; ++m) acc += alpha[m] * dal[m];
    c = acc;
  }
  __syncthreads();
  for (int m = threadIdx.x; m < n; m += blockDim.x) de[m] = alpha[m] * (dal[m] - c);
  __syncthreads();
  float* dsi = ds + (size_t)i * n * a;
  float* part = dbv_part + (size_t)i * 2 * a;
  for (int j = threadIdx.x; j < a; j += blockDim.x) {
    float db = 0.0f, dv = 0.0f;
    for (int m = 0; m < n; ++m) {
      float t = tanhf(si[(size_t)m * a + j] + bias[j]);
      float x = de[m] * v[j] * (1.0f - t * t);
      dsi[(size_t)m * a + j] = x;
      db += x;
      dv += de[m] * t;
    }
    part[j] = db;
    part[a + j] = dv;
  }
  float inv = 1.0f / (float)n;
  float* dpi = dp_part + (size_t)i * n * d;
  for (int q = threadIdx.x; q < n * d; q += blockDim.x) {
    int m = q / d, k = q - m * d;
    dpi[q] = alpha[m] * du[k] + dg[k] * inv;
  }
}

// ---- conv input and weight gradients -----------------------------------------------------------
// Column matrices in "position-major" layout: col[(img * Ho*Wo + pos) * K + k] with
// k = (c * KH + kh) * KW + kw, so that with dyT = dy as [B*Ho*Wo, O] both gradients are single
// cuBLAS products: dcol = dyT w ([B*N, K]) and dw = dyT^T col ([O, K]).
// x: [B, C, H, W].
extern "C" __global__ void fer_im2col(int b, int ch, int hh, int ww, int kh, int kw, int stride,
                                      int pad, int ho, int wo, const float* x, float* col) {
  size_t kk = (size_t)ch * kh * kw;
  size_t total = (size_t)b * ho * wo * kk;
  size_t q = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (q >= total) return;
  size_t k = q % kk, pos = q / kk;
  int dxk = (int)(k % kw);
  int dy = (int)((k / kw) % kh);
  int c = (int)(k / ((size_t)kw * kh));
  int ox = (int)(pos % wo);
  int oy = (int)((pos / wo) % ho);
  int img = (int)(pos / ((size_t)wo * ho));
  int iy = oy * stride - pad + dy, ix = ox * stride - pad + dxk;
  float v = 0.0f;
  if (iy >= 0 && iy < hh && ix >= 0 && ix < ww)
    v = x[(((size_t)img * ch + c) * hh + iy) * ww + ix];
  col[q] = v;
}

// The adjoint: dx[b, c, y, x] = sum of the column entries that read it. One thread per input
// element gathers its (at most KH*KW) entries: no atomics, every element written once.
extern "C" __global__ void fer_col2im(int b, int ch, int hh, int ww, int kh, int kw, int stride,
                                      int pad, int ho, int wo, const float* col, float* dx) {
  size_t total = (size_t)b * ch * hh * ww;
  size_t q = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (q >= total) return;
  int ix = (int)(q % ww);
  size_t t = q / ww;
  int iy = (int)(t % hh);
  t /= hh;
  int c = (int)(t % ch);
  int img = (int)(t / ch);
  size_t kk = (size_t)ch * kh * kw;
  const float* cb = col + (size_t)img * ho * wo * kk;
  float acc = 0.0f;
  for (int dy = 0; dy < kh; ++dy) {
    int ty = iy + pad - dy;
    if (ty < 0 || ty % stride != 0) continue;
    int oy = ty / stride;
    if (oy >= ho) continue;
    for (int dxk = 0; dxk < kw; ++dxk) {
      int tx = ix + pad - dxk;
      if (tx < 0 || tx % stride != 0) continue;
      int ox = tx / stride;
      if (ox >= wo) continue;
      acc += cb[((size_t)oy * wo + ox) * kk + ((size_t)c * kh + dy) * kw + dxk];
    }
  }
  dx[q] = acc;
}

// ---- poisoning (gpu-check): every output filled with `value` before a kernel writes it ---------
extern "C" __global__ void fer_fill(size_t n, float value, float* out) {
  size_t q = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (q < n) out[q] = value;
}
