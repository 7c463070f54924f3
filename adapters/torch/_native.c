/* The per-row kernels of the PyTorch adapter: float32 rows on the CPU (x86-64, AVX2 + FMA).

   Built at first use by _native.py with the system C compiler (no torch headers), loaded with
   ctypes. A "row" is one node: the trailing dims of a contiguous tensor. Two families:

   - wc_project_many_f32: the projection alone (Constraints.apply(), the hook's plan). Each row
     is read once: its sum of squares, then, only when the factor is not exactly 1, scaled while
     it is in L1.
   - wc_adam_f32, wc_sgd_f32: the optimizer update (Adam/AdamW, SGD) and the projection of each
     row in one pass: every row is projected right after its entries are updated.

   Every operation reproduces, entry by entry, what torch computes on this build, so that the
   results equal "torch's step, then the core's projection" bit for bit; _native.py checks this
   with probes at first use and does not use a kernel whose probe fails:

   - the row norm is torch.linalg.vector_norm's order for contiguous float32 rows: one 8-lane
     accumulator (a multiply, then an add), the lanes summed left to right, then one 4-wide chunk
     of the tail (a multiply each, then 4 adds) when 4 or more entries remain, then an FMA for
     each of the last 1-3;
   - the factor is the core's (constraints/_projections.py), in float32;
   - the updates are ATen's: `add` with alpha and `addcmul` are FMAs, `lerp` is ATen's lerp
     (two forms by the size of the weight), the square root of the foreach/single-tensor Adam is
     torch.sqrt's (MKL's vmsSqrt on builds that use it; _native.py finds and checks it) and that
     of fused=True Adam the correctly rounded one.

   The file is compiled with -ffp-contract=off: every FMA here is written as one. */

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define WC_ABI 3

int wc_abi(void) { return WC_ABI; }

int wc_cpu_supported(void) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return 0;
#endif
}

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#include <immintrin.h>

/* -- the projection of one row ------------------------------------------------------------- */

typedef struct {
  int32_t kind;     /* 0 none, 1 MaxNorm, 2 UnitNorm, 3 MinMaxNorm, 4 MaxNorm(0) */
  int32_t rate_one; /* MinMaxNorm: rate == 1 (the clipped norm itself) */
  float c;          /* MaxNorm: max_value */
  float lo, hi;     /* MinMaxNorm: min_value, max_value */
  float rate;       /* MinMaxNorm: rate */
} wc_proj;

/* The core's factor of a row whose norm is n (max_norm_factor, unit_norm_factor,
   min_max_norm_factor in float32; SMALLEST_SCALABLE_NORM["float32"] = 2**-63). */
static inline float factor_of(float n, const wc_proj* q) {
  const float tiny = 0x1p-63f;
  switch (q->kind) {
    case 1:
      return n > q->c ? q->c / n : 1.0f;
    case 2:
      return (n >= tiny && 1.0f != n) ? 1.0f / n : 1.0f;
    case 3: {
      float clipped = isnan(n) ? n : fminf(fmaxf(n, q->lo), q->hi);
      float target = q->rate_one ? clipped : n + q->rate * (clipped - n);
      return (n >= tiny && target != n) ? target / n : 1.0f;
    }
    case 4:
      return isnan(n) ? 1.0f : 0.0f;
    default:
      return 1.0f;
  }
}

static inline __m256 square_add(__m256 acc, __m256 v) {
  return _mm256_add_ps(acc, _mm256_mul_ps(v, v));
}

/* vector_norm's order for what follows the 8-lane body (d: where the body stopped). */
static inline float finish_norm(__m256 acc, const float* x, int64_t d, int64_t cols) {
  float lanes[8];
  _mm256_storeu_ps(lanes, acc);
  float s = lanes[0];
  for (int j = 1; j < 8; ++j) s = s + lanes[j];
  if (d + 4 <= cols) {
    float q[4];
    _mm_storeu_ps(q, _mm_mul_ps(_mm_loadu_ps(x + d), _mm_loadu_ps(x + d)));
    s = s + q[0];
    s = s + q[1];
    s = s + q[2];
    s = s + q[3];
    d += 4;
  }
  for (; d < cols; ++d) s = fmaf(x[d], x[d], s);
  return sqrtf(s);
}

static inline float row_norm(const float* x, int64_t cols) {
  __m256 acc = _mm256_setzero_ps();
  int64_t d = 0;
  for (; d + 8 <= cols; d += 8) acc = square_add(acc, _mm256_loadu_ps(x + d));
  return finish_norm(acc, x, d, cols);
}

/* Scale a row by f, unless f is exactly 1: a row inside the set stays as it was written. */
static inline void scale_row(float* x, int64_t cols, float f) {
  if (f == 1.0f) return;
  const __m256 fv = _mm256_set1_ps(f);
  int64_t j = 0;
  for (; j + 8 <= cols; j += 8) _mm256_storeu_ps(x + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), fv));
  for (; j < cols; ++j) x[j] = x[j] * f;
}

static void project_rows(float* w, int64_t r0, int64_t r1, int64_t cols, const wc_proj* q) {
  if (q->kind == 0) return;
  for (int64_t r = r0; r < r1; ++r) {
    float* x = w + r * cols;
    scale_row(x, cols, factor_of(row_norm(x, cols), q));
  }
}

/* -- work shared between threads: consecutive rows of consecutive tensors ---------------------- */

typedef void (*wc_rows_fn)(const void* job, int i, int64_t r0, int64_t r1);

typedef struct {
  const void* job;
  wc_rows_fn fn;
  const int64_t* rows;
  int n;
  int i0, i1;     /* from row r0 of tensor i0 to row r1 (excluded) of tensor i1 (i1 <= n) */
  int64_t r0, r1;
} wc_part;

static void run_part(const wc_part* p) {
  for (int i = p->i0; i <= p->i1 && i < p->n; ++i) {
    int64_t from = i == p->i0 ? p->r0 : 0;
    int64_t to = i == p->i1 ? p->r1 : p->rows[i];
    if (to > from) p->fn(p->job, i, from, to);
  }
}

static void* run_part_thread(void* arg) {
  run_part((const wc_part*)arg);
  return NULL;
}

#define WC_MAX_THREADS 64
#define WC_MIN_ENTRIES_PER_THREAD 65536

/* Run fn over every row of the n tensors, on up to `threads` threads, each taking consecutive
   rows of about the same number of entries (each row is done by one thread: the results do not
   depend on the number of threads). */
static void for_rows(const void* job, wc_rows_fn fn, int n, const int64_t* rows, const int64_t* cols,
                     int threads) {
  int64_t total = 0;
  for (int i = 0; i < n; ++i) total += rows[i] * cols[i];
  if (threads > WC_MAX_THREADS) threads = WC_MAX_THREADS;
  if (threads > 1 && total / WC_MIN_ENTRIES_PER_THREAD < threads)
    threads = (int)(total / WC_MIN_ENTRIES_PER_THREAD);
  if (threads < 1) threads = 1;
  wc_part parts[WC_MAX_THREADS];
  int i = 0;
  int64_t r = 0, done = 0;
  for (int t = 0; t < threads; ++t) {
    wc_part* p = &parts[t];
    p->job = job; p->fn = fn; p->rows = rows; p->n = n;
    p->i0 = i; p->r0 = r;
    if (t == threads - 1) {
      i = n; r = 0;
    } else {
      const int64_t goal = total / threads * (t + 1);
      while (i < n) {
        const int64_t left = (rows[i] - r) * cols[i];
        if (done + left <= goal) {
          done += left; ++i; r = 0;
          continue;
        }
        const int64_t need = (goal - done + cols[i] - 1) / cols[i];
        r += need; done += need * cols[i];
        break;
      }
    }
    p->i1 = i; p->r1 = r;
  }
  pthread_t ids[WC_MAX_THREADS];
  int started[WC_MAX_THREADS];
  for (int t = 1; t < threads; ++t)
    started[t] = pthread_create(&ids[t], NULL, run_part_thread, &parts[t]) == 0;
  run_part(&parts[0]);
  for (int t = 1; t < threads; ++t) {
    if (started[t]) pthread_join(ids[t], NULL);
    else run_part(&parts[t]);
  }
}

/* -- the projection alone ------------------------------------------------------------------ */

typedef struct {
  float** w;
  const int64_t* cols;
  const wc_proj* q;
} wc_project_job;

static void project_job_rows(const void* job, int i, int64_t r0, int64_t r1) {
  const wc_project_job* j = (const wc_project_job*)job;
  project_rows(j->w[i], r0, r1, j->cols[i], &j->q[i]);
}

/* Project n contiguous float32 tensors in place, tensor i as rows[i] rows of cols[i] entries. */
void wc_project_many_f32(int n, float** w, const int64_t* rows, const int64_t* cols,
                         const wc_proj* q, int threads) {
  wc_project_job job = {w, cols, q};
  for_rows(&job, project_job_rows, n, rows, cols, threads);
}

/* The norm of each row (vector_norm's), for the probes. */
void wc_norms_f32(const float* w, int64_t rows, int64_t cols, float* out) {
  for (int64_t r = 0; r < rows; ++r) out[r] = row_norm(w + r * cols, cols);
}

/* -- Adam's step counts --------------------------------------------------------------------- */

/* Add 1 to each of n one-entry step tensors (float32 when f64 is 0, else float64), as
   torch._foreach_add_(steps, 1) does, and write their new values to out. */
void wc_steps(int n, void** steps, int f64, double* out) {
  for (int i = 0; i < n; ++i) {
    if (f64) {
      double* s = (double*)steps[i];
      *s = *s + 1.0;
      out[i] = *s;
    } else {
      float* s = (float*)steps[i];
      *s = *s + 1.0f;
      out[i] = (double)*s;
    }
  }
}

/* -- Adam and AdamW ------------------------------------------------------------------------ */

typedef struct {
  float decay;   /* AdamW (decoupled decay): (float)(1 - lr*wd); else 1 */
  float wd;      /* Adam's coupled decay: (float)wd; used when flags & WC_COUPLED */
  float w1;      /* the lerp weight, (float)(1 - beta1) */
  float b2;      /* (float)beta2 */
  float c2;      /* (float)(1 - beta2) */
  float bc2s;    /* (float)sqrt(1 - beta2**step), as the mode computes it */
  float eps;     /* (float)eps */
  float ss;      /* (float)(-(lr / (1 - beta1**step))) */
  int32_t flags; /* WC_MAXIMIZE | WC_COUPLED | WC_DECOUPLED */
  int32_t pad;
  int64_t tail_from; /* entries from this flat index on take fused=True's scalar forms */
} wc_adam;

#define WC_MAXIMIZE 1
#define WC_COUPLED 2
#define WC_DECOUPLED 4
#define WC_WEIGHT_DECAY 8
#define WC_MOMENTUM 16
#define WC_NESTEROV 32
#define WC_FIRST 64

typedef void (*wc_sqrt_fn)(long long n, const float* a, float* r, unsigned long long mode);
static wc_sqrt_fn wc_torch_sqrt = 0;
static unsigned long long wc_torch_sqrt_mode = 0;

/* The square root torch.sqrt uses (MKL's vmsSqrt and its mode), for the foreach and
   single-tensor arithmetic. */
void wc_set_sqrt(void* fn, unsigned long long mode) {
  wc_torch_sqrt = (wc_sqrt_fn)fn;
  wc_torch_sqrt_mode = mode;
}

/* torch.sqrt through the pointer set above, for the probe. */
int wc_torch_sqrt_f32(int64_t n, const float* a, float* r) {
  if (!wc_torch_sqrt) return 0;
  wc_torch_sqrt((long long)n, a, r, wc_torch_sqrt_mode);
  return 1;
}

/* ATen's lerp(m, g, w): w small (|w| < 0.5): m + w (g - m); else g - (1 - w)(g - m); one FMA. */
static inline __m256 lerp8(__m256 m, __m256 g, __m256 w, __m256 wm1, int small) {
  return small ? _mm256_fmadd_ps(w, _mm256_sub_ps(g, m), m)
               : _mm256_fmadd_ps(wm1, _mm256_sub_ps(g, m), g);
}

static inline float lerp1(float m, float g, float w, int small) {
  return small ? fmaf(w, g - m, m) : fmaf(w - 1.0f, g - m, g);
}

/* The first half of an Adam update of n entries: the gradient as the optimizer uses it, m and v,
   and p times the decoupled decay. */
static inline void adam_moments(float* p, const float* g, float* m, float* v, int64_t n,
                                const wc_adam* a) {
  const __m256 decay = _mm256_set1_ps(a->decay), wd = _mm256_set1_ps(a->wd),
               w1 = _mm256_set1_ps(a->w1), wm1 = _mm256_set1_ps(a->w1 - 1.0f),
               b2 = _mm256_set1_ps(a->b2), c2 = _mm256_set1_ps(a->c2),
               neg = _mm256_set1_ps(-0.0f);
  const int maximize = a->flags & WC_MAXIMIZE, coupled = a->flags & WC_COUPLED,
            decoupled = a->flags & WC_DECOUPLED, small = fabsf(a->w1) < 0.5f;
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 pv = _mm256_loadu_ps(p + j), gv = _mm256_loadu_ps(g + j);
    if (maximize) gv = _mm256_xor_ps(gv, neg);
    if (coupled) gv = _mm256_fmadd_ps(pv, wd, gv);
    if (decoupled) _mm256_storeu_ps(p + j, _mm256_mul_ps(pv, decay));
    __m256 mv = lerp8(_mm256_loadu_ps(m + j), gv, w1, wm1, small);
    __m256 vv = _mm256_mul_ps(_mm256_loadu_ps(v + j), b2);
    vv = _mm256_fmadd_ps(_mm256_mul_ps(c2, gv), gv, vv);
    _mm256_storeu_ps(m + j, mv);
    _mm256_storeu_ps(v + j, vv);
  }
  for (; j < n; ++j) {
    float gv = maximize ? -g[j] : g[j];
    if (coupled) gv = fmaf(p[j], a->wd, gv);
    if (decoupled) p[j] = p[j] * a->decay;
    m[j] = lerp1(m[j], gv, a->w1, small);
    v[j] = fmaf(a->c2 * gv, gv, v[j] * a->b2);
  }
}

/* The second half: p + (ss m) / (s / bc2s + eps), s the square roots of v. */
static inline void adam_apply(float* p, const float* m, const float* s, int64_t n,
                              const wc_adam* a) {
  const __m256 bc2s = _mm256_set1_ps(a->bc2s), eps = _mm256_set1_ps(a->eps),
               ss = _mm256_set1_ps(a->ss);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 d = _mm256_add_ps(_mm256_div_ps(_mm256_loadu_ps(s + j), bc2s), eps);
    __m256 step = _mm256_div_ps(_mm256_mul_ps(ss, _mm256_loadu_ps(m + j)), d);
    _mm256_storeu_ps(p + j, _mm256_add_ps(_mm256_loadu_ps(p + j), step));
  }
  for (; j < n; ++j) p[j] = p[j] + (a->ss * m[j]) / (s[j] / a->bc2s + a->eps);
}

/* One entry in the scalar forms of torch's fused=True Adam (the last numel % 8 entries of a
   tensor there): v is beta2 v + (c2 g) g with the FMA on the first product. */
static inline void adam_fused_tail(float* p, float g, float* m, float* v, const wc_adam* a) {
  const int small = fabsf(a->w1) < 0.5f;
  float gv = (a->flags & WC_MAXIMIZE) ? -g : g;
  if (a->flags & WC_COUPLED) gv = fmaf(*p, a->wd, gv);
  float pv = (a->flags & WC_DECOUPLED) ? *p * a->decay : *p;
  float mv = lerp1(*m, gv, a->w1, small);
  float vv = fmaf(*v, a->b2, (a->c2 * gv) * gv);
  *m = mv;
  *v = vv;
  *p = pv + (a->ss * mv) / (sqrtf(vv) / a->bc2s + a->eps);
}

static inline void sqrt_exact(const float* v, float* s, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(s + j, _mm256_sqrt_ps(_mm256_loadu_ps(v + j)));
  for (; j < n; ++j) s[j] = sqrtf(v[j]);
}

#define WC_BLOCK 4096

typedef struct {
  float** p;
  float** g;
  float** m;
  float** v;
  const int64_t* cols;
  const wc_adam* a;
  const wc_proj* q;
  int torch_sqrt; /* 1: torch.sqrt's (foreach, single-tensor); 0: correctly rounded (fused) */
} wc_adam_job;

/* Rows r0..r1 of tensor i with the correctly rounded square root (torch's fused=True
   arithmetic), one pass per row: the update, the row's sum of squares as it is written, then the
   row scaled while it is in L1. */
static void adam_rows_exact(const wc_adam_job* J, int i, int64_t r0, int64_t r1) {
  const int64_t cols = J->cols[i];
  const wc_adam* a = &J->a[i];
  const __m256 decay = _mm256_set1_ps(a->decay), wd = _mm256_set1_ps(a->wd),
               w1 = _mm256_set1_ps(a->w1), wm1 = _mm256_set1_ps(a->w1 - 1.0f),
               b2 = _mm256_set1_ps(a->b2), c2 = _mm256_set1_ps(a->c2),
               bc2s = _mm256_set1_ps(a->bc2s), eps = _mm256_set1_ps(a->eps),
               ss = _mm256_set1_ps(a->ss), neg = _mm256_set1_ps(-0.0f);
  const int maximize = a->flags & WC_MAXIMIZE, coupled = a->flags & WC_COUPLED,
            decoupled = a->flags & WC_DECOUPLED, small = fabsf(a->w1) < 0.5f;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t o = r * cols;
    float *p = J->p[i] + o, *m = J->m[i] + o, *v = J->v[i] + o;
    const float* g = J->g[i] + o;
    const int64_t plain = a->tail_from - o >= cols ? cols : (a->tail_from > o ? a->tail_from - o : 0);
    __m256 acc = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= plain; j += 8) {
      __m256 pv = _mm256_loadu_ps(p + j), gv = _mm256_loadu_ps(g + j);
      if (maximize) gv = _mm256_xor_ps(gv, neg);
      if (coupled) gv = _mm256_fmadd_ps(pv, wd, gv);
      if (decoupled) pv = _mm256_mul_ps(pv, decay);
      __m256 mv = lerp8(_mm256_loadu_ps(m + j), gv, w1, wm1, small);
      __m256 vv = _mm256_mul_ps(_mm256_loadu_ps(v + j), b2);
      vv = _mm256_fmadd_ps(_mm256_mul_ps(c2, gv), gv, vv);
      _mm256_storeu_ps(m + j, mv);
      _mm256_storeu_ps(v + j, vv);
      __m256 d = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vv), bc2s), eps);
      __m256 pn = _mm256_add_ps(pv, _mm256_div_ps(_mm256_mul_ps(ss, mv), d));
      _mm256_storeu_ps(p + j, pn);
      acc = square_add(acc, pn);
    }
    const int64_t body = j;
    if (j < plain) {
      float s[8];
      adam_moments(p + j, g + j, m + j, v + j, plain - j, a);
      sqrt_exact(v + j, s, plain - j);
      adam_apply(p + j, m + j, s, plain - j, a);
    }
    for (j = plain; j < cols; ++j) adam_fused_tail(p + j, g[j], m + j, v + j, a);
    if (J->q[i].kind != 0) scale_row(p, cols, factor_of(finish_norm(acc, p, body, cols), &J->q[i]));
  }
}

/* Rows r0..r1 of tensor i with torch.sqrt's square root (the foreach and single-tensor
   arithmetic), in blocks of whole rows (or pieces of one long row) of at most WC_BLOCK entries:
   the moments, one call of torch's square root, the new p; then each row of the block is
   projected while it is in cache. */
static void adam_job_rows(const void* job, int i, int64_t r0, int64_t r1) {
  const wc_adam_job* J = (const wc_adam_job*)job;
  if (!J->torch_sqrt) {
    adam_rows_exact(J, i, r0, r1);
    return;
  }
  const int64_t cols = J->cols[i];
  const wc_adam* a = &J->a[i];
  float s[WC_BLOCK];
  const int64_t per = cols >= WC_BLOCK ? 1 : WC_BLOCK / cols;
  for (int64_t r = r0; r < r1; r += per) {
    const int64_t nr = r1 - r < per ? r1 - r : per;
    const int64_t total = nr * cols;
    for (int64_t c = 0; c < total; c += WC_BLOCK) {
      const int64_t n = total - c < WC_BLOCK ? total - c : WC_BLOCK, o = r * cols + c;
      float *p = J->p[i] + o, *m = J->m[i] + o, *v = J->v[i] + o;
      adam_moments(p, J->g[i] + o, m, v, n, a);
      wc_torch_sqrt((long long)n, v, s, wc_torch_sqrt_mode);
      adam_apply(p, m, s, n, a);
    }
    project_rows(J->p[i], r, r + nr, cols, &J->q[i]);
  }
}

/* One Adam/AdamW step of n float32 tensors, each projected row by row (q[i].kind 0: not). */
int wc_adam_f32(int n, float** p, float** g, float** m, float** v, const int64_t* rows,
                const int64_t* cols, const wc_adam* a, const wc_proj* q, int torch_sqrt,
                int threads) {
  if (torch_sqrt && !wc_torch_sqrt) return 0;
  wc_adam_job job = {p, g, m, v, cols, a, q, torch_sqrt};
  for_rows(&job, adam_job_rows, n, rows, cols, threads);
  return 1;
}

/* -- SGD ----------------------------------------------------------------------------------- */

typedef struct {
  float wd;      /* (float)weight_decay (flags & WC_WEIGHT_DECAY) */
  float mom;     /* (float)momentum (flags & WC_MOMENTUM) */
  float damp1;   /* (float)(1 - dampening) */
  float neg_lr;  /* (float)(-lr) */
  int32_t flags; /* WC_MAXIMIZE | WC_WEIGHT_DECAY | WC_MOMENTUM | WC_NESTEROV | WC_FIRST */
  int32_t pad;
  int64_t tail_from; /* entries from this flat index on take fused=True's scalar forms */
} wc_sgd;

typedef struct {
  float** p;
  float** g;
  float** b;
  const int64_t* cols;
  const wc_sgd* s;
  const wc_proj* q;
} wc_sgd_job;

static void sgd_job_rows(const void* job, int i, int64_t r0, int64_t r1) {
  const wc_sgd_job* J = (const wc_sgd_job*)job;
  const int64_t cols = J->cols[i];
  const wc_sgd* s = &J->s[i];
  const int flags = s->flags;
  const int maximize = flags & WC_MAXIMIZE, decay = flags & WC_WEIGHT_DECAY,
            momentum = flags & WC_MOMENTUM, nesterov = flags & WC_NESTEROV,
            first = flags & WC_FIRST;
  const __m256 wd = _mm256_set1_ps(s->wd), mom = _mm256_set1_ps(s->mom),
               damp1 = _mm256_set1_ps(s->damp1), lr = _mm256_set1_ps(s->neg_lr),
               neg = _mm256_set1_ps(-0.0f);
  for (int64_t r = r0; r < r1; ++r) {
    float* p = J->p[i] + r * cols;
    const float* g = J->g[i] + r * cols;
    float* b = momentum ? J->b[i] + r * cols : 0;
    const int64_t o = r * cols;
    const int64_t plain = s->tail_from - o >= cols ? cols : (s->tail_from > o ? s->tail_from - o : 0);
    __m256 acc = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= plain; j += 8) {
      __m256 pv = _mm256_loadu_ps(p + j), gv = _mm256_loadu_ps(g + j);
      if (maximize) gv = _mm256_xor_ps(gv, neg);
      if (decay) gv = _mm256_fmadd_ps(pv, wd, gv);
      if (momentum) {
        __m256 bv = first ? gv
                          : _mm256_fmadd_ps(gv, damp1, _mm256_mul_ps(_mm256_loadu_ps(b + j), mom));
        _mm256_storeu_ps(b + j, bv);
        gv = nesterov ? _mm256_fmadd_ps(bv, mom, gv) : bv;
      }
      const __m256 pn = _mm256_fmadd_ps(gv, lr, pv);
      _mm256_storeu_ps(p + j, pn);
      acc = square_add(acc, pn);
    }
    const int64_t body = j;
    for (; j < cols; ++j) {
      float gv = maximize ? -g[j] : g[j];
      if (decay) gv = fmaf(p[j], s->wd, gv);
      if (momentum) { /* fused=True's scalar forms (j >= plain) put the FMA on the buffer */
        float bv = first ? gv
                   : j < plain ? fmaf(gv, s->damp1, b[j] * s->mom)
                               : fmaf(b[j], s->mom, gv * s->damp1);
        b[j] = bv;
        gv = nesterov ? fmaf(bv, s->mom, gv) : bv;
      }
      p[j] = fmaf(gv, s->neg_lr, p[j]);
    }
    if (J->q[i].kind != 0) scale_row(p, cols, factor_of(finish_norm(acc, p, body, cols), &J->q[i]));
  }
}

/* One SGD step of n float32 tensors, each projected row by row (q[i].kind 0: not). */
void wc_sgd_f32(int n, float** p, float** g, float** b, const int64_t* rows, const int64_t* cols,
                const wc_sgd* s, const wc_proj* q, int threads) {
  wc_sgd_job job = {p, g, b, cols, s, q};
  for_rows(&job, sgd_job_rows, n, rows, cols, threads);
}

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif
