/* Compiled kernels of lotavec's ticket codecs and merge (loaded with ctypes: lotavec/native.py).
 *
 * Each function is the single-pass equivalent of a numpy sequence in lotavec/format/codecs.py or
 * lotavec/merge/engine.py, which stay the reference (the tests compare both). Inputs are trusted
 * to be in range: callers validate sizes before the call, and index arrays come from the decoders
 * below, which produce strictly increasing indices and report the last one for the range check.
 */
#include <Python.h>
#include <stdint.h>
#include <string.h>
#ifndef _WIN32
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
#endif

/* The gap g(j) of entry j of nnz gaps stored as w byte planes (w = 1, 2 or 4; callers pass a
 * compile-time constant where they can, so the plane reads are specialised). */
static inline __attribute__((always_inline)) uint64_t lv_gap_at(const uint8_t *raw, int w, int64_t nnz, int64_t j) {
    uint64_t g = raw[j];
    if (w >= 2) g |= (uint64_t)raw[nnz + j] << 8;
    if (w == 4) g |= ((uint64_t)raw[2 * nnz + j] << 16) | ((uint64_t)raw[3 * nnz + j] << 24);
    return g;
}

/* Gap-coded mask (spec §5.2): width-byte gaps stored as byte planes (raw[b * nnz + j] is byte b of
 * gap j). Writes offset + local index per entry: i0 = g0, ij = i(j-1) + gj + 1. Returns the last
 * local index (-1 when nnz == 0) for the caller's range check. With out == NULL nothing is
 * written: only the last index is computed (the merge reads the gaps itself, see lv_cursor). */
static inline __attribute__((always_inline)) int64_t lv_gaps_w(const uint8_t *raw, int w, int64_t nnz,
                                                                int64_t offset, int64_t *out) {
    int64_t i = -1;
    if (out) {
        for (int64_t j = 0; j < nnz; j++) { i += (int64_t)lv_gap_at(raw, w, nnz, j) + 1; out[j] = i + offset; }
    } else {
        for (int64_t j = 0; j < nnz; j++) i += (int64_t)lv_gap_at(raw, w, nnz, j) + 1;
    }
    return i;
}

int64_t lv_gaps_decode(const uint8_t *raw, int32_t width, int64_t nnz, int64_t offset, int64_t *out) {
    if (width == 1) return lv_gaps_w(raw, 1, nnz, offset, out);
    if (width == 2) return lv_gaps_w(raw, 2, nnz, offset, out);
    return lv_gaps_w(raw, 4, nnz, offset, out);
}

int64_t lv_bitmap_decode(const uint8_t *bits, int64_t length, int64_t offset, int64_t *out, int64_t cap) {
    int64_t n = 0, nbytes = (length + 7) / 8, full = length / 64;
    for (int64_t w = 0; w < full; w++) {
        uint64_t v;
        memcpy(&v, bits + 8 * w, 8);
        while (v) {
            int b = __builtin_ctzll(v);
            if (n < cap) out[n] = offset + 64 * w + b;
            n++;
            v &= v - 1;
        }
    }
    for (int64_t byte = 8 * full; byte < nbytes; byte++) {
        unsigned v = bits[byte];
        while (v) {
            int b = __builtin_ctz(v);
            if (n < cap) out[n] = offset + 8 * byte + b;
            n++;
            v &= v - 1;
        }
    }
    return n;
}

/* Byte-unshuffle n elements of `width` bytes (little-endian); with zigzag, map each unsigned
 * value u to (u >> 1) ^ -(u & 1), the wrap-around difference of the ulpdiff codec (spec §6.1). */
void lv_unshuffle(const uint8_t *raw, int32_t width, int64_t n, int32_t zigzag, void *out) {
    if (width == 2) {
        uint16_t *o = (uint16_t *)out;
        const uint8_t *p0 = raw, *p1 = raw + n;
        if (zigzag) {
            for (int64_t j = 0; j < n; j++) {
                uint16_t u = (uint16_t)(p0[j] | (p1[j] << 8));
                o[j] = (uint16_t)((u >> 1) ^ (uint16_t)(-(int32_t)(u & 1)));
            }
        } else {
            for (int64_t j = 0; j < n; j++) o[j] = (uint16_t)(p0[j] | (p1[j] << 8));
        }
    } else if (width == 4) {
        uint32_t *o = (uint32_t *)out;
        const uint8_t *p0 = raw, *p1 = raw + n, *p2 = raw + 2 * n, *p3 = raw + 3 * n;
        for (int64_t j = 0; j < n; j++) {
            uint32_t u = (uint32_t)p0[j] | ((uint32_t)p1[j] << 8) | ((uint32_t)p2[j] << 16) | ((uint32_t)p3[j] << 24);
            o[j] = zigzag ? ((u >> 1) ^ (uint32_t)(-(int64_t)(u & 1))) : u;
        }
    } else {
        memcpy(out, raw, (size_t)n * (size_t)width);
    }
}

/* Encoder side of the gap codec: the largest gap of entries idx[0..n) of a chunk starting at
 * `start` (g0 = idx0 - start, gj = idxj - idx(j-1) - 1). Returns -1 when the indices are not
 * strictly increasing or leave [start, start + length) (callers validate first; this is a guard). */
int64_t lv_gaps_max(const int64_t *idx, int64_t n, int64_t start, int64_t length) {
    int64_t prev = start - 1, top = 0;
    for (int64_t j = 0; j < n; j++) {
        int64_t g = idx[j] - prev - 1;
        if (g < 0) return -1;
        top = g > top ? g : top;
        prev = idx[j];
    }
    if (n && prev >= start + length) return -1;
    return top;
}

/* Gaps of width 1, 2 or 4 bytes, written byte-shuffled (plane b holds byte b of every gap). */
void lv_gaps_pack(const int64_t *idx, int64_t n, int64_t start, int32_t width, uint8_t *out) {
    int64_t prev = start - 1;
    for (int64_t j = 0; j < n; j++) {
        uint64_t g = (uint64_t)(idx[j] - prev - 1);
        prev = idx[j];
        out[j] = (uint8_t)g;
        if (width > 1) out[n + j] = (uint8_t)(g >> 8);
        if (width > 2) { out[2 * n + j] = (uint8_t)(g >> 16); out[3 * n + j] = (uint8_t)(g >> 24); }
    }
}

/* Byte-shuffle n elements of `width` (2 or 4) bytes; with zigzag, first map each value read as a
 * signed integer s to (s << 1) ^ (s >> (bits - 1)) (the ulpdiff codec, spec §6.1). */
void lv_shuffle(const void *src, int32_t width, int64_t n, int32_t zigzag, uint8_t *out) {
    if (width == 2) {
        const uint16_t *v = (const uint16_t *)src;
        for (int64_t j = 0; j < n; j++) {
            uint16_t u = v[j];
            if (zigzag) u = (uint16_t)((uint16_t)(u << 1) ^ (uint16_t)(-(int32_t)(u >> 15)));
            out[j] = (uint8_t)u; out[n + j] = (uint8_t)(u >> 8);
        }
    } else {
        const uint32_t *v = (const uint32_t *)src;
        for (int64_t j = 0; j < n; j++) {
            uint32_t u = v[j];
            if (zigzag) u = (u << 1) ^ (uint32_t)(-(int64_t)(u >> 31));
            out[j] = (uint8_t)u; out[n + j] = (uint8_t)(u >> 8);
            out[2 * n + j] = (uint8_t)(u >> 16); out[3 * n + j] = (uint8_t)(u >> 24);
        }
    }
}

/* First position j with idx[j] <= idx[j-1], or -1 when idx is strictly increasing. */
int64_t lv_first_unsorted(const int64_t *idx, int64_t n) {
    for (int64_t j = 1; j < n; j++)
        if (idx[j] <= idx[j - 1]) return j;
    return -1;
}

/* The k largest |x| among n finite floats, in position order, with ties at the threshold taken
 * from the lowest positions first (lotavec.merge.methods.trim_keep); 0 < k < n. Radix selection
 * on the bits of |x|: a histogram of the high 16 bits, one of the low 16 bits within the boundary
 * bin, then one branch-free emitting pass. Writes the kept positions to out_pos; when idx_in is
 * given, also idx_in[j] and x[j] of each kept j to out_idx / out_val (the trimmed ticket, without
 * a separate gather). hist: 65536 uint32 of scratch. Returns the count written (k). */
/* The threshold of the k largest |x| (0 < k < n), given hist = the histogram of the high 16 bits
 * of |x|: finds the boundary bin, histograms the low 16 bits within it (reusing hist), and
 * returns the threshold key t; *ties = how many entries equal to t are kept (the lowest
 * positions). Entries with |x| bits > t are kept. */
static uint32_t lv_topk_threshold(const uint32_t *u, int64_t n, int64_t k, uint32_t *hist, int64_t *ties) {
    int64_t above = 0; int32_t b = 65535;
    for (; b > 0; b--) { if (above + hist[b] >= k) break; above += hist[b]; }
    int64_t need = k - above;  /* entries needed from bin b */
    memset(hist, 0, 65536 * sizeof(uint32_t));
    for (int64_t j = 0; j < n; j++) {
        uint32_t key = u[j] & 0x7FFFFFFFu;
        if ((key >> 16) == (uint32_t)b) hist[key & 0xFFFFu]++;
    }
    int64_t above2 = 0; int32_t lo = 65535;
    for (; lo > 0; lo--) { if (above2 + hist[lo] >= need) break; above2 += hist[lo]; }
    *ties = need - above2;
    return ((uint32_t)b << 16) | (uint32_t)lo;
}

int64_t lv_topk_abs(const float *x, int64_t n, int64_t k, int64_t *out_pos, uint32_t *hist,
                    const int64_t *idx_in, int64_t *out_idx, float *out_val) {
    const uint32_t *u = (const uint32_t *)x;
    memset(hist, 0, 65536 * sizeof(uint32_t));
    for (int64_t j = 0; j < n; j++) hist[(u[j] & 0x7FFFFFFFu) >> 16]++;
    int64_t ties, m = 0;
    uint32_t t = lv_topk_threshold(u, n, k, hist, &ties);
    for (int64_t j = 0; j < n; j++) {
        uint32_t key = u[j] & 0x7FFFFFFFu;
        int64_t keep = key > t;
        if (key == t) { keep = ties > 0; ties -= keep; }  /* rare: predictable */
        out_pos[m] = j;
        if (idx_in) { out_idx[m] = idx_in[j]; out_val[m] = x[j]; }
        m += keep;
        if (m == k) break;  /* out_* hold exactly k slots */
    }
    return m;
}

/* One pass of lv_apply; `width` is a compile-time constant at each call. With write == 0 only
 * checks; returns the first j whose result is Inf/NaN, or -1. */
static inline __attribute__((always_inline)) int64_t lv_apply_pass(
        int width, int write, void *flat, const int64_t *idx, const void *payload, int64_t n, int32_t mode) {
    uint16_t *f16 = (uint16_t *)flat; const uint16_t *p16 = (const uint16_t *)payload;
    uint32_t *f32 = (uint32_t *)flat; const uint32_t *p32 = (const uint32_t *)payload;
    const uint32_t expmask = width == 2 ? 0x7F80u : 0x7F800000u;
    for (int64_t j = 0; j < n; j++) {
        int64_t i = idx[j];
        uint32_t b = width == 2 ? f16[i] : f32[i];
        uint32_t pv = width == 2 ? p16[j] : p32[j];
        uint32_t f = mode ? pv : (width == 2 ? (uint16_t)(b + pv) : b + pv);
        if (!write && (f & expmask) == expmask) return j;
        if (write) { if (width == 2) f16[i] = (uint16_t)f; else f32[i] = f; }
    }
    return -1;
}

/* In place, one lossless BF16 (width 2) or F32 (width 4) ticket:
 *   flat[idx[j]] += payload[j]   (mode 0, ulpdiff: wrap-around add of bit patterns)
 *   flat[idx[j]]  = payload[j]   (mode 1, raw: the fine-tuned bits)
 * Every result is checked before anything is written: returns the first j whose result would be
 * Inf/NaN (flat untouched), or -1 once all are written. */
int64_t lv_apply(void *flat, const int64_t *idx, const void *payload, int64_t n, int32_t width, int32_t mode) {
    int64_t bad = width == 2 ? lv_apply_pass(2, 0, flat, idx, payload, n, mode)
                             : lv_apply_pass(4, 0, flat, idx, payload, n, mode);
    if (bad >= 0) return bad;
    return width == 2 ? lv_apply_pass(2, 1, flat, idx, payload, n, mode)
                      : lv_apply_pass(4, 1, flat, idx, payload, n, mode);
}

#define LV_BLOCK 65536
static inline float lv_f32_of(uint32_t bits, int width) {
    uint32_t u = width == 2 ? bits << 16 : bits;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint32_t lv_bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* One ticket's entries [j0, j1) of one block; `width` is a compile-time constant at each call. */
static inline __attribute__((always_inline)) int64_t lv_sum_run(
        int width, uint32_t expmask, void *restrict out_, const void *restrict base_, const int64_t *restrict idx,
        const void *restrict payload, int64_t j0, int64_t j1, int mode, int multi, int float_ok, int64_t b0,
        uint8_t *restrict cnt, float *restrict acc, int64_t *restrict shared, int64_t *ns, int64_t *err, int t) {
    uint16_t *o16 = (uint16_t *)out_; const uint16_t *b16 = (const uint16_t *)base_;
    uint32_t *o32 = (uint32_t *)out_; const uint32_t *b32 = (const uint32_t *)base_;
    const uint16_t *p16 = (const uint16_t *)payload; const uint32_t *p32 = (const uint32_t *)payload;
    const uint32_t magmask = width == 2 ? 0x7FFFu : 0x7FFFFFFFu;
    int64_t changed = 0;
    for (int64_t j = j0; j < j1; j++) {
        int64_t i = idx[j];
        uint32_t bb = width == 2 ? b16[i] : b32[i];
        uint32_t pv = width == 2 ? p16[j] : p32[j];
        uint32_t f = mode ? pv : (width == 2 ? (uint16_t)(bb + pv) : bb + pv);
        int c = multi ? (cnt[i - b0] & 127) : 1;
        if (c <= 1) {
            if ((f & expmask) == expmask) { err[0] = 1; err[1] = t; err[2] = i; return changed; }
            if (width == 2) o16[i] = (uint16_t)f; else o32[i] = f;
            changed += (f != bb) & (((f | bb) & magmask) != 0);
        } else if (c == 2 && float_ok) {
            if ((f & expmask) == expmask) { err[0] = 1; err[1] = t; err[2] = i; return changed; }
            int64_t e = i - b0;
            float d = lv_f32_of(f, width) - lv_f32_of(bb, width);
            if (!(cnt[e] & 128)) { acc[e] = d; cnt[e] |= 128; continue; }
            float r = lv_f32_of(bb, width) + (acc[e] + d);
            uint32_t rb = lv_bits_of(r);
            uint32_t nb = width == 2 ? (rb + 0x7FFFu + ((rb >> 16) & 1u)) >> 16 : rb;
            if ((nb & expmask) == expmask) { err[0] = 2; err[1] = t; err[2] = i; return changed; }
            if (width == 2) { o16[i] = (uint16_t)nb; changed += nb != bb; }
            else { o32[i] = nb; changed += lv_f32_of(nb, 4) != lv_f32_of(bb, 4); }
        } else {
            shared[(*ns)++] = j;
        }
    }
    return changed;
}

/* Output of the merge kernels. With fd < 0, out is the whole tensor. With fd >= 0 (POSIX), out is a
 * scratch window of LV_WINDOW entries: each window is written with pwrite at byte offset
 * foff + (first entry) * width of fd as soon as it is complete, while it is still in the CPU
 * cache, so the merged tensor never exists whole in memory. lock (an lv_mutex_new mutex, or NULL)
 * is held during each write: threads writing one file then wait asleep for each other instead of
 * spinning on the file's lock in the kernel. A failed write sets err[0] = 4 and err[2] = errno. */
#define LV_WINDOW 262144
#ifdef _WIN32
void *lv_mutex_new(void) { return NULL; }
void lv_mutex_free(void *m) { (void)m; }
void lv_mutex_lock(void *m) { (void)m; }
void lv_mutex_unlock(void *m) { (void)m; }
static int lv_flush(int fd, const char *buf, int64_t len, int64_t off, void *lock, int64_t *err) {
    (void)fd; (void)buf; (void)len; (void)off; (void)lock;
    err[0] = 4; err[2] = 38; /* ENOSYS: callers use the window only on POSIX systems */
    return -1;
}
#else
void *lv_mutex_new(void) {
    pthread_mutex_t *m = (pthread_mutex_t *)malloc(sizeof(pthread_mutex_t));
    if (m && pthread_mutex_init(m, NULL)) { free(m); m = NULL; }
    return m;
}
void lv_mutex_free(void *m) { if (m) { pthread_mutex_destroy((pthread_mutex_t *)m); free(m); } }
void lv_mutex_lock(void *m) { if (m) pthread_mutex_lock((pthread_mutex_t *)m); }
void lv_mutex_unlock(void *m) { if (m) pthread_mutex_unlock((pthread_mutex_t *)m); }
static int lv_flush(int fd, const char *buf, int64_t len, int64_t off, void *lock, int64_t *err) {
    int rc = 0;
    lv_mutex_lock(lock);
    while (len > 0) {
        ssize_t w = pwrite(fd, buf, (size_t)len, (off_t)off);
        if (w < 0) {
            if (errno == EINTR) continue;
            err[0] = 4; err[2] = errno; rc = -1;
            break;
        }
        buf += w; len -= w; off += w;
    }
    lv_mutex_unlock(lock);
    return rc;
}
#endif

/* After a block [.., b1) of a kernel writing through a sink: once the window holds LV_WINDOW
 * entries, or the tensor is done (b1 == n), write it out (entries w0..b1 at file offset foff +
 * w0 * width) and start the next window at b1. Returns nonzero when the write failed (err set). */
#ifndef _WIN32
/* On the C threads of lv_run_jobs (see there) a full window goes to the pool's writer thread
 * instead, and the kernel goes on in another of the thread's window buffers. */
struct lv_pool;
typedef struct { struct lv_pool *p; void *c; int64_t job; int slot; } lv_tls_t;
static __thread lv_tls_t lv_tls;
static void *lv_wq_window(const char *buf, int fd, int64_t len, int64_t off, int more);
#endif

static int lv_window_done(int fd, void **outp, int width, int64_t b1, int64_t n, int64_t *w0, int64_t foff,
                          void *lock, int64_t *err) {
    if (fd < 0 || (b1 - *w0 != LV_WINDOW && b1 != n)) return 0;
#ifndef _WIN32
    if (lv_tls.p) {
        *outp = lv_wq_window((const char *)*outp, fd, (b1 - *w0) * width, foff + *w0 * width, b1 != n);
        *w0 = b1;
        return 0;
    }
#endif
    if (lv_flush(fd, (const char *)*outp, (b1 - *w0) * width, foff + *w0 * width, lock, err)) return -1;
    *w0 = b1;
    return 0;
}

/* Where a merge kernel reads one ticket's indices from: an int64 array (lv_sum2), or the gap-coded
 * mask chunks themselves (lv_sum2g), so that the indices are never written out. In gap mode chunk c
 * holds cnt[c] entries: its first index is start[c] + g0, then i(j) = i(j-1) + g(j) + 1 (spec
 * §5.2); the caller has checked every chunk's last index against the chunk's end (lv_gaps_decode
 * with out == NULL), so the indices increase strictly over the whole tensor. i is the current
 * index (INT64_MAX once every entry was read). */
typedef struct {
    const int64_t *idx;
    const int64_t *start, *cnt; const int32_t *width; const uint8_t *const *gaps; int64_t nchunks;
    int64_t c, j, n, i; const uint8_t *g; int w;
} lv_cursor;

static void lv_cur_enter(lv_cursor *q) {  /* gap mode: the first entry of chunk c, or of the next non-empty one */
    while (q->c < q->nchunks && q->cnt[q->c] == 0) q->c++;
    if (q->c >= q->nchunks) { q->i = INT64_MAX; return; }
    q->g = q->gaps[q->c]; q->w = q->width[q->c]; q->n = q->cnt[q->c]; q->j = 0;
    q->i = q->start[q->c] + (int64_t)lv_gap_at(q->g, q->w, q->n, 0);
}

static inline __attribute__((always_inline)) void lv_cur_next(lv_cursor *q, int gapped) {
    if (!gapped) { q->j++; q->i = q->j < q->n ? q->idx[q->j] : INT64_MAX; return; }
    if (++q->j < q->n) q->i += (int64_t)lv_gap_at(q->g, q->w, q->n, q->j) + 1;
    else { q->c++; lv_cur_enter(q); }
}

static lv_cursor lv_cur_array(const int64_t *idx, int64_t n) {
    lv_cursor q;
    memset(&q, 0, sizeof q);
    q.idx = idx; q.n = n; q.i = n > 0 ? idx[0] : INT64_MAX;
    return q;
}

static lv_cursor lv_cur_gaps(int64_t nchunks, const int64_t *start, const int64_t *cnt, const int32_t *width,
                             const uint8_t *const *gaps) {
    lv_cursor q;
    memset(&q, 0, sizeof q);
    q.start = start; q.cnt = cnt; q.width = width; q.gaps = gaps; q.nchunks = nchunks;
    lv_cur_enter(&q);
    return q;
}

/* lv_sum for exactly two tickets with float_ok, without a counting pass: ticket 0 is applied
 * exactly and marks its entries; ticket 1 applies exactly where unmarked and, where marked, sums
 * the two float deltas (ticket 0's fine-tuned bits are read back from out). Same results, counts
 * and errors as lv_sum (an empty ticket 1 applies one ticket). mark: LV_BLOCK bytes of scratch,
 * all zero on entry and on return (a block's marks are its number mod 255, so no pass clears
 * them). fd, foff, lock: see LV_WINDOW. gapped: the cursors read gap-coded chunks. */
static inline __attribute__((always_inline)) int64_t lv_sum2_w(
        int width, int gapped, uint32_t expmask, void *restrict out_, const void *restrict base_, int64_t n,
        lv_cursor q0, const void *restrict p0_, int32_t m0, lv_cursor q1, const void *restrict p1_, int32_t m1,
        int64_t *err, uint8_t *restrict mark, int fd, int64_t foff, void *lock) {
    const uint16_t *b16 = (const uint16_t *)base_;
    const uint32_t *b32 = (const uint32_t *)base_;
    const uint16_t *p016 = (const uint16_t *)p0_, *p116 = (const uint16_t *)p1_;
    const uint32_t *p032 = (const uint32_t *)p0_, *p132 = (const uint32_t *)p1_;
    const uint32_t magmask = width == 2 ? 0x7FFFu : 0x7FFFFFFFu;
    int64_t changed = 0, a = 0, c = 0, w0 = 0;
    uint8_t gen = 0;
    for (int64_t b0 = 0; b0 < n; b0 += LV_BLOCK) {
        int64_t b1 = b0 + LV_BLOCK < n ? b0 + LV_BLOCK : n;
        char *ob = (char *)out_ + (fd >= 0 ? b0 - w0 : b0) * width;  /* this block's output */
        uint16_t *o16 = (uint16_t *)ob; uint32_t *o32 = (uint32_t *)ob;
        memcpy(ob, (const char *)base_ + b0 * width, (size_t)(b1 - b0) * width);
        if (++gen == 0) { memset(mark, 0, LV_BLOCK); gen = 1; }
        for (; q0.i < b1; a++, lv_cur_next(&q0, gapped)) {
            int64_t i = q0.i, e = i - b0;
            uint32_t bb = width == 2 ? b16[i] : b32[i];
            uint32_t pv = width == 2 ? p016[a] : p032[a];
            uint32_t f = m0 ? pv : (width == 2 ? (uint16_t)(bb + pv) : bb + pv);
            if ((f & expmask) == expmask) { err[0] = 1; err[1] = 0; err[2] = i; goto done; }
            if (width == 2) o16[e] = (uint16_t)f; else o32[e] = f;
            changed += (f != bb) & (((f | bb) & magmask) != 0);
            mark[e] = gen;
        }
        for (; q1.i < b1; c++, lv_cur_next(&q1, gapped)) {
            int64_t i = q1.i, e = i - b0;
            uint32_t bb = width == 2 ? b16[i] : b32[i];
            uint32_t pv = width == 2 ? p116[c] : p132[c];
            uint32_t f = m1 ? pv : (width == 2 ? (uint16_t)(bb + pv) : bb + pv);
            if ((f & expmask) == expmask) { err[0] = 1; err[1] = 1; err[2] = i; goto done; }
            if (mark[e] != gen) {
                if (width == 2) o16[e] = (uint16_t)f; else o32[e] = f;
                changed += (f != bb) & (((f | bb) & magmask) != 0);
                continue;
            }
            uint32_t f0 = width == 2 ? o16[e] : o32[e];
            changed -= (f0 != bb) & (((f0 | bb) & magmask) != 0);
            float fb = lv_f32_of(bb, width);
            float d0 = lv_f32_of(f0, width) - fb, d1 = lv_f32_of(f, width) - fb;
            uint32_t rb = lv_bits_of(fb + (d0 + d1));
            uint32_t nb = width == 2 ? (rb + 0x7FFFu + ((rb >> 16) & 1u)) >> 16 : rb;
            if ((nb & expmask) == expmask) { err[0] = 2; err[1] = 1; err[2] = i; goto done; }
            if (width == 2) { o16[e] = (uint16_t)nb; changed += nb != bb; }
            else { o32[e] = nb; changed += lv_f32_of(nb, 4) != lv_f32_of(bb, 4); }
        }
        if (lv_window_done(fd, (void **)&out_, width, b1, n, &w0, foff, lock, err)) goto done;
    }
done:
    memset(mark, 0, LV_BLOCK);
    return changed;
}

int64_t lv_sum2(void *out_, const void *base_, int64_t n, int32_t width, int32_t is_bf16,
                const int64_t *i0, const void *p0, int64_t n0, int32_t m0,
                const int64_t *i1, const void *p1, int64_t n1, int32_t m1, int64_t *err, uint8_t *mark,
                int32_t fd, int64_t foff, void *lock) {
    lv_cursor q0 = lv_cur_array(i0, n0), q1 = lv_cur_array(i1, n1);
    err[0] = 0;
    if (width == 2)
        return lv_sum2_w(2, 0, is_bf16 ? 0x7F80u : 0x7C00u, out_, base_, n, q0, p0, m0, q1, p1, m1, err, mark,
                         fd, foff, lock);
    return lv_sum2_w(4, 0, 0x7F800000u, out_, base_, n, q0, p0, m0, q1, p1, m1, err, mark, fd, foff, lock);
}

/* lv_sum2 reading each ticket's mask straight from its gap-coded chunks (see lv_cursor): ticket t
 * has nc[t] chunks with first elements start_t, entry counts cnt_t, gap widths wid_t (1, 2, 4)
 * and gap planes gaps_t; its payload is the whole tensor's, in entry order. */
int64_t lv_sum2g(void *out_, const void *base_, int64_t n, int32_t width, int32_t is_bf16,
                 int64_t nc0, const int64_t *start0, const int64_t *cnt0, const int32_t *wid0,
                 const uint8_t *const *gaps0, const void *p0, int32_t m0,
                 int64_t nc1, const int64_t *start1, const int64_t *cnt1, const int32_t *wid1,
                 const uint8_t *const *gaps1, const void *p1, int32_t m1,
                 int64_t *err, uint8_t *mark, int32_t fd, int64_t foff, void *lock) {
    lv_cursor q0 = lv_cur_gaps(nc0, start0, cnt0, wid0, gaps0), q1 = lv_cur_gaps(nc1, start1, cnt1, wid1, gaps1);
    err[0] = 0;
    if (width == 2)
        return lv_sum2_w(2, 1, is_bf16 ? 0x7F80u : 0x7C00u, out_, base_, n, q0, p0, m0, q1, p1, m1, err, mark,
                         fd, foff, lock);
    return lv_sum2_w(4, 1, 0x7F800000u, out_, base_, n, q0, p0, m0, q1, p1, m1, err, mark, fd, foff, lock);
}

/* ---- Decoding ticket chunks in C (zstd from the system's libzstd) -----------------------------
 * lv_sum_coded merges one tensor straight from the tickets' compressed chunks: checksum, zstd,
 * mask range check and value unshuffling (spec §5-§6), then lv_sum2_w, in one call that does not
 * hold Python's GIL. zstd comes from libzstd.so.1, loaded at run time; without it lv_ctx_new
 * returns NULL and callers decode with the Python codecs. The checks accept exactly what the
 * Python decoders (lotavec/format/codecs.py) accept for these codecs: one zstd frame declaring
 * and holding the expected size, nothing after it. Anything else is reported as "not decoded"
 * (err[0] = 5), and the caller decodes that tensor with the Python codecs, which raise the typed
 * error (or handle the rare stream shapes this path leaves to them). */
uint32_t lv_crc32(const uint8_t *data, int64_t n, uint32_t crc, int32_t use_clmul);
#ifndef _WIN32
#include <dlfcn.h>
typedef struct lv_zstd_dctx lv_zstd_dctx;
static struct {
    int ok;
    lv_zstd_dctx *(*create)(void);
    size_t (*destroy)(lv_zstd_dctx *);
    size_t (*decompress)(lv_zstd_dctx *, void *, size_t, const void *, size_t);
    unsigned long long (*content_size)(const void *, size_t);
    size_t (*frame_size)(const void *, size_t);
    unsigned (*is_error)(size_t);
    const char *(*error_name)(size_t);
} lv_zstd;
static pthread_once_t lv_zstd_once = PTHREAD_ONCE_INIT;

static void lv_zstd_load(void) {
    void *h = dlopen("libzstd.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) return;
    *(void **)&lv_zstd.create = dlsym(h, "ZSTD_createDCtx");
    *(void **)&lv_zstd.destroy = dlsym(h, "ZSTD_freeDCtx");
    *(void **)&lv_zstd.decompress = dlsym(h, "ZSTD_decompressDCtx");
    *(void **)&lv_zstd.content_size = dlsym(h, "ZSTD_getFrameContentSize");
    *(void **)&lv_zstd.frame_size = dlsym(h, "ZSTD_findFrameCompressedSize");
    *(void **)&lv_zstd.is_error = dlsym(h, "ZSTD_isError");
    *(void **)&lv_zstd.error_name = dlsym(h, "ZSTD_getErrorName");
    lv_zstd.ok = lv_zstd.create && lv_zstd.destroy && lv_zstd.decompress && lv_zstd.content_size
                 && lv_zstd.frame_size && lv_zstd.is_error;
}

/* Exactly one zstd frame of `len` bytes that declares and holds `expected` bytes. */
int64_t lv_zstd_frame(void *d, const uint8_t *src, int64_t len, uint8_t *dst, int64_t expected);

static int lv_unzstd(lv_zstd_dctx *d, const uint8_t *src, int64_t len, uint8_t *dst, int64_t expected) {
    if (expected < 0 || len <= 0) return -1;
    if (lv_zstd.content_size(src, (size_t)len) != (unsigned long long)expected) return -1;
    return lv_zstd_frame(d, src, len, dst, expected) ? -1 : 0;
}
#endif

/* One zstd frame for the Python codecs (lotavec/format/codecs.py), decoded by the same libzstd as
 * the merge's compiled decoders, so that a ticket is accepted or refused alike on both paths:
 * exactly one frame of `len` bytes holding `expected` bytes (its declared size was checked by the
 * caller). Returns 0, -1 when the frame is followed by other bytes, or a zstd error code (> 0,
 * its name from lv_zstd_error). dctx: from lv_dctx_new. */
void *lv_dctx_new(void) {
#ifdef _WIN32
    return NULL;
#else
    pthread_once(&lv_zstd_once, lv_zstd_load);
    return lv_zstd.ok ? (void *)lv_zstd.create() : NULL;
#endif
}

void lv_dctx_free(void *d) {
#ifndef _WIN32
    if (d) lv_zstd.destroy((lv_zstd_dctx *)d);
#else
    (void)d;
#endif
}

int64_t lv_zstd_frame(void *d, const uint8_t *src, int64_t len, uint8_t *dst, int64_t expected) {
#ifdef _WIN32
    (void)d; (void)src; (void)len; (void)dst; (void)expected;
    return -1;
#else
    size_t fs = lv_zstd.frame_size(src, (size_t)len);
    if (lv_zstd.is_error(fs)) return (int64_t)(0 - fs);
    if (fs != (size_t)len) return -1;
    size_t r = lv_zstd.decompress((lv_zstd_dctx *)d, dst, (size_t)expected, src, (size_t)len);
    if (lv_zstd.is_error(r)) return (int64_t)(0 - r);
    return r == (size_t)expected ? 0 : -2;
#endif
}

/* The name of a zstd error code returned by lv_zstd_frame. */
const char *lv_zstd_error(int64_t code) {
#ifdef _WIN32
    (void)code;
    return "unknown error";
#else
    return lv_zstd.error_name ? lv_zstd.error_name((size_t)(0 - (size_t)code)) : "unknown error";
#endif
}

typedef struct { uint8_t *p; size_t cap; } lv_buf;

#define LV_NWIN 4      /* window buffers per compute thread of lv_run_jobs */

static int lv_grow(lv_buf *b, size_t need) {
    if (need <= b->cap) return 0;
    uint8_t *p = (uint8_t *)realloc(b->p, need);
    if (!p) return -1;
    b->p = p; b->cap = need;
    return 0;
}

/* One worker thread's decoding state: the zstd context and buffers reused from tensor to tensor
 * (per ticket: gap planes, payload and the chunk table; one value scratch; the merge window). */
typedef struct {
    void *dctx;
    lv_buf gaps[2], pay[2], meta[2], vals;
    uint8_t *window, *mark;
    lv_buf delta, hist, tidx[2], tval[2], stash, seen;  /* TIES jobs of lv_run_jobs */
    uint8_t *win[LV_NWIN]; int busy[LV_NWIN];           /* lv_run_jobs: windows for its writer */
} lv_ctx;

void lv_ctx_free(void *c_) {
    lv_ctx *c = (lv_ctx *)c_;
    if (!c) return;
#ifndef _WIN32
    if (c->dctx) lv_zstd.destroy((lv_zstd_dctx *)c->dctx);
#endif
    for (int t = 0; t < 2; t++) {
        free(c->gaps[t].p); free(c->pay[t].p); free(c->meta[t].p); free(c->tidx[t].p); free(c->tval[t].p);
    }
    free(c->vals.p); free(c->window); free(c->mark);
    free(c->delta.p); free(c->hist.p); free(c->stash.p); free(c->seen.p);
    for (int k = 0; k < LV_NWIN; k++) free(c->win[k]);
    free(c);
}

/* A decoding context, or NULL where libzstd.so.1 is not available (or memory is short). */
void *lv_ctx_new(void) {
#ifdef _WIN32
    return NULL;
#else
    pthread_once(&lv_zstd_once, lv_zstd_load);
    if (!lv_zstd.ok) return NULL;
    lv_ctx *c = (lv_ctx *)calloc(1, sizeof(lv_ctx));
    if (!c) return NULL;
    c->dctx = lv_zstd.create();
    c->window = (uint8_t *)malloc((size_t)LV_WINDOW * 4);
    c->mark = (uint8_t *)calloc(LV_BLOCK, 1);
    if (!c->dctx || !c->window || !c->mark) { lv_ctx_free(c); return NULL; }
    return c;
#endif
}

/* Chunk record fields (lotavec.format.reader.TicketFile.chunk_records). */
enum { LV_R_OFF, LV_R_MASK, LV_R_VAL, LV_R_CRC, LV_R_CODEC, LV_R_START, LV_R_NNZ, LV_R_LEN, LV_R_N };

/* Decode ticket slot t of one tensor: its nrec chunks (records rec, data blob at blob) into c's
 * buffers, and the chunk table lv_cur_gaps reads (*starts, *cnts, *wids, *planes). Codecs: 0 none,
 * 1 all, 2/3/4 gaps8/16/32. Returns 0, or the failing chunk + 1 (crc, stream or range), or -1
 * out of memory. */
static int64_t lv_decode_slot(lv_ctx *c, int t, const uint8_t *blob, const int64_t *rec, int64_t nrec, int64_t nnz,
                              int32_t width, int32_t raw, uint32_t expmask, const int64_t **starts,
                              const int64_t **cnts, const int32_t **wids, const uint8_t *const **planes) {
#ifdef _WIN32
    (void)c; (void)t; (void)blob; (void)rec; (void)nrec; (void)nnz; (void)width; (void)raw; (void)expmask;
    (void)starts; (void)cnts; (void)wids; (void)planes;
    return -1;
#else
    int64_t gbytes = 0, total = 0, vmax = 0;
    for (int64_t k = 0; k < nrec; k++) {
        const int64_t *r = rec + k * LV_R_N;
        int64_t gw = r[LV_R_CODEC] >= 2 ? (int64_t)1 << (r[LV_R_CODEC] - 2) : 1;
        if (r[LV_R_NNZ] < 0 || r[LV_R_NNZ] > r[LV_R_LEN]) return k + 1;
        gbytes += gw * r[LV_R_NNZ]; total += r[LV_R_NNZ];
        if (r[LV_R_NNZ] * width > vmax) vmax = r[LV_R_NNZ] * width;
    }
    if (total != nnz) return 1;
    size_t msz = (size_t)nrec * (2 * sizeof(int64_t) + sizeof(int32_t) + sizeof(void *)) + 64;
    if (lv_grow(&c->gaps[t], (size_t)gbytes + 1) || lv_grow(&c->pay[t], (size_t)(nnz * width) + 1)
        || lv_grow(&c->meta[t], msz) || lv_grow(&c->vals, (size_t)vmax + 1)) return -1;
    int64_t *st = (int64_t *)c->meta[t].p, *cn = st + nrec;
    const uint8_t **pl = (const uint8_t **)(cn + nrec);
    int32_t *wd = (int32_t *)(pl + nrec);
    uint8_t *g = c->gaps[t].p, *pay = c->pay[t].p;
    for (int64_t k = 0; k < nrec; k++) {
        const int64_t *r = rec + k * LV_R_N;
        const uint8_t *b = blob + r[LV_R_OFF];
        int64_t m = r[LV_R_MASK], v = r[LV_R_VAL], cnt = r[LV_R_NNZ], codec = r[LV_R_CODEC];
        if (lv_crc32(b, m + v, 0, 1) != (uint32_t)r[LV_R_CRC]) return k + 1;
        int w = codec >= 2 ? 1 << (codec - 2) : 1;
        if (codec == 0 || codec == 1) {
            if (m != 0 || (codec == 0 ? cnt != 0 : cnt != r[LV_R_LEN])) return k + 1;
            memset(g, 0, (size_t)cnt);  /* "all": every gap 0; "none": no entries */
        } else if (codec <= 4) {  /* gaps; with nnz 0, one empty frame */
            if (lv_unzstd((lv_zstd_dctx *)c->dctx, b, m, g, w * cnt)) return k + 1;
            int64_t last = w == 1 ? lv_gaps_w(g, 1, cnt, 0, NULL) : w == 2 ? lv_gaps_w(g, 2, cnt, 0, NULL)
                                                                           : lv_gaps_w(g, 4, cnt, 0, NULL);
            if (last >= r[LV_R_LEN]) return k + 1;
        } else {
            return k + 1;  /* an unknown codec: the Python decoders report it */
        }
        if (cnt == 0) {
            if (v != 0) return k + 1;
        } else {
            if (lv_unzstd((lv_zstd_dctx *)c->dctx, b + m, v, c->vals.p, cnt * width)) return k + 1;
            lv_unshuffle(c->vals.p, width, cnt, raw ? 0 : 1, pay);
            if (raw) {
                for (int64_t j = 0; j < cnt; j++) {
                    uint32_t f = width == 2 ? ((const uint16_t *)pay)[j] : ((const uint32_t *)pay)[j];
                    if ((f & expmask) == expmask) return k + 1;
                }
            }
        }
        st[k] = r[LV_R_START]; cn[k] = cnt; wd[k] = w; pl[k] = g;
        g += (size_t)w * cnt; pay += (size_t)width * cnt;
    }
    *starts = st; *cnts = cn; *wids = wd; *planes = pl;
    return 0;
#endif
}

/* lv_sum2g from the tickets' compressed chunks: T (1 or 2) tickets, each given by its data blob,
 * chunk records (see lv_decode_slot), entry count and payload mode (raw 1, ulpdiff 0); the merged
 * tensor is written through fd/foff/lock with c's window. Errors as lv_sum2, plus err[0] = 5
 * (err[1] = ticket slot, err[2] = chunk): that chunk was not decoded here (nothing was written);
 * err[0] = 6: out of memory. */
static int64_t lv_sum_coded_w(void *ctx, void *window, const void *base_, int64_t n, int32_t width, int32_t is_bf16,
                              int32_t T, const uint8_t *blob0, const int64_t *rec0, int64_t nrec0, int64_t nnz0,
                              int32_t raw0, const uint8_t *blob1, const int64_t *rec1, int64_t nrec1, int64_t nnz1,
                              int32_t raw1, int64_t *err, int32_t fd, int64_t foff, void *lock);

int64_t lv_sum_coded(void *ctx, const void *base_, int64_t n, int32_t width, int32_t is_bf16, int32_t T,
                     const uint8_t *blob0, const int64_t *rec0, int64_t nrec0, int64_t nnz0, int32_t raw0,
                     const uint8_t *blob1, const int64_t *rec1, int64_t nrec1, int64_t nnz1, int32_t raw1,
                     int64_t *err, int32_t fd, int64_t foff, void *lock) {
    return lv_sum_coded_w(ctx, ((lv_ctx *)ctx)->window, base_, n, width, is_bf16, T, blob0, rec0, nrec0, nnz0, raw0,
                          blob1, rec1, nrec1, nnz1, raw1, err, fd, foff, lock);
}

/* lv_sum_coded writing its output windows from `window`. */
static int64_t lv_sum_coded_w(void *ctx, void *window, const void *base_, int64_t n, int32_t width, int32_t is_bf16,
                              int32_t T, const uint8_t *blob0, const int64_t *rec0, int64_t nrec0, int64_t nnz0,
                              int32_t raw0, const uint8_t *blob1, const int64_t *rec1, int64_t nrec1, int64_t nnz1,
                              int32_t raw1, int64_t *err, int32_t fd, int64_t foff, void *lock) {
    lv_ctx *c = (lv_ctx *)ctx;
    uint32_t expmask = width == 2 ? (is_bf16 ? 0x7F80u : 0x7C00u) : 0x7F800000u;
    const int64_t *st[2] = {NULL, NULL}, *cn[2] = {NULL, NULL};
    const int32_t *wd[2] = {NULL, NULL};
    const uint8_t *const *pl[2] = {NULL, NULL};
    const uint8_t *blob[2] = {blob0, blob1};
    const int64_t *rec[2] = {rec0, rec1};
    int64_t nrec[2] = {nrec0, nrec1}, nnz[2] = {nnz0, nnz1};
    int32_t raw[2] = {raw0, raw1};
    err[0] = 0;
    for (int t = 0; t < T; t++) {
        int64_t bad = lv_decode_slot(c, t, blob[t], rec[t], nrec[t], nnz[t], width, raw[t], expmask,
                                     &st[t], &cn[t], &wd[t], &pl[t]);
        if (bad) { err[0] = bad < 0 ? 6 : 5; err[1] = t; err[2] = bad - 1; return 0; }
    }
    lv_cursor q0 = lv_cur_gaps(nrec0, st[0], cn[0], wd[0], pl[0]);
    lv_cursor q1 = lv_cur_gaps(T == 2 ? nrec1 : 0, st[1], cn[1], wd[1], pl[1]);
    const void *p1 = T == 2 ? (const void *)c->pay[1].p : (const void *)c->pay[0].p;
    if (width == 2)
        return lv_sum2_w(2, 1, expmask, window, base_, n, q0, c->pay[0].p, raw0, q1, p1, raw1, err, c->mark,
                         fd, foff, lock);
    return lv_sum2_w(4, 1, expmask, window, base_, n, q0, c->pay[0].p, raw0, q1, p1, raw1, err, c->mark,
                     fd, foff, lock);
}

/* Decode one ticket's tensor (chunk records as for lv_sum_coded) into c's first slot, for the
 * kernels that read gap-coded chunks (lv_delta_hist_g, lv_topk_g): out[0..4] = the addresses of
 * the chunk starts, counts, gap widths, gap plane pointers and the payload, valid until c's next
 * decode. Returns 0, the failing chunk + 1 (left to the Python codecs), or -1 out of memory. */
int64_t lv_ctx_decode(void *ctx, const uint8_t *blob, const int64_t *rec, int64_t nrec, int64_t nnz, int32_t width,
                      int32_t is_bf16, int32_t raw, int64_t *out) {
    lv_ctx *c = (lv_ctx *)ctx;
    uint32_t expmask = width == 2 ? (is_bf16 ? 0x7F80u : 0x7C00u) : 0x7F800000u;
    const int64_t *st = NULL, *cn = NULL;
    const int32_t *wd = NULL;
    const uint8_t *const *pl = NULL;
    int64_t bad = lv_decode_slot(c, 0, blob, rec, nrec, nnz, width, raw, expmask, &st, &cn, &wd, &pl);
    if (bad) return bad;
    out[0] = (int64_t)(intptr_t)st; out[1] = (int64_t)(intptr_t)cn; out[2] = (int64_t)(intptr_t)wd;
    out[3] = (int64_t)(intptr_t)pl; out[4] = (int64_t)(intptr_t)c->pay[0].p;
    return 0;
}

/* The flat indices (int64) of a mask given as gap-coded chunks (see lv_cursor), in order. */
void lv_gaps_indices(int64_t nchunks, const int64_t *start, const int64_t *cnt, const int32_t *width,
                     const uint8_t *const *gaps, int64_t *out) {
    for (int64_t k = 0; k < nchunks; k++) {
        lv_gaps_decode(gaps[k], width[k], cnt[k], start[k], out);
        out += cnt[k];
    }
}

/* The exact `sum` of T lossless tickets into one tensor, fused and in cache-sized blocks (the
 * numpy twin is lotavec.merge.engine._exact_sum_values):
 *   out = base, then per entry: one ticket touches it -> the fine-tuned bits (ulpdiff: base + diff,
 *   raw: the bits); two tickets -> round(f32(base) + (d1 + d2)) with di = f32(fine-tuned_i) - f32(base)
 *   when `float_ok` (BF16, F32; the sum of two terms does not depend on their order, so this equals
 *   the float route of merge_tensor); otherwise (three or more tickets, or F16) the entry is left at
 *   the base and reported in shared[t][...] (positions j in ticket t), for the caller's float route.
 * width: 2 (BF16/F16 bits) or 4 (F32 bits); is_bf16 selects the exponent mask.
 * err[0] = 0 on success, 1: a ticket's fine-tuned value is Inf/NaN, 2: a two-ticket sum overflows,
 * 3: more than 64 tickets; then err[1] = ticket, err[2] = flat index. Returns the changed entries.
 * cnt, acc: scratch of LV_BLOCK (65536) bytes and floats. */
int64_t lv_sum(void *out_, const void *base_, int64_t n, int32_t width, int32_t is_bf16, int32_t float_ok,
               int32_t T, const int64_t *const *idx, const void *const *payload, const int64_t *nnz,
               const int32_t *modes, int64_t *const *shared, int64_t *nshared, int64_t *err,
               uint8_t *restrict cnt, float *restrict acc) {
    int64_t pos[64], end[64];
    int64_t changed = 0;
    const uint32_t expmask = width == 2 ? (is_bf16 ? 0x7F80u : 0x7C00u) : 0x7F800000u;
    err[0] = 0;
    if (T > 64) { err[0] = 3; return 0; }
    for (int t = 0; t < T; t++) { pos[t] = 0; nshared[t] = 0; }
    for (int64_t b0 = 0; b0 < n; b0 += LV_BLOCK) {
        int64_t b1 = b0 + LV_BLOCK < n ? b0 + LV_BLOCK : n;
        memcpy((char *)out_ + b0 * width, (const char *)base_ + b0 * width, (size_t)(b1 - b0) * width);
        for (int t = 0; t < T; t++) {  /* entries of this block: binary search in the sorted indices */
            const int64_t *ix = idx[t];
            int64_t lo = pos[t], hi = nnz[t];
            while (lo < hi) { int64_t mid = lo + (hi - lo) / 2; if (ix[mid] < b1) lo = mid + 1; else hi = mid; }
            end[t] = lo;
        }
        if (T > 1) {
            memset(cnt, 0, (size_t)(b1 - b0));
            for (int t = 0; t < T; t++) {
                const int64_t *ix = idx[t];
                for (int64_t j = pos[t]; j < end[t]; j++) { uint8_t *c = cnt + (ix[j] - b0); *c += (*c < 127); }
            }
        }
        for (int t = 0; t < T; t++) {
            int64_t r;
            if (width == 2)
                r = lv_sum_run(2, expmask, out_, base_, idx[t], payload[t], pos[t], end[t], modes[t], T > 1, float_ok,
                               b0, cnt, acc, shared[t], &nshared[t], err, t);
            else
                r = lv_sum_run(4, expmask, out_, base_, idx[t], payload[t], pos[t], end[t], modes[t], T > 1, float_ok,
                               b0, cnt, acc, shared[t], &nshared[t], err, t);
            changed += r;
            if (err[0]) return changed;
            pos[t] = end[t];
        }
    }
    return changed;
}

/* out[j] = src[pos[j]] for j < n, elements of `width` bytes (1, 2, 4 or 8): the gather of the
 * sampled base fingerprint (spec §8), run without holding Python's GIL (ctypes releases it), since
 * on a freshly mapped base it faults the tensor's pages in. */
void lv_gather(const void *src, int32_t width, const int64_t *pos, int64_t n, void *out) {
    if (width == 1) { for (int64_t j = 0; j < n; j++) ((uint8_t *)out)[j] = ((const uint8_t *)src)[pos[j]]; }
    else if (width == 2) { for (int64_t j = 0; j < n; j++) ((uint16_t *)out)[j] = ((const uint16_t *)src)[pos[j]]; }
    else if (width == 4) { for (int64_t j = 0; j < n; j++) ((uint32_t *)out)[j] = ((const uint32_t *)src)[pos[j]]; }
    else { for (int64_t j = 0; j < n; j++) ((uint64_t *)out)[j] = ((const uint64_t *)src)[pos[j]]; }
}

/* Float32 deltas of one lossless ticket: out[j] = f32(fine-tuned_j) - f32(base[idx[j]]), where
 * fine-tuned_j = base + payload (mode 0, ulpdiff) or payload (mode 1, raw); width 2 = BF16 bits,
 * 4 = F32 bits (F16 is left to numpy). Returns -1, or the first j whose fine-tuned value is Inf/NaN. */
int64_t lv_delta(const void *base_, const int64_t *idx, const void *payload, int64_t n, int32_t width,
                 int32_t mode, float *out) {
    if (width == 2) {
        const uint16_t *b = (const uint16_t *)base_, *p = (const uint16_t *)payload;
        for (int64_t j = 0; j < n; j++) {
            uint32_t bb = b[idx[j]];
            uint32_t f = mode ? p[j] : (uint16_t)(bb + p[j]);
            if ((f & 0x7F80u) == 0x7F80u) return j;
            out[j] = lv_f32_of(f, 2) - lv_f32_of(bb, 2);
        }
    } else {
        const uint32_t *b = (const uint32_t *)base_, *p = (const uint32_t *)payload;
        for (int64_t j = 0; j < n; j++) {
            uint32_t bb = b[idx[j]];
            uint32_t f = mode ? p[j] : bb + p[j];
            if ((f & 0x7F800000u) == 0x7F800000u) return j;
            out[j] = lv_f32_of(f, 4) - lv_f32_of(bb, 4);
        }
    }
    return -1;
}

/* lv_delta over one chunk of a gap-coded mask (see lv_cursor: its indices are start - 1 + the
 * running sum of g(j) + 1), adding each |delta|'s high 16 bits to hist (lv_topk_abs's first
 * histogram). Returns -1, or the flat index of the first entry whose fine-tuned value is Inf/NaN. */
static inline __attribute__((always_inline)) int64_t lv_dh_chunk(
        int width, int w, const void *restrict base_, int64_t start, const uint8_t *restrict g, int64_t cnt,
        const void *restrict p_, int32_t mode, float *restrict out, uint32_t *restrict hist) {
    const uint16_t *b16 = (const uint16_t *)base_, *p16 = (const uint16_t *)p_;
    const uint32_t *b32 = (const uint32_t *)base_, *p32 = (const uint32_t *)p_;
    const uint32_t expmask = width == 2 ? 0x7F80u : 0x7F800000u;
    int64_t i = start - 1;
    for (int64_t j = 0; j < cnt; j++) {
        i += (int64_t)lv_gap_at(g, w, cnt, j) + 1;
        uint32_t bb = width == 2 ? b16[i] : b32[i];
        uint32_t pv = width == 2 ? p16[j] : p32[j];
        uint32_t f = mode ? pv : (width == 2 ? (uint16_t)(bb + pv) : bb + pv);
        if ((f & expmask) == expmask) return i;
        float d = lv_f32_of(f, width) - lv_f32_of(bb, width);
        out[j] = d;
        hist[(lv_bits_of(d) & 0x7FFFFFFFu) >> 16]++;
    }
    return -1;
}

/* lv_delta for a ticket whose mask is gap-coded (nchunks chunks: first elements start, entry
 * counts cnt, gap widths wid (1, 2, 4), gap planes gaps; the caller has checked every chunk's
 * last index against its end), fused with the first histogram of lv_topk_abs: out[j] = the
 * float32 delta of entry j (entries in order), hist (65536 uint32, zeroed here) counts the high
 * 16 bits of |out[j]|. BF16 (width 2) or F32 (width 4) bits. Returns -1, or the flat index of the
 * first entry whose fine-tuned value is Inf/NaN. */
int64_t lv_delta_hist_g(const void *base_, int64_t nchunks, const int64_t *start, const int64_t *cnt,
                        const int32_t *wid, const uint8_t *const *gaps, const void *payload, int32_t width,
                        int32_t mode, float *out, uint32_t *hist) {
    memset(hist, 0, 65536 * sizeof(uint32_t));
    int64_t a = 0, bad = -1;
    for (int64_t c = 0; c < nchunks && bad < 0; a += cnt[c], c++) {
        if (cnt[c] == 0) continue;
        const char *p = (const char *)payload + a * width;
        float *o = out + a;
        int w = wid[c];
#define LV_DH(W, G) bad = lv_dh_chunk(W, G, base_, start[c], gaps[c], cnt[c], p, mode, o, hist)
        if (width == 2) { if (w == 1) LV_DH(2, 1); else if (w == 2) LV_DH(2, 2); else LV_DH(2, 4); }
        else { if (w == 1) LV_DH(4, 1); else if (w == 2) LV_DH(4, 2); else LV_DH(4, 4); }
#undef LV_DH
    }
    return bad;
}

/* lv_topk_g's emitting pass over one chunk (gap width w and index width ix32 compile-time
 * constants); returns m. */
static inline __attribute__((always_inline)) int64_t lv_emit_chunk(
        int w, int ix32, const uint32_t *restrict u, const float *restrict x, int64_t start,
        const uint8_t *restrict g, int64_t cnt, uint32_t t, int64_t *ties, int64_t m, int64_t k,
        void *restrict out_idx_, float *restrict out_val) {
    int64_t *o64 = (int64_t *)out_idx_; int32_t *o32 = (int32_t *)out_idx_;
    int64_t i = start - 1;
    for (int64_t j = 0; j < cnt; j++) {
        i += (int64_t)lv_gap_at(g, w, cnt, j) + 1;
        uint32_t key = u[j] & 0x7FFFFFFFu;
        int64_t keep = key > t;
        if (key == t) { keep = *ties > 0; *ties -= keep; }  /* rare: predictable */
        if (ix32) o32[m] = (int32_t)i; else o64[m] = i;
        out_val[m] = x[j];
        m += keep;
        if (m == k) break;  /* out_* hold exactly k slots */
    }
    return m;
}

/* lv_topk_abs after lv_delta_hist_g, with the kept entries' flat indices read from the same
 * gap-coded mask instead of an index array: hist holds the first histogram of x already. The
 * same selection (k largest |x|, ties at the threshold from the lowest positions), written to
 * out_idx (int64, or int32 with idx32: tensors of fewer than 2^31 entries) and out_val (k slots
 * each); 0 < k < n. Returns the count written (k). */
int64_t lv_topk_g(const float *x, int64_t n, int64_t k, uint32_t *hist, int64_t nchunks, const int64_t *start,
                  const int64_t *cnt, const int32_t *wid, const uint8_t *const *gaps, void *out_idx,
                  float *out_val, int32_t idx32) {
    const uint32_t *u = (const uint32_t *)x;
    int64_t ties, m = 0, a = 0;
    uint32_t t = lv_topk_threshold(u, n, k, hist, &ties);
    for (int64_t c = 0; c < nchunks && m < k; a += cnt[c], c++) {
        if (cnt[c] == 0) continue;
        int w = wid[c];
#define LV_EM(W, I) m = lv_emit_chunk(W, I, u + a, x + a, start[c], gaps[c], cnt[c], t, &ties, m, k, out_idx, out_val)
        if (idx32) { if (w == 1) LV_EM(1, 1); else if (w == 2) LV_EM(2, 1); else LV_EM(4, 1); }
        else { if (w == 1) LV_EM(1, 0); else if (w == 2) LV_EM(2, 0); else LV_EM(4, 0); }
#undef LV_EM
    }
    return m;
}

/* Block of lv_consensus: its scratch (13 bytes per element) stays in the L2 cache. */
#define LV_CBLOCK 16384

static inline float lv_sign(float x) { return (float)((x > 0.0f) - (x < 0.0f)); }

/* TIES-style consensus of T prepared (trimmed / DARE'd) float32 deltas into one tensor, in
 * cache-sized blocks; the numpy twin is lotavec.merge.methods._consensus + the engine's _put_sum:
 *   votes  = sum_i (total ? v_i : sign(v_i)),  v_i = mergekit ? x_i * w_i : x_i   (ticket order)
 *   s      = votes >= 0 ? +1 : -1;  M_i = sign(v_i) == s
 *   mixed  = sum_{i: M_i} x_i * w_i;  div = sum_{i: M_i} (peft ? 1 : w_i)
 *   r      = peft ? mixed / max(div, 1) : (normalize ? mixed / (div == 0 ? 1 : div) : mixed)
 *   r     *= lam (when apply_lam);  entries with r == 0 stay at the base
 *   out    = round(f32(base) + r)  (BF16: nearest-even; F32: as is)
 * out is filled from base block by block (the copy is part of the pass).
 * err[0] = 2 and err[2] = flat index when a result is Inf/NaN. Returns the changed entries.
 * Scratch: votes, mixed, div (LV_BLOCK floats each), seen (LV_BLOCK bytes, all zero on entry;
 * zero again on a successful return). fd, foff, lock: see LV_WINDOW. */
int64_t lv_consensus(void *out_, const void *base_, int64_t n, int32_t width, int32_t T,
                     const int64_t *const *idx, const float *const *val, const int64_t *nnz, const float *w,
                     int32_t peft, int32_t total, int32_t normalize, float lam, int32_t apply_lam,
                     int64_t *err, float *votes, float *mixed, float *div, uint8_t *seen, int32_t fd, int64_t foff,
                     void *lock) {
    int64_t pos[64], end[64], changed = 0, w0 = 0;
    const uint32_t expmask = width == 2 ? 0x7F80u : 0x7F800000u;
    const uint16_t *b16 = (const uint16_t *)base_;
    const uint32_t *b32 = (const uint32_t *)base_;
    err[0] = 0;
    if (T > 64) { err[0] = 3; return 0; }
    for (int t = 0; t < T; t++) pos[t] = 0;
    for (int64_t b0 = 0; b0 < n; b0 += LV_CBLOCK) {
        int64_t b1 = b0 + LV_CBLOCK < n ? b0 + LV_CBLOCK : n, len = b1 - b0;
        char *ob = (char *)out_ + (fd >= 0 ? b0 - w0 : b0) * width;  /* this block's output */
        uint16_t *o16 = (uint16_t *)ob; uint32_t *o32 = (uint32_t *)ob;
        memcpy(ob, (const char *)base_ + b0 * width, (size_t)len * width);
        int any = 0;
        for (int t = 0; t < T; t++) {
            const int64_t *ix = idx[t];
            int64_t lo = pos[t], hi = nnz[t];
            while (lo < hi) { int64_t mid = lo + (hi - lo) / 2; if (ix[mid] < b1) lo = mid + 1; else hi = mid; }
            end[t] = lo;
            any |= end[t] > pos[t];
        }
        if (!any) goto flush;
        /* Scratch entries are initialised on first touch and `seen` is cleared as results are
         * written, so no pass ever scans or clears the whole block. */
        for (int t = 0; t < T; t++) {
            const int64_t *ix = idx[t]; const float *x = val[t]; float wt = w[t];
            for (int64_t j = pos[t]; j < end[t]; j++) {
                int64_t e = ix[j] - b0;
                float v = peft ? x[j] : x[j] * wt;
                if (!seen[e]) { seen[e] = 1; votes[e] = 0.0f; mixed[e] = 0.0f; div[e] = 0.0f; }
                votes[e] += total ? v : lv_sign(v);
            }
        }
        for (int t = 0; t < T; t++) {
            const int64_t *ix = idx[t]; const float *x = val[t]; float wt = w[t];
            for (int64_t j = pos[t]; j < end[t]; j++) {
                int64_t e = ix[j] - b0;
                float v = peft ? x[j] : x[j] * wt;
                int m = votes[e] >= 0.0f ? v > 0.0f : v < 0.0f;
                if (m) { mixed[e] += x[j] * wt; div[e] += peft ? 1.0f : wt; }
            }
        }
        for (int t = 0; t < T; t++) {
            const int64_t *ix = idx[t];
            for (int64_t j = pos[t]; j < end[t]; j++) {
                int64_t e = ix[j] - b0;
                if (!seen[e]) continue;
                seen[e] = 0;
                float r;
                if (peft) r = mixed[e] / (div[e] > 1.0f ? div[e] : 1.0f);
                else if (normalize) r = mixed[e] / (div[e] == 0.0f ? 1.0f : div[e]);
                else r = mixed[e];
                if (apply_lam) r = r * lam;
                if (r == 0.0f) continue;
                int64_t i = b0 + e;
                uint32_t bb = width == 2 ? b16[i] : b32[i];
                uint32_t rb = lv_bits_of(lv_f32_of(bb, width) + r);
                uint32_t nb = width == 2 ? (rb + 0x7FFFu + ((rb >> 16) & 1u)) >> 16 : rb;
                if ((nb & expmask) == expmask) { err[0] = 2; err[2] = i; return changed; }
                if (width == 2) { o16[e] = (uint16_t)nb; changed += nb != bb; }
                else { o32[e] = nb; changed += lv_f32_of(nb, 4) != lv_f32_of(bb, 4); }
            }
            pos[t] = end[t];
        }
    flush:
        if (lv_window_done(fd, (void **)&out_, width, b1, n, &w0, foff, lock, err)) return changed;
    }
    return changed;
}

/* One consensus result onto the base: r = the disjoint mean (see lv_consensus), written when it
 * is not zero; returns 1 when written and changed, 0 when not changed, -1 on overflow. */
static inline __attribute__((always_inline)) int lv_cput(
        int width, uint32_t expmask, char *ob, int64_t e, uint32_t bb, float mixed, float div, int peft,
        int normalize, float lam, int apply_lam) {
    float r;  /* x / 1 == x exactly: the common divisor 1 (one agreeing ticket of weight 1) skips the division */
    if (peft) r = div > 1.0f ? mixed / div : mixed;
    else if (normalize) r = (div == 0.0f || div == 1.0f) ? mixed : mixed / div;
    else r = mixed;
    if (apply_lam) r = r * lam;
    if (r == 0.0f) return 0;
    uint32_t rb = lv_bits_of(lv_f32_of(bb, width) + r);
    uint32_t nb = width == 2 ? (rb + 0x7FFFu + ((rb >> 16) & 1u)) >> 16 : rb;
    if ((nb & expmask) == expmask) return -1;
    if (width == 2) { ((uint16_t *)ob)[e] = (uint16_t)nb; return nb != bb; }
    ((uint32_t *)ob)[e] = nb;
    return lv_f32_of(nb, 4) != lv_f32_of(bb, 4);
}

/* 1 when v agrees with the elected sign (votes >= 0: positive; else negative), without a branch. */
static inline int lv_agrees(float votes, float v) {
    int pos = votes >= 0.0f;
    return (pos & (v > 0.0f)) | ((1 - pos) & (v < 0.0f));
}
/* x when keep, else +0.0f, without a branch. */
static inline float lv_keep(int keep, float x) {
    uint32_t u = lv_bits_of(x) & (0u - (uint32_t)keep);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Adds a ticket's value y (weighted v) to the disjoint mean when it agrees with the elected sign. */
static inline __attribute__((always_inline)) void lv_cmix(float votes, float v, float y, float w, int peft,
                                                          float *mixed, float *div) {
    int m = lv_agrees(votes, v);
    *mixed += lv_keep(m, y * w);
    *div += lv_keep(m, peft ? 1.0f : w);
}

/* lv_consensus for exactly two tickets: the same float32 operations in the same order per entry,
 * in three passes over the entries instead of six. Ticket 0's values wait in `stash` (seen = 1);
 * ticket 1's entries finish the entries both tickets have and their own; a last pass over
 * ticket 0 finishes the rest. stash: LV_CBLOCK floats; seen: LV_CBLOCK bytes, zero on entry and
 * on a successful return. An overflow is reported at one of the overflowing entries (err[2]). */
static inline __attribute__((always_inline)) int64_t lv_consensus2_w(
        int width, int ix32, void *out_, const void *base_, int64_t n,
        const void *restrict i0_, const float *restrict x0, int64_t n0,
        const void *restrict i1_, const float *restrict x1, int64_t n1, float w0, float w1,
        int32_t peft, int32_t total, int32_t normalize, float lam, int32_t apply_lam,
        int64_t *err, float *restrict stash, uint8_t *restrict seen, int32_t fd, int64_t foff, void *lock) {
    const uint32_t expmask = width == 2 ? 0x7F80u : 0x7F800000u;
    const uint16_t *b16 = (const uint16_t *)base_;
    const uint32_t *b32 = (const uint32_t *)base_;
    const int64_t *i0l = (const int64_t *)i0_, *i1l = (const int64_t *)i1_;
    const int32_t *i0s = (const int32_t *)i0_, *i1s = (const int32_t *)i1_;
#define LV_I0(j) (ix32 ? (int64_t)i0s[j] : i0l[j])
#define LV_I1(j) (ix32 ? (int64_t)i1s[j] : i1l[j])
    int64_t changed = 0, w0i = 0, a = 0, c = 0;
    for (int64_t b0 = 0; b0 < n; b0 += LV_CBLOCK) {
        int64_t b1 = b0 + LV_CBLOCK < n ? b0 + LV_CBLOCK : n;
        char *ob = (char *)out_ + (fd >= 0 ? b0 - w0i : b0) * width;
        memcpy(ob, (const char *)base_ + b0 * width, (size_t)(b1 - b0) * width);
        int64_t a0 = a;
        for (; a < n0 && LV_I0(a) < b1; a++) { int64_t e = LV_I0(a) - b0; stash[e] = x0[a]; seen[e] = 1; }
        for (; c < n1 && LV_I1(c) < b1; c++) {
            int64_t i = LV_I1(c), e = i - b0;
            float y1 = x1[c], v1 = peft ? y1 : y1 * w1, votes = 0.0f, mixed = 0.0f, div = 0.0f;
            if (seen[e]) {
                float y0 = stash[e], v0 = peft ? y0 : y0 * w0;
                seen[e] = 0;
                votes += total ? v0 : lv_sign(v0);
                votes += total ? v1 : lv_sign(v1);
                lv_cmix(votes, v0, y0, w0, peft, &mixed, &div);
            } else {
                votes += total ? v1 : lv_sign(v1);
            }
            lv_cmix(votes, v1, y1, w1, peft, &mixed, &div);
            uint32_t bb = width == 2 ? b16[i] : b32[i];
            int r = lv_cput(width, expmask, ob, e, bb, mixed, div, peft, normalize, lam, apply_lam);
            if (r < 0) { err[0] = 2; err[2] = i; goto fail; }
            changed += r;
        }
        for (int64_t j = a0; j < a; j++) {  /* ticket 0's entries ticket 1 lacks */
            int64_t i = LV_I0(j), e = i - b0;
            if (!seen[e]) continue;
            seen[e] = 0;
            float y0 = x0[j], v0 = peft ? y0 : y0 * w0, votes = 0.0f, mixed = 0.0f, div = 0.0f;
            votes += total ? v0 : lv_sign(v0);
            lv_cmix(votes, v0, y0, w0, peft, &mixed, &div);
            uint32_t bb = width == 2 ? b16[i] : b32[i];
            int r = lv_cput(width, expmask, ob, e, bb, mixed, div, peft, normalize, lam, apply_lam);
            if (r < 0) { err[0] = 2; err[2] = i; goto fail; }
            changed += r;
        }
        if (lv_window_done(fd, (void **)&out_, width, b1, n, &w0i, foff, lock, err)) return changed;
        continue;
    fail:
        memset(seen, 0, LV_CBLOCK);
        return changed;
    }
    return changed;
#undef LV_I0
#undef LV_I1
}

int64_t lv_consensus2(void *out_, const void *base_, int64_t n, int32_t width,
                      const void *i0, const float *x0, int64_t n0, const void *i1, const float *x1, int64_t n1,
                      float w0, float w1, int32_t peft, int32_t total, int32_t normalize, float lam, int32_t apply_lam,
                      int64_t *err, float *stash, uint8_t *seen, int32_t fd, int64_t foff, void *lock, int32_t idx32) {
    err[0] = 0;
    /* The rule's flags, the value width and the index width (idx32: int32 indices, else int64)
     * as compile-time constants: each combination gets its own loop (the loops keep fewer values
     * in registers and test no flag per entry). */
    int rule = (idx32 != 0) << 5 | (width == 2) << 4 | (peft != 0) << 3 | (total != 0) << 2 | (normalize != 0) << 1 |
               (apply_lam != 0);
#define LV_C2(R) case R: return lv_consensus2_w((R) & 16 ? 2 : 4, ((R) >> 5) & 1, out_, base_, n, i0, x0, n0, i1, x1, \
        n1, w0, w1, ((R) >> 3) & 1, ((R) >> 2) & 1, ((R) >> 1) & 1, lam, (R) & 1, err, stash, seen, fd, foff, lock);
#define LV_C2x4(R) LV_C2(R) LV_C2(R + 1) LV_C2(R + 2) LV_C2(R + 3)
    switch (rule) {
        LV_C2x4(0) LV_C2x4(4) LV_C2x4(8) LV_C2x4(12) LV_C2x4(16) LV_C2x4(20) LV_C2x4(24) LV_C2x4(28)
        LV_C2x4(32) LV_C2x4(36) LV_C2x4(40) LV_C2x4(44) LV_C2x4(48) LV_C2x4(52) LV_C2x4(56) LV_C2x4(60)
    }
#undef LV_C2x4
#undef LV_C2
    return 0;  /* not reached */
}

/* CRC-32 (the zlib / ISO-HDLC polynomial, reflected 0xEDB88320) of the ticket format's chunk
 * checksums (spec §6), equal to zlib.crc32(data, crc). Where the CPU has carry-less multiply
 * (x86 PCLMULQDQ), the bulk is folded 64 bytes at a time (the method of Gopal et al., "Fast CRC
 * Computation for Generic Polynomials Using PCLMULQDQ Instruction", Intel 2009: four 128-bit
 * lanes folded by x^512, then by x^128, reduced to 32 bits by Barrett reduction); the rest, and
 * other CPUs, use a byte table. */
static uint32_t lv_crc_table[256];
static int lv_crc_ready = 0;

static void lv_crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
        lv_crc_table[i] = c;
    }
    lv_crc_ready = 1;
}

/* state: the running register (not inverted by this function) */
static uint32_t lv_crc_bytes(uint32_t state, const uint8_t *p, int64_t n) {
    for (int64_t i = 0; i < n; i++) state = lv_crc_table[(state ^ p[i]) & 0xFFu] ^ (state >> 8);
    return state;
}

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define LV_HAVE_CLMUL 1
/* Folds n bytes (n >= 64, a multiple of 16) into the register; constants are x^k mod P,
 * bit-reflected, for k = 4*128+32 and 4*128-32 (fold by four lanes), 128+32 and 128-32 (fold
 * by one lane), 64 (the last 64 bits), and the Barrett constants mu = x^64 / P and P itself. */
/* Folds the 128 bits x forward by the distance whose constants k holds (its low half times k's
 * low constant, its high half times the high one) and adds the next 128 bits. */
__attribute__((target("pclmul,sse4.1")))
static inline __m128i lv_fold(__m128i x, __m128i k, __m128i next) {
    return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x11), _mm_clmulepi64_si128(x, k, 0x00)), next);
}

__attribute__((target("pclmul,sse4.1")))
static uint32_t lv_crc_clmul(uint32_t state, const uint8_t *p, int64_t n) {
    const __m128i k1k2 = _mm_set_epi64x(0x1c6e41596LL, 0x154442bd4LL);
    const __m128i k3k4 = _mm_set_epi64x(0x0ccaa009eLL, 0x1751997d0LL);
    const __m128i k5 = _mm_set_epi64x(0, 0x163cd6124LL);
    const __m128i poly = _mm_set_epi64x(0x1f7011641LL, 0x1db710641LL);
    const __m128i mask32 = _mm_set_epi32(0, 0, 0, -1);
    __m128i x1 = _mm_loadu_si128((const __m128i *)(p + 0));
    __m128i x2 = _mm_loadu_si128((const __m128i *)(p + 16));
    __m128i x3 = _mm_loadu_si128((const __m128i *)(p + 32));
    __m128i x4 = _mm_loadu_si128((const __m128i *)(p + 48));
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)state));
    p += 64; n -= 64;
    while (n >= 64) {
        x1 = lv_fold(x1, k1k2, _mm_loadu_si128((const __m128i *)(p + 0)));
        x2 = lv_fold(x2, k1k2, _mm_loadu_si128((const __m128i *)(p + 16)));
        x3 = lv_fold(x3, k1k2, _mm_loadu_si128((const __m128i *)(p + 32)));
        x4 = lv_fold(x4, k1k2, _mm_loadu_si128((const __m128i *)(p + 48)));
        p += 64; n -= 64;
    }
    /* four lanes into one */
    x1 = lv_fold(lv_fold(lv_fold(x1, k3k4, x2), k3k4, x3), k3k4, x4);
    while (n >= 16) {
        x1 = lv_fold(x1, k3k4, _mm_loadu_si128((const __m128i *)p));
        p += 16; n -= 16;
    }
    /* 128 bits to 64, then to 32 with k5 */
    x1 = _mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x10), _mm_srli_si128(x1, 8));
    x1 = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x1, mask32), k5, 0x00), _mm_srli_si128(x1, 4));
    /* Barrett reduction */
    __m128i t = _mm_clmulepi64_si128(_mm_and_si128(x1, mask32), poly, 0x10);
    t = _mm_clmulepi64_si128(_mm_and_si128(t, mask32), poly, 0x00);
    x1 = _mm_xor_si128(x1, t);
    return (uint32_t)_mm_extract_epi32(x1, 1);
}
#endif

/* zlib.crc32(data[0:n], crc): the checksum continued from crc (0 to start). use_clmul: 1 to use
 * carry-less multiply where the CPU has it (the default), 0 for the table (tests compare both). */
uint32_t lv_crc32(const uint8_t *data, int64_t n, uint32_t crc, int32_t use_clmul) {
    if (!lv_crc_ready) lv_crc_init();  /* idempotent: a race only fills the table twice */
    uint32_t state = ~crc;
#ifdef LV_HAVE_CLMUL
    if (use_clmul && n >= 64 && __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1")) {
        int64_t bulk = n & ~(int64_t)15;
        state = lv_crc_clmul(state, data, bulk);
        data += bulk; n -= bulk;
    }
#else
    (void)use_clmul;
#endif
    return ~lv_crc_bytes(state, data, n);
}

/* Map the pages of [addr, addr + len) of a file mapping in one call (Linux MADV_POPULATE_READ,
 * 5.14+) instead of one page fault per 16 pages as they are first read: cheaper, and done before
 * the caller takes a lock rather than inside its write. Returns 0, or an errno (nothing done:
 * the pages fault in as usual). */
#if defined(__linux__)
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
int32_t lv_populate(const void *addr, int64_t len) {
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), a = (uintptr_t)addr & ~(page - 1);
    if (len <= 0) return 0;
    return madvise((void *)a, (size_t)((uintptr_t)addr + (uintptr_t)len - a), MADV_POPULATE_READ) ? errno : 0;
}
#else
int32_t lv_populate(const void *addr, int64_t len) { (void)addr; (void)len; return 38; /* ENOSYS */ }
#endif

/* ---- A whole merge on C threads (lv_run_jobs): the exact `sum`, and TIES of two tickets ----------
 * Python plans the merge as a job table, one row of LV_J_N int64 per output tensor in file order:
 * untouched tensors are copied from the base mapping, touched ones merged from their tickets'
 * compressed chunks (lv_sum_coded). nthreads threads take jobs in order; each maps its job's base
 * pages in one call (lv_populate), gathers the base fingerprint's sample (spec §8: entries
 * floor(i * n / S)) before merging, and hands each full output window (or, for an untouched
 * tensor, its mapped bytes) to one writer thread, which does every write of the merge in queue
 * order, then gives the window buffer back (LV_NWIN per thread). No Python runs, so no thread waits
 * for the GIL, and no two threads contend for the file's lock. A job is finished once its
 * computation and all its writes are; pages of the base and tickets are then given back
 * (MADV_DONTNEED) in batches of `release` bytes once every job before them is finished.
 *
 * Kind 2 is TIES (exactly two tickets in the merge; `rule` = weights w0, w1, then the consensus
 * rule of lv_consensus2: peft, total, normalize, lambda, apply lambda): each live ticket (slot s,
 * ticket index J_TIX<s>) is decoded, its float32 deltas and magnitude histogram computed
 * (lv_delta_hist_g), its top J_K<s> kept (lv_topk_g; all of them when J_K<s> >= its entries), then
 * lv_consensus2 writes the result; errors name the ticket index (err[1]).
 *
 * A job's outcome: J_STATE 1 done (and written), 2 left to the caller (a chunk the compiled
 * decoders do not accept, err 5: the Python codecs decode it and raise the typed error), 3 failed
 * (err as lv_sum2, or 4 and the errno of a failed write; the caller checks that job's fingerprint
 * first, then raises), 0 not run (a job before it failed: jobs after a failed one are not
 * started). J_DONE_AT: the order of completion, for a caller that follows progress (J_STATE is
 * written last, after the results). */
enum { LV_J_KIND, LV_J_BASE, LV_J_N_, LV_J_WIDTH, LV_J_BF16, LV_J_FD, LV_J_FOFF, LV_J_T,
       LV_J_BLOB0, LV_J_REC0, LV_J_NREC0, LV_J_NNZ0, LV_J_RAW0, LV_J_BLEN0,
       LV_J_BLOB1, LV_J_REC1, LV_J_NREC1, LV_J_NNZ1, LV_J_RAW1, LV_J_BLEN1,
       LV_J_NSAMPLE, LV_J_SAMPLE, LV_J_CHANGED, LV_J_ERR0, LV_J_ERR1, LV_J_ERR2, LV_J_STATE, LV_J_DONE_AT,
       LV_J_K0, LV_J_K1, LV_J_TIX0, LV_J_TIX1, LV_J_N };

int32_t lv_populate(const void *addr, int64_t len);
int32_t lv_release(const void *addr, int64_t len);

#ifndef _WIN32
typedef struct { uintptr_t a, b; } lv_range;

#define LV_QCAP 64     /* writes waiting for the writer thread */

typedef struct {
    int fd; const char *buf; int64_t len, off, job; int slot; lv_ctx *ctx;
} lv_witem;

typedef struct lv_pool {
    int64_t *jobs; int64_t njobs;
    int64_t release;
    const double *rule;                /* TIES jobs: weights and consensus rule */
    int64_t next, stop, done_count;   /* next job to take; first failed job (njobs if none) */
    pthread_mutex_t mu;                /* guards the release state below */
    int64_t prefix;                    /* jobs [0, prefix) are finished (any state) */
    uint8_t *finished;
    lv_range *pending; int64_t npending, cap; uintptr_t pending_bytes;
    int nomem;
    /* the writer thread: a queue of writes, the compute threads' window buffers, and per job the
     * references still out (the computing thread's, one per queued write) */
    pthread_mutex_t qmu;
    pthread_cond_t q_items, q_space, buf_free;
    lv_witem q[LV_QCAP]; int64_t qhead, qcount; int producers;
    int64_t *refs, *state, *werr;
} lv_pool;

static int lv_range_cmp(const void *x, const void *y) {
    const lv_range *a = (const lv_range *)x, *b = (const lv_range *)y;
    return a->a < b->a ? -1 : a->a > b->a;
}

/* Give back the pending ranges, sorted and joined (a page of slack: neighbours share a page). */
static void lv_pool_flush_release(lv_pool *p) {
    if (!p->npending) return;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    qsort(p->pending, (size_t)p->npending, sizeof(lv_range), lv_range_cmp);
    lv_range cur = p->pending[0];
    for (int64_t k = 1; k <= p->npending; k++) {
        if (k < p->npending && p->pending[k].a <= cur.b + page) {
            if (p->pending[k].b > cur.b) cur.b = p->pending[k].b;
            continue;
        }
        lv_release((const void *)cur.a, (int64_t)(cur.b - cur.a));
        if (k < p->npending) cur = p->pending[k];
    }
    p->npending = 0; p->pending_bytes = 0;
}

static void lv_pool_pend(lv_pool *p, uintptr_t a, int64_t len) {
    if (len <= 0 || !a) return;
    if (p->npending == p->cap) {
        int64_t cap = p->cap ? 2 * p->cap : 256;
        lv_range *r = (lv_range *)realloc(p->pending, (size_t)cap * sizeof(lv_range));
        if (!r) { lv_pool_flush_release(p); return; }  /* give back what is pending, then retry */
        p->pending = r; p->cap = cap;
    }
    p->pending[p->npending].a = a; p->pending[p->npending].b = a + (uintptr_t)len;
    p->npending++; p->pending_bytes += (uintptr_t)len;
}

/* Job j is finished: advance the finished prefix, queue its pages, release a full batch. */
static void lv_pool_finish(lv_pool *p, int64_t j) {
    pthread_mutex_lock(&p->mu);
    p->finished[j] = 1;
    while (p->prefix < p->njobs && p->finished[p->prefix]) {
        int64_t *r = p->jobs + p->prefix * LV_J_N;
        lv_pool_pend(p, (uintptr_t)r[LV_J_BASE], r[LV_J_N_] * r[LV_J_WIDTH]);
        if (r[LV_J_KIND] != 0) {  /* the tickets' compressed chunks */
            lv_pool_pend(p, (uintptr_t)r[LV_J_BLOB0], r[LV_J_BLEN0]);
            if (r[LV_J_T] == 2) lv_pool_pend(p, (uintptr_t)r[LV_J_BLOB1], r[LV_J_BLEN1]);
        }
        p->prefix++;
    }
    if (p->release > 0 && p->pending_bytes >= (uintptr_t)p->release) lv_pool_flush_release(p);
    pthread_mutex_unlock(&p->mu);
}

/* Job j's outcome once its last reference is dropped (its computation and every write it queued
 * are done): a failed write fails the job; record the state (last), then the page release. */
static void lv_job_unref(lv_pool *p, int64_t j) {
    if (__atomic_sub_fetch(&p->refs[j], 1, __ATOMIC_ACQ_REL) != 0) return;
    int64_t *r = p->jobs + j * LV_J_N, state = p->state[j];
    int64_t werr = __atomic_load_n(&p->werr[j], __ATOMIC_ACQUIRE);
    if (werr && state == 1) { r[LV_J_ERR0] = 4; r[LV_J_ERR1] = 0; r[LV_J_ERR2] = werr; state = 3; }
    if (state == 3) {  /* jobs after this one are not started */
        int64_t s = __atomic_load_n(&p->stop, __ATOMIC_RELAXED);
        while (j < s && !__atomic_compare_exchange_n(&p->stop, &s, j, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
    }
    if (state) r[LV_J_DONE_AT] = __atomic_add_fetch(&p->done_count, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&r[LV_J_STATE], state, __ATOMIC_RELEASE);
    lv_pool_finish(p, j);
}

/* Queue a write of the current job (slot: the window buffer it is in, -1 for memory the writer
 * does not give back, e.g. the base mapping); waits while the queue is full. */
static void lv_wq_push(lv_pool *p, int fd, const char *buf, int64_t len, int64_t off, int slot, lv_ctx *c) {
    __atomic_add_fetch(&p->refs[lv_tls.job], 1, __ATOMIC_ACQ_REL);
    pthread_mutex_lock(&p->qmu);
    while (p->qcount == LV_QCAP) pthread_cond_wait(&p->q_space, &p->qmu);
    lv_witem *it = &p->q[(p->qhead + p->qcount) % LV_QCAP];
    it->fd = fd; it->buf = buf; it->len = len; it->off = off; it->job = lv_tls.job; it->slot = slot; it->ctx = c;
    p->qcount++;
    pthread_cond_signal(&p->q_items);
    pthread_mutex_unlock(&p->qmu);
}

/* One of this thread's free window buffers (waiting for the writer to free one). */
static int lv_wq_take(lv_pool *p, lv_ctx *c) {
    pthread_mutex_lock(&p->qmu);
    for (;;) {
        for (int k = 0; k < LV_NWIN; k++)
            if (!c->busy[k]) { c->busy[k] = 1; pthread_mutex_unlock(&p->qmu); return k; }
        pthread_cond_wait(&p->buf_free, &p->qmu);
    }
}

static void *lv_wq_window(const char *buf, int fd, int64_t len, int64_t off, int more) {
    lv_pool *p = lv_tls.p;
    lv_ctx *c = (lv_ctx *)lv_tls.c;
    lv_wq_push(p, fd, buf, len, off, lv_tls.slot, c);
    lv_tls.slot = more ? lv_wq_take(p, c) : -1;
    return lv_tls.slot >= 0 ? (void *)c->win[lv_tls.slot] : NULL;
}

/* The writer thread: every write of the merge, in queue order, so that no two threads contend
 * for the file's lock in the kernel (the sleeping or spinning waiters cost idle or burnt CPU). */
static void *lv_pool_writer(void *arg) {
    lv_pool *p = (lv_pool *)arg;
    for (;;) {
        pthread_mutex_lock(&p->qmu);
        while (p->qcount == 0 && p->producers > 0) pthread_cond_wait(&p->q_items, &p->qmu);
        if (p->qcount == 0) { pthread_mutex_unlock(&p->qmu); break; }
        lv_witem it = p->q[p->qhead];
        p->qhead = (p->qhead + 1) % LV_QCAP; p->qcount--;
        pthread_cond_signal(&p->q_space);
        pthread_mutex_unlock(&p->qmu);
        int64_t err[3] = {0, 0, 0};
        if (lv_flush(it.fd, it.buf, it.len, it.off, NULL, err)) {
            int64_t zero = 0;
            __atomic_compare_exchange_n(&p->werr[it.job], &zero, err[2] ? err[2] : 5, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_RELAXED);
        }
        if (it.slot >= 0) {
            pthread_mutex_lock(&p->qmu);
            it.ctx->busy[it.slot] = 0;
            pthread_cond_broadcast(&p->buf_free);
            pthread_mutex_unlock(&p->qmu);
        }
        lv_job_unref(p, it.job);
    }
    return NULL;
}

/* Copy an untouched tensor from its mapping to the output: 1 MiB writes queued for the writer
 * thread, straight from the mapping. */
static void lv_copy_out(lv_pool *p, const uint8_t *src, int64_t len, int fd, int64_t off) {
    const int64_t step = 1 << 20;
    for (int64_t pos = 0; pos < len; pos += step)
        lv_wq_push(p, fd, (const char *)src + pos, len - pos < step ? len - pos : step, off + pos, -1, NULL);
}

static void lv_gather_sample(const uint8_t *base, int64_t n, int width, int64_t s, uint8_t *out) {
    for (int64_t i = 0; i < s; i++) {
        int64_t pos = (int64_t)(((__int128)i * n) / s);
        memcpy(out + i * width, base + pos * width, (size_t)width);
    }
}

int64_t lv_delta_hist_g(const void *base_, int64_t nchunks, const int64_t *start, const int64_t *cnt,
                        const int32_t *wid, const uint8_t *const *gaps, const void *payload, int32_t width,
                        int32_t mode, float *out, uint32_t *hist);
int64_t lv_topk_g(const float *x, int64_t n, int64_t k, uint32_t *hist, int64_t nchunks, const int64_t *start,
                  const int64_t *cnt, const int32_t *wid, const uint8_t *const *gaps, void *out_idx,
                  float *out_val, int32_t idx32);
int64_t lv_consensus2(void *out_, const void *base_, int64_t n, int32_t width,
                      const void *i0, const float *x0, int64_t n0, const void *i1, const float *x1, int64_t n1,
                      float w0, float w1, int32_t peft, int32_t total, int32_t normalize, float lam, int32_t apply_lam,
                      int64_t *err, float *stash, uint8_t *seen, int32_t fd, int64_t foff, void *lock, int32_t idx32);

/* One TIES job (kind 2, see above); returns the changed entries, err as lv_run_jobs's jobs. */
static int64_t lv_ties_job(lv_ctx *c, void *window, const int64_t *r, const double *rule, int64_t *err, void *lock) {
    const uint8_t *base = (const uint8_t *)(uintptr_t)r[LV_J_BASE];
    int64_t n = r[LV_J_N_];
    int32_t w = (int32_t)r[LV_J_WIDTH];
    uint32_t expmask = w == 2 ? (r[LV_J_BF16] ? 0x7F80u : 0x7C00u) : 0x7F800000u;
    int idx32 = n < ((int64_t)1 << 31);
    size_t isz = idx32 ? 4 : 8;
    int64_t kept[2] = {0, 0};
    err[0] = 0;
    if (lv_grow(&c->hist, 65536 * sizeof(uint32_t)) || lv_grow(&c->stash, LV_BLOCK * sizeof(float))
        || lv_grow(&c->seen, LV_BLOCK) || lv_grow(&c->tidx[0], 8) || lv_grow(&c->tidx[1], 8)
        || lv_grow(&c->tval[0], 8) || lv_grow(&c->tval[1], 8)) { err[0] = 6; return 0; }
    for (int s = 0; s < (int)r[LV_J_T]; s++) {
        const int64_t *tk = r + (s ? LV_J_BLOB1 : LV_J_BLOB0);  /* blob, records, count, nnz, raw, length */
        int64_t tix = r[LV_J_TIX0 + s], nnz = tk[3], k = r[LV_J_K0 + s];
        const int64_t *st = NULL, *cn = NULL;
        const int32_t *wd = NULL;
        const uint8_t *const *pl = NULL;
        int64_t bad = lv_decode_slot(c, 0, (const uint8_t *)(uintptr_t)tk[0], (const int64_t *)(uintptr_t)tk[1],
                                     tk[2], nnz, w, (int32_t)tk[4], expmask, &st, &cn, &wd, &pl);
        if (bad) { err[0] = bad < 0 ? 6 : 5; err[1] = s; err[2] = bad - 1; return 0; }
        if (lv_grow(&c->delta, (size_t)nnz * sizeof(float) + 4)) { err[0] = 6; return 0; }
        float *d = (float *)c->delta.p;
        uint32_t *hist = (uint32_t *)c->hist.p;
        bad = lv_delta_hist_g(base, tk[2], st, cn, wd, pl, c->pay[0].p, w, (int32_t)tk[4], d, hist);
        if (bad >= 0) { err[0] = 1; err[1] = tix; err[2] = bad; return 0; }
        if (k <= 0) continue;
        int64_t m = k < nnz ? k : nnz;
        if (lv_grow(&c->tidx[tix], (size_t)m * isz + 8) || lv_grow(&c->tval[tix], (size_t)m * sizeof(float) + 4)) {
            err[0] = 6; return 0;
        }
        if (k >= nnz) {  /* every entry kept, in order */
            int64_t j = 0;
            for (lv_cursor q = lv_cur_gaps(tk[2], st, cn, wd, pl); q.i != INT64_MAX; lv_cur_next(&q, 1), j++) {
                if (idx32) ((int32_t *)c->tidx[tix].p)[j] = (int32_t)q.i; else ((int64_t *)c->tidx[tix].p)[j] = q.i;
            }
            memcpy(c->tval[tix].p, d, (size_t)nnz * sizeof(float));
            kept[tix] = nnz;
        } else {
            kept[tix] = lv_topk_g(d, nnz, k, hist, tk[2], st, cn, wd, pl, c->tidx[tix].p, (float *)c->tval[tix].p,
                                  idx32);
        }
    }
    memset(c->seen.p, 0, LV_BLOCK);
    return lv_consensus2(window, base, n, w, c->tidx[0].p, (const float *)c->tval[0].p, kept[0], c->tidx[1].p,
                         (const float *)c->tval[1].p, kept[1], (float)rule[0], (float)rule[1], (int32_t)rule[2],
                         (int32_t)rule[3], (int32_t)rule[4], (float)rule[5], (int32_t)rule[6], err,
                         (float *)c->stash.p, c->seen.p, (int32_t)r[LV_J_FD], r[LV_J_FOFF], lock, idx32);
}

static void *lv_pool_worker(void *arg) {
    lv_pool *p = (lv_pool *)arg;
    lv_ctx *c = (lv_ctx *)lv_ctx_new();
    for (int k = 0; c && k < LV_NWIN; k++)
        if (!(c->win[k] = (uint8_t *)malloc((size_t)LV_WINDOW * 4))) { lv_ctx_free(c); c = NULL; }
    if (!c) { pthread_mutex_lock(&p->mu); p->nomem = 1; pthread_mutex_unlock(&p->mu); }
    lv_tls.p = p; lv_tls.c = c;
    for (;;) {
        int64_t j = __atomic_fetch_add(&p->next, 1, __ATOMIC_RELAXED);
        if (j >= p->njobs) break;
        int64_t *r = p->jobs + j * LV_J_N;
        p->refs[j] = 1;  /* this thread's, dropped once its computation is done */
        lv_tls.job = j;
        if (j > __atomic_load_n(&p->stop, __ATOMIC_RELAXED) || !c) {  /* after a failed job, or no context */
            p->state[j] = 0;
            lv_job_unref(p, j);
            continue;
        }
        const uint8_t *base = (const uint8_t *)(uintptr_t)r[LV_J_BASE];
        int64_t n = r[LV_J_N_], w = r[LV_J_WIDTH], *err = r + LV_J_ERR0, state = 1;
        err[0] = 0;
        if (n * w > 0) lv_populate(base, n * w);
        if (r[LV_J_NSAMPLE] > 0)
            lv_gather_sample(base, n, (int)w, r[LV_J_NSAMPLE], (uint8_t *)(uintptr_t)r[LV_J_SAMPLE]);
        if (r[LV_J_KIND] == 0) {
            lv_copy_out(p, base, n * w, (int)r[LV_J_FD], r[LV_J_FOFF]);
        } else {
            lv_tls.slot = lv_wq_take(p, c);
            void *window = c->win[lv_tls.slot];
            if (r[LV_J_KIND] == 2)
                r[LV_J_CHANGED] = lv_ties_job(c, window, r, p->rule, err, NULL);
            else
                r[LV_J_CHANGED] = lv_sum_coded_w(
                    c, window, base, n, (int32_t)w, (int32_t)r[LV_J_BF16], (int32_t)r[LV_J_T],
                    (const uint8_t *)(uintptr_t)r[LV_J_BLOB0], (const int64_t *)(uintptr_t)r[LV_J_REC0],
                    r[LV_J_NREC0], r[LV_J_NNZ0], (int32_t)r[LV_J_RAW0],
                    (const uint8_t *)(uintptr_t)r[LV_J_BLOB1], (const int64_t *)(uintptr_t)r[LV_J_REC1],
                    r[LV_J_NREC1], r[LV_J_NNZ1], (int32_t)r[LV_J_RAW1], err, (int32_t)r[LV_J_FD], r[LV_J_FOFF], NULL);
            if (lv_tls.slot >= 0) {  /* the window the kernel held last, never queued */
                pthread_mutex_lock(&p->qmu);
                c->busy[lv_tls.slot] = 0;
                pthread_mutex_unlock(&p->qmu);
                lv_tls.slot = -1;
            }
            if (err[0] == 5 || err[0] == 6) state = 2;
            else if (err[0]) state = 3;
        }
        p->state[j] = state;
        lv_job_unref(p, j);
    }
    lv_tls.p = NULL; lv_tls.c = NULL;
    pthread_mutex_lock(&p->qmu);
    p->producers--;
    pthread_cond_broadcast(&p->q_items);
    pthread_mutex_unlock(&p->qmu);
    if (c) {  /* the writer may still hold this thread's windows: wait until it gave them back */
        pthread_mutex_lock(&p->qmu);
        for (;;) {
            int busy = 0;
            for (int k = 0; k < LV_NWIN; k++) busy |= c->busy[k];
            if (!busy) break;
            pthread_cond_wait(&p->buf_free, &p->qmu);
        }
        pthread_mutex_unlock(&p->qmu);
    }
    lv_ctx_free(c);
    return NULL;
}

/* Run the job table on nthreads threads (see above). Returns 0, or -1 when no thread could be
 * started or memory was short (jobs not run keep state 0: the caller runs them itself). */
int32_t lv_run_jobs(int64_t *jobs, int64_t njobs, int32_t nthreads, int64_t release, const double *rule) {
    lv_pool *p = (lv_pool *)calloc(1, sizeof(lv_pool));
    if (!p) return -1;
    int n = nthreads > 0 ? nthreads : 1;
    size_t nj = (size_t)(njobs > 0 ? njobs : 1);
    p->jobs = jobs; p->njobs = njobs; p->release = release; p->stop = njobs; p->rule = rule;
    p->finished = (uint8_t *)calloc(nj, 1);
    p->refs = (int64_t *)calloc(nj, sizeof(int64_t));
    p->state = (int64_t *)calloc(nj, sizeof(int64_t));
    p->werr = (int64_t *)calloc(nj, sizeof(int64_t));
    pthread_t *th = (pthread_t *)calloc((size_t)n + 1, sizeof(pthread_t));
    if (!p->finished || !p->refs || !p->state || !p->werr || !th) {
        free(p->finished); free(p->refs); free(p->state); free(p->werr); free(th); free(p);
        return -1;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->qmu, NULL);
    pthread_cond_init(&p->q_items, NULL); pthread_cond_init(&p->q_space, NULL); pthread_cond_init(&p->buf_free, NULL);
    p->producers = n;
    int rc = 0, started = 0;
    pthread_t writer;
    if (pthread_create(&writer, NULL, lv_pool_writer, p) != 0) {
        rc = -1;  /* no writer thread: nothing runs, the caller does every job */
    } else {
        for (int k = 0; k < n; k++)
            if (pthread_create(&th[started], NULL, lv_pool_worker, p) == 0) started++;
        pthread_mutex_lock(&p->qmu);
        p->producers -= n - started;  /* threads that did not start produce nothing */
        pthread_cond_broadcast(&p->q_items);
        pthread_mutex_unlock(&p->qmu);
        if (!started) rc = -1;
        for (int k = 0; k < started; k++) pthread_join(th[k], NULL);
        pthread_join(writer, NULL);
    }
    lv_pool_flush_release(p);
    pthread_cond_destroy(&p->q_items); pthread_cond_destroy(&p->q_space); pthread_cond_destroy(&p->buf_free);
    pthread_mutex_destroy(&p->qmu);
    pthread_mutex_destroy(&p->mu);
    if (p->nomem) rc = -1;
    free(p->pending); free(p->finished); free(p->refs); free(p->state); free(p->werr); free(th); free(p);
    return rc;
}

/* Give the pages of [addr, addr + len) of a file mapping back to the kernel (MADV_DONTNEED; the
 * whole pages inside the range and the partial ones at its ends: a file mapping refaults them
 * from the page cache if a neighbour still reads them). */
int32_t lv_release(const void *addr, int64_t len) {
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), a = (uintptr_t)addr & ~(page - 1);
    if (len <= 0) return 0;
    return madvise((void *)a, (size_t)((uintptr_t)addr + (uintptr_t)len - a), MADV_DONTNEED) ? errno : 0;
}
#else
int32_t lv_run_jobs(int64_t *jobs, int64_t njobs, int32_t nthreads, int64_t release, const double *rule) {
    (void)jobs; (void)njobs; (void)nthreads; (void)release; (void)rule;
    return -1;
}
int32_t lv_release(const void *addr, int64_t len) { (void)addr; (void)len; return 38; }
#endif

/* Version of these kernels' calling conventions (lotavec/native.py refuses other builds). */
int32_t lv_abi(void) { return 10; }

/* A valid (empty) extension module, so that setuptools builds and installs this file like any
 * other; lotavec uses it only through ctypes. */
static struct PyModuleDef lv_module = {PyModuleDef_HEAD_INIT, "_ccodec", NULL, -1, NULL};
PyMODINIT_FUNC PyInit__ccodec(void) { return PyModule_Create(&lv_module); }
