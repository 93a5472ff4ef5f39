/*
 * _merge.c -- C kernels of edgetile's merge step: NMS, greedy non-maximum merging (SAHI's
 * grouping) and Weighted Boxes Fusion (ensemble-boxes' results).
 *
 * The public, validating API is edgetile.runtime.merge; the NumPy reference with the same
 * functions and signatures is _merge_ref.py. Each kernel takes validated, C-contiguous float64 /
 * int64 arrays and preallocated output arrays through the buffer protocol (no NumPy headers, so
 * no build dependency on NumPy), checks them again here, and works with the GIL released.
 *
 * Overlaps are computed with exactly the expressions of _merge_ref.py, in the same order, so the
 * two agree bit for bit. Build with -ffp-contract=off (setup.py does): a fused multiply-add would
 * round differently from NumPy.
 *
 * Neighbour search never builds an N x N matrix. The boxes already decided on (kept boxes for NMS
 * and greedy NMM, fused boxes for WBF) live in a hierarchical "loose" grid: an object of size
 * m = max(w, h) goes to the level whose cell size s satisfies s/2 < m <= s, into the cell holding
 * its centre, so it reaches at most s/2 beyond that cell. A query visits, on each level that can
 * hold a match, the cells whose centres could lie within reach; a level whose cell range is
 * larger than its population is scanned as a list instead. Level 0 takes every box up to the
 * run's median size. An overlap of at least t > 0 bounds the distance between centres (IoU and
 * IoS), and for IoU the matching object's size to [t * m, m / t] of the query's, which limits the
 * levels and cells visited. Cells are found through an open-addressing hash table behind a small
 * occupancy bitmap, so memory is O(N) whatever the extent of the coordinates.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int64_t idx_t;

#define MAX_COORD 9007199254740992.0 /* 2**53, MAX_COORD in _merge_ref.py */
#define MIN_WEIGHT 1e-6
#define MAX_WEIGHT 1e6
#define NLEV 64                      /* grid levels; the last one is a catch-all list */
#define GRID_SAMPLE 127              /* boxes sampled for the median size of a run */
#define CELL_BITS 28
#define CELL_LIM 134217727.0 /* 2**27 - 1: cell indices are clamped to +-this (monotone, so still exact) */

enum { ST_OK = 0, ST_NOMEM = -1, ST_INTERNAL = -2 };
enum { CONF_AVG = 0, CONF_MAX = 1, CONF_BOX_AND_MODEL_AVG = 2, CONF_ABSENT_MODEL_AWARE_AVG = 3 };

/* ============================================================================================ */
/* Buffers and argument checks (GIL held)                                                       */
/* ============================================================================================ */

typedef struct {
    Py_buffer view;
    int held;
} arr_t;

static void arr_release(arr_t *a)
{
    if (a->held) {
        PyBuffer_Release(&a->view);
        a->held = 0;
    }
}

/* Replace the current exception by exc_type(msg), keeping the original as __cause__. */
static void raise_from_current(PyObject *exc_type, const char *msg)
{
    PyObject *t, *v, *tb, *t2, *v2, *tb2;
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    if (v != NULL && tb != NULL)
        PyException_SetTraceback(v, tb);
    Py_XDECREF(t);
    Py_XDECREF(tb);
    PyErr_SetString(exc_type, msg);
    if (v == NULL)
        return;
    PyErr_Fetch(&t2, &v2, &tb2);
    PyErr_NormalizeException(&t2, &v2, &tb2);
    if (v2 != NULL)
        PyException_SetCause(v2, v); /* steals v */
    else
        Py_DECREF(v);
    PyErr_Restore(t2, v2, tb2);
}

static int format_matches(const char *fmt, char kind)
{
    const uint16_t one = 1;
    const char native = *(const char *)&one ? '<' : '>';
    if (fmt == NULL)
        return 0;
    if (fmt[0] == '@' || fmt[0] == '=' || fmt[0] == native)
        fmt++;
    if (fmt[0] == '\0' || fmt[1] != '\0')
        return 0;
    if (kind == 'd')
        return fmt[0] == 'd';
    return fmt[0] == 'q' || fmt[0] == 'l'; /* with itemsize 8: int64 */
}

static void shape_text(char *out, size_t size, int ndim, const Py_ssize_t *shape, int symbolic)
{
    size_t used = 0;
    int i;
    used += (size_t)snprintf(out + used, size - used, "(");
    for (i = 0; i < ndim && used < size; i++) {
        if (symbolic && shape[i] < 0)
            used += (size_t)snprintf(out + used, size - used, "%sN", i ? ", " : "");
        else
            used += (size_t)snprintf(out + used, size - used, "%s%zd", i ? ", " : "", shape[i]);
    }
    if (used < size)
        snprintf(out + used, size - used, ndim == 1 ? ",)" : ")");
}

/* Get obj as a C-contiguous array of float64 (kind 'd') or int64 (kind 'q') with the given shape
 * (entries < 0 match any length). On failure: exception set, nothing held, returns -1. */
static int get_array(PyObject *obj, const char *name, char kind, int ndim, const Py_ssize_t *shape,
                     int writable, arr_t *out)
{
    const char *dtype = kind == 'd' ? "float64" : "int64";
    char msg[320], want[96], found[96];
    int i, ok;
    out->held = 0;
    if (PyObject_GetBuffer(obj, &out->view, PyBUF_STRIDES | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) != 0) {
        if (writable && PyObject_CheckBuffer(obj)) {
            snprintf(msg, sizeof msg, "%s must be a writable %s array; found a read-only or unsupported buffer", name,
                     dtype);
            raise_from_current(PyExc_ValueError, msg);
        } else {
            snprintf(msg, sizeof msg, "%s must be a numpy.ndarray of %s; found %.100s", name, dtype,
                     Py_TYPE(obj)->tp_name);
            raise_from_current(PyExc_TypeError, msg);
        }
        return -1;
    }
    out->held = 1;
    if (!format_matches(out->view.format, kind) || out->view.itemsize != 8) {
        PyErr_Format(PyExc_TypeError, "%s must have dtype %s; found buffer format '%s' with itemsize %zd", name, dtype,
                     out->view.format ? out->view.format : "B", out->view.itemsize);
        arr_release(out);
        return -1;
    }
    ok = out->view.ndim == ndim;
    for (i = 0; ok && i < ndim; i++)
        ok = shape[i] < 0 || out->view.shape[i] == shape[i];
    if (!ok) {
        shape_text(want, sizeof want, ndim, shape, 1);
        if (out->view.ndim > 0 && out->view.ndim <= 8)
            shape_text(found, sizeof found, out->view.ndim, out->view.shape, 0);
        else
            snprintf(found, sizeof found, "%d dimensions", out->view.ndim);
        PyErr_Format(PyExc_ValueError, "%s must have shape %s; found %s", name, want, found);
        arr_release(out);
        return -1;
    }
    if (!PyBuffer_IsContiguous(&out->view, 'C')) {
        PyErr_Format(PyExc_ValueError, "%s must be C-contiguous; found a strided array", name);
        arr_release(out);
        return -1;
    }
    return 0;
}

static void raise_value_double(const char *fmt_before, double v, const char *fmt_after)
{
    PyObject *f = PyFloat_FromDouble(v);
    if (f == NULL)
        return;
    PyErr_Format(PyExc_ValueError, "%s%R%s", fmt_before, f, fmt_after);
    Py_DECREF(f);
}

/* The checks of _check_boxes in _merge_ref.py, in the same order, with the same messages. */
static int check_boxes(const char *name, const double *b, idx_t n, int positive_area)
{
    char pre[160], post[160];
    idx_t i;
    int c;
    for (i = 0; i < 4 * n; i++) {
        if (!isfinite(b[i])) {
            snprintf(pre, sizeof pre, "%s must be finite; found ", name);
            snprintf(post, sizeof post, " at %s[%lld, %d]", name, (long long)(i / 4), (int)(i % 4));
            raise_value_double(pre, b[i], post);
            return -1;
        }
    }
    for (i = 0; i < 4 * n; i++) {
        if (fabs(b[i]) > MAX_COORD) {
            snprintf(pre, sizeof pre, "%s coordinates must have magnitude at most 2**53; found ", name);
            snprintf(post, sizeof post, " at %s[%lld, %d]", name, (long long)(i / 4), (int)(i % 4));
            raise_value_double(pre, b[i], post);
            return -1;
        }
    }
    for (c = 0; c < 2; c++) {
        const char axis = c == 0 ? 'x' : 'y';
        for (i = 0; i < n; i++) {
            const double lo = b[4 * i + c], hi = b[4 * i + c + 2];
            if (hi < lo) {
                PyObject *a = PyFloat_FromDouble(lo), *z = PyFloat_FromDouble(hi);
                if (a != NULL && z != NULL)
                    PyErr_Format(PyExc_ValueError, "%s must have %c2 >= %c1; found %c1=%R, %c2=%R at %s[%lld]", name,
                                 axis, axis, axis, a, axis, z, name, (long long)i);
                Py_XDECREF(a);
                Py_XDECREF(z);
                return -1;
            }
        }
    }
    if (positive_area) {
        for (i = 0; i < n; i++) {
            const double *r = b + 4 * i;
            if ((r[2] - r[0]) * (r[3] - r[1]) == 0.0) {
                PyErr_Format(PyExc_ValueError, "%s must have positive areas; found a zero-area box at %s[%lld]", name,
                             name, (long long)i);
                return -1;
            }
        }
    }
    return 0;
}

/* _check_finite: finite, and inside [lo, hi] when bounded. */
static int check_values(const char *name, const double *v, idx_t n, int bounded, double lo, double hi,
                        const char *range_text)
{
    char pre[160], post[96];
    idx_t i;
    for (i = 0; i < n; i++) {
        if (!isfinite(v[i]) || (bounded && (v[i] < lo || v[i] > hi))) {
            if (bounded)
                snprintf(pre, sizeof pre, "%s must be finite and in %s; found ", name, range_text);
            else
                snprintf(pre, sizeof pre, "%s must be finite; found ", name);
            snprintf(post, sizeof post, " at %s[%lld]", name, (long long)i);
            raise_value_double(pre, v[i], post);
            return -1;
        }
    }
    return 0;
}

/* _check_threshold: a real number (not a bool) in [0, 1]. */
static int get_threshold(PyObject *obj, const char *name, double *out)
{
    double v;
    if (PyBool_Check(obj) || !(PyFloat_Check(obj) || PyLong_Check(obj) || PyIndex_Check(obj) ||
                               (Py_TYPE(obj)->tp_as_number && Py_TYPE(obj)->tp_as_number->nb_float))) {
        PyErr_Format(PyExc_TypeError, "%s must be a real number in [0, 1]; found %.100s", name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    v = PyFloat_AsDouble(obj);
    if (v == -1.0 && PyErr_Occurred())
        return -1;
    if (!(v >= 0.0 && v <= 1.0)) {
        char pre[96];
        snprintf(pre, sizeof pre, "%s must be in [0, 1]; found ", name);
        raise_value_double(pre, v, "");
        return -1;
    }
    *out = v;
    return 0;
}

/* _check_choice: the index of obj in choices, or -1 with ValueError. */
static int get_choice(PyObject *obj, const char *name, const char *const *choices, int nchoices, const char *text)
{
    int i;
    if (PyUnicode_Check(obj)) {
        for (i = 0; i < nchoices; i++) {
            if (PyUnicode_CompareWithASCIIString(obj, choices[i]) == 0)
                return i;
        }
    }
    PyErr_Format(PyExc_ValueError, "%s must be one of %s; found %R", name, text, obj);
    return -1;
}

/* ============================================================================================ */
/* Stable merge sorts of index arrays                                                           */
/* ============================================================================================ */

#define DEFINE_MERGE_SORT(NAME, CTX, LESS)                                                       \
    static void NAME(idx_t *v, idx_t *tmp, idx_t n, const CTX *ctx)                             \
    {                                                                                            \
        idx_t h, i, j, k;                                                                        \
        if (n <= 24) {                                                                           \
            for (i = 1; i < n; i++) {                                                            \
                const idx_t x = v[i];                                                            \
                for (j = i; j > 0 && LESS(ctx, x, v[j - 1]); j--)                                \
                    v[j] = v[j - 1];                                                             \
                v[j] = x;                                                                        \
            }                                                                                    \
            return;                                                                              \
        }                                                                                        \
        h = n / 2;                                                                               \
        NAME(v, tmp, h, ctx);                                                                    \
        NAME(v + h, tmp, n - h, ctx);                                                            \
        if (!LESS(ctx, v[h], v[h - 1]))                                                          \
            return; /* already in order */                                                       \
        memcpy(tmp, v, (size_t)h * sizeof(idx_t));                                               \
        i = 0;                                                                                   \
        j = h;                                                                                   \
        k = 0;                                                                                   \
        while (i < h && j < n)                                                                   \
            v[k++] = LESS(ctx, v[j], tmp[i]) ? v[j++] : tmp[i++];                                \
        while (i < h)                                                                            \
            v[k++] = tmp[i++];                                                                   \
    }

typedef struct {
    const int64_t *key;
} ikey_t;
typedef struct {
    const double *score;
    const double *box;
} sahi_key_t;

#define LESS_IASC(c, a, b) ((c)->key[a] < (c)->key[b])

/* SAHI's order, np.lexsort((y2, x2, y1, x1, -scores)): descending score, then x1, y1, x2, y2. */
static inline int sahi_less(const sahi_key_t *c, idx_t a, idx_t b)
{
    const double sa = c->score[a], sb = c->score[b];
    const double *pa = c->box + 4 * a, *pb = c->box + 4 * b;
    int k;
    if (sa != sb)
        return sa > sb;
    for (k = 0; k < 4; k++) {
        if (pa[k] != pb[k])
            return pa[k] < pb[k];
    }
    return 0;
}
#define LESS_SAHI(c, a, b) sahi_less((c), (a), (b))

DEFINE_MERGE_SORT(sort_iasc, ikey_t, LESS_IASC)
DEFINE_MERGE_SORT(sort_sahi, sahi_key_t, LESS_SAHI)

/* A key and a position: sorting these contiguous pairs beats sorting indices by an indirect key. */
typedef struct {
    double k;
    idx_t i;
} kv_t;

static inline int kv_less(const kv_t *a, const kv_t *b) { return a->k < b->k || (a->k == b->k && a->i < b->i); }

static void sort_kv(kv_t *a, kv_t *tmp, idx_t n)
{
    idx_t h, i, j, k;
    if (n <= 24) {
        for (i = 1; i < n; i++) {
            const kv_t x = a[i];
            for (j = i; j > 0 && kv_less(&x, &a[j - 1]); j--)
                a[j] = a[j - 1];
            a[j] = x;
        }
        return;
    }
    h = n / 2;
    sort_kv(a, tmp, h);
    sort_kv(a + h, tmp, n - h);
    if (!kv_less(&a[h], &a[h - 1]))
        return;
    memcpy(tmp, a, (size_t)h * sizeof(kv_t));
    i = 0;
    j = h;
    k = 0;
    while (i < h && j < n)
        a[k++] = kv_less(&a[j], &tmp[i]) ? a[j++] : tmp[i++];
    while (i < h)
        a[k++] = tmp[i++];
}

/* out[0..n) = ids[0..n) (0..n-1 when ids is NULL) by descending key, ties keeping their order;
 * out must not alias ids. */
static int order_desc(const double *key, const idx_t *ids, idx_t n, idx_t *out)
{
    kv_t *a = malloc((size_t)(n + 1) * sizeof(kv_t)), *tmp = malloc((size_t)(n / 2 + 1) * sizeof(kv_t));
    idx_t j;
    if (a == NULL || tmp == NULL) {
        free(a);
        free(tmp);
        return ST_NOMEM;
    }
    for (j = 0; j < n; j++) {
        a[j].k = -key[ids ? ids[j] : j];
        a[j].i = j;
    }
    sort_kv(a, tmp, n);
    for (j = 0; j < n; j++)
        out[j] = ids ? ids[a[j].i] : a[j].i;
    free(a);
    free(tmp);
    return ST_OK;
}

#define MAX_TABLE_LABELS 64

/* Group v[0..n) by label, keeping the order within each label, and record where each label's run
 * starts. Runs come in order of first appearance in v when there are few distinct labels (a
 * counting pass), in label order otherwise (a stable sort). Sets *nruns. */
static int label_runs(idx_t *v, idx_t *tmp, idx_t n, const int64_t *labels, idx_t *run_start, idx_t *nruns)
{
    int64_t table[MAX_TABLE_LABELS];
    idx_t count[MAX_TABLE_LABELS + 1], i, r = 0;
    int nl = 0, b = 0, k;
    for (i = 0; i < n; i++) {
        const int64_t lab = labels[v[i]];
        if (nl == 0 || table[b] != lab) {
            for (b = 0; b < nl && table[b] != lab; b++)
                ;
            if (b == nl) {
                if (nl == MAX_TABLE_LABELS)
                    break;
                table[nl] = lab;
                count[nl++] = 0;
            }
        }
        count[b]++;
        tmp[i] = b;
    }
    if (i < n) {
        const ikey_t key = {labels};
        sort_iasc(v, tmp, n, &key);
        for (i = 0; i < n; i++) {
            if (i == 0 || labels[v[i]] != labels[v[i - 1]])
                run_start[r++] = i;
        }
        run_start[r] = n;
        *nruns = r;
        return ST_OK;
    }
    {
        idx_t *out = malloc((size_t)(n + 1) * sizeof(idx_t)), start = 0;
        if (out == NULL)
            return ST_NOMEM;
        for (k = 0; k < nl; k++) {
            const idx_t c = count[k];
            run_start[k] = start;
            count[k] = start;
            start += c;
        }
        run_start[nl] = n;
        for (i = 0; i < n; i++)
            out[count[tmp[i]]++] = v[i];
        memcpy(v, out, (size_t)n * sizeof(idx_t));
        free(out);
    }
    *nruns = nl;
    return ST_OK;
}

/* numpy's pairwise summation (np.sum of a contiguous float64 array), so sums match bit for bit. */
static double pairwise_sum(const double *a, idx_t n)
{
    if (n < 8) {
        double res = 0.0;
        idx_t i;
        for (i = 0; i < n; i++)
            res += a[i];
        return res;
    }
    if (n <= 128) {
        double r[8], res;
        idx_t i;
        int j;
        for (j = 0; j < 8; j++)
            r[j] = a[j];
        for (i = 8; i < n - (n % 8); i += 8) {
            for (j = 0; j < 8; j++)
                r[j] += a[i + j];
        }
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++)
            res += a[i];
        return res;
    }
    {
        idx_t n2 = n / 2;
        n2 -= n2 % 8;
        return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
    }
}

/* ============================================================================================ */
/* Overlap: the expressions of boxes.pairwise_overlap, which the NumPy reference uses           */
/* ============================================================================================ */

static inline double box_area(const double *b) { return (b[2] - b[0]) * (b[3] - b[1]); }

/* IoU or IoS of a (the box already decided on) and b; 0 where the denominator is not positive. */
static inline double overlap(const double *a, double area_a, const double *b, double area_b, int ios)
{
    const double w = (a[2] < b[2] ? a[2] : b[2]) - (a[0] > b[0] ? a[0] : b[0]);
    const double h = (a[3] < b[3] ? a[3] : b[3]) - (a[1] > b[1] ? a[1] : b[1]);
    double inter, den;
    if (!(w > 0.0) || !(h > 0.0))
        return 0.0;
    inter = w * h;
    den = ios ? (area_b < area_a ? area_b : area_a) : (area_a + area_b) - inter;
    return den > 0.0 ? inter / den : 0.0;
}

/* ============================================================================================ */
/* Hierarchical loose grid                                                                      */
/* ============================================================================================ */

/* One object in the grid: its own copy of the box (queries touch one record, not three arrays). */
typedef struct {
    double b[4];
    double area;
    idx_t next, prev; /* the cell's list */
    idx_t tag;        /* the caller's: a rank for greedy NMM */
} gobj_t;

/* One hash-table slot: a cell of one level, packed into a nonzero key, and its first object. */
typedef struct {
    uint64_t key; /* 0: empty slot */
    idx_t head;
} gcell_t;

typedef int (*visit_fn)(void *ctx, idx_t id, const gobj_t *o);

typedef struct {
    /* geometry of the current run */
    double ox, oy;
    double size[NLEV];  /* cell size of each level: size[0] * 2**level */
    double inv[NLEV];   /* 1 / size */
    double slack[NLEV]; /* rounding allowance of each level, in coordinate units */
    int lo_level, hi_level;
    /* hash table of cells, (level, ix, iy) -> first object */
    size_t mask;
    gcell_t *cells;
    void *cells_raw;
    /* one bit per hash value (about 16 per cell): most probes of empty cells stop here, in cache */
    uint64_t *bits;
    size_t bmask;
    idx_t *used;
    idx_t nused, max_used;
    /* objects */
    gobj_t *obj;
    void *obj_raw;
    idx_t *lnext, *lprev, *oslot;
    int32_t *olev;
    /* levels */
    idx_t lcount[NLEV], lhead[NLEV];
} grid_t;

/* floor((v - origin) * inv), clamped to +-CELL_LIM: a nondecreasing function of v, which is all
 * that exactness needs (the same function places objects and bounds queries). */
static inline int64_t cell_of(double v, double origin, double inv)
{
    const double t = (v - origin) * inv;
    int64_t i;
    if (!(t > -CELL_LIM))
        return -(int64_t)CELL_LIM;
    if (t > CELL_LIM)
        return (int64_t)CELL_LIM;
    i = (int64_t)t;
    return i - (t < (double)i);
}

/* Level + 1 in the top bits (never 0), then ix and iy offset to be nonnegative. */
static inline uint64_t cell_key(int L, int64_t ix, int64_t iy)
{
    const uint64_t off = (uint64_t)1 << (CELL_BITS - 1), mask = ((uint64_t)1 << CELL_BITS) - 1;
    return ((uint64_t)(uint32_t)(L + 1) << (2 * CELL_BITS)) | ((((uint64_t)ix + off) & mask) << CELL_BITS) |
           (((uint64_t)iy + off) & mask);
}

static inline uint64_t key_hash(uint64_t key)
{
    uint64_t h = key * 0x9E3779B97F4A7C15ULL;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 32;
    return h;
}

static inline size_t hash_bit(const grid_t *g, uint64_t h) { return (size_t)(h >> 24) & g->bmask; }

static void grid_free(grid_t *g)
{
    free(g->cells_raw);
    free(g->bits);
    free(g->used);
    free(g->obj_raw);
    free(g->lnext);
    free(g->lprev);
    free(g->oslot);
    free(g->olev);
    memset(g, 0, sizeof *g);
}

/* malloc aligned to 64 bytes (a cache line); *raw is what to free. */
static void *malloc_lines(size_t bytes, void **raw)
{
    *raw = malloc(bytes + 64);
    if (*raw == NULL)
        return NULL;
    return (void *)(((uintptr_t)*raw + 63) & ~(uintptr_t)63);
}

/* Room for nobj object ids and up to max_inserts insertions per run. */
static int grid_alloc(grid_t *g, idx_t nobj, idx_t max_inserts)
{
    size_t cap = 64, i;
    memset(g, 0, sizeof *g);
    while (cap < 2 * (size_t)max_inserts + 2) /* load factor at most 1/2 */
        cap *= 2;
    g->mask = cap - 1;
    g->max_used = (idx_t)(cap / 2);
    g->bmask = 8 * cap - 1; /* 8 * cap bits, at least 16 per cell */
    nobj = nobj > 0 ? nobj : 1;
    g->cells = malloc_lines(cap * sizeof(gcell_t), &g->cells_raw);
    g->bits = calloc(cap / 8, sizeof(uint64_t));
    g->used = malloc(cap * sizeof(idx_t));
    g->obj = malloc_lines((size_t)nobj * sizeof(gobj_t), &g->obj_raw);
    g->lnext = malloc((size_t)nobj * sizeof(idx_t));
    g->lprev = malloc((size_t)nobj * sizeof(idx_t));
    g->oslot = malloc((size_t)nobj * sizeof(idx_t));
    g->olev = malloc((size_t)nobj * sizeof(int32_t));
    if (!g->cells || !g->bits || !g->used || !g->obj || !g->lnext || !g->lprev || !g->oslot || !g->olev) {
        grid_free(g);
        return ST_NOMEM;
    }
    for (i = 0; i < cap; i++)
        g->cells[i].key = 0;
    return ST_OK;
}

/* Empty the grid and size its levels for the boxes ids[0..n) of boxes (whose neighbours and, for
 * WBF, whose score-weighted means will be inserted and queried). */
static void grid_begin(grid_t *g, const double *boxes, const idx_t *ids, idx_t n)
{
    double ox = HUGE_VAL, oy = HUGE_VAL, maxabs = 0.0, mmax = 0.0, mminpos = HUGE_VAL, s0;
    idx_t i;
    int L, c;
    for (i = 0; i < g->nused; i++) {
        gcell_t *cell = g->cells + g->used[i];
        const size_t bit = hash_bit(g, key_hash(cell->key));
        g->bits[bit >> 6] &= ~((uint64_t)1 << (bit & 63));
        cell->key = 0;
    }
    g->nused = 0;
    for (L = 0; L < NLEV; L++) {
        g->lcount[L] = 0;
        g->lhead[L] = -1;
    }
    g->lo_level = NLEV;
    g->hi_level = -1;
    for (i = 0; i < n; i++) {
        const double *b = boxes + 4 * ids[i];
        const double w = b[2] - b[0], h = b[3] - b[1], m = w > h ? w : h;
        if (b[0] < ox)
            ox = b[0];
        if (b[1] < oy)
            oy = b[1];
        for (c = 0; c < 4; c++) {
            if (fabs(b[c]) > maxabs)
                maxabs = fabs(b[c]);
        }
        if (m > mmax)
            mmax = m;
        if (m > 0.0 && m < mminpos)
            mminpos = m;
    }
    if (n == 0)
        ox = oy = 0.0;
    if (mmax > 0.0) {
        /* Level 0 takes every box up to the median size (sampled): sparse levels of small boxes
         * would cost more cell probes than the few extra boxes a coarser cell holds. */
        double sample[GRID_SAMPLE];
        const idx_t ns = n < GRID_SAMPLE ? n : GRID_SAMPLE;
        idx_t j, k;
        for (j = 0; j < ns; j++) {
            const double *b = boxes + 4 * ids[(idx_t)((double)j * (double)n / (double)ns)];
            const double w = b[2] - b[0], h = b[3] - b[1], m = w > h ? w : h;
            for (k = j; k > 0 && sample[k - 1] > m; k--)
                sample[k] = sample[k - 1];
            sample[k] = m;
        }
        s0 = ldexp(mmax, -(NLEV - 4)); /* the largest box fits well below the catch-all level */
        if (mminpos > s0)
            s0 = mminpos;
        if (sample[ns / 2] > s0)
            s0 = sample[ns / 2];
    } else {
        s0 = 1.0; /* only point boxes: any size will do */
    }
    g->ox = ox;
    g->oy = oy;
    for (L = 0; L < NLEV; L++) {
        g->size[L] = ldexp(s0, L);
        g->inv[L] = 1.0 / g->size[L];
        /* Centres and cell indices carry a few ulps of rounding; reach that much further. Fused WBF
         * boxes are float32-rounded means of the run's boxes, hence the 1.01. */
        g->slack[L] = 16.0 * DBL_EPSILON * (1.01 * maxabs + fabs(ox) + fabs(oy) + g->size[L]);
    }
}

static inline int grid_level(const grid_t *g, double m)
{
    double r;
    int L, e;
    if (!(m > g->size[0]))
        return 0;
    r = m / g->size[0];
    if (r < 4.0e18) {
        frexp(r, &e);
        L = e;
    } else {
        L = NLEV - 1;
    }
    if (L < 1)
        L = 1;
    if (L > NLEV - 1)
        L = NLEV - 1;
    while (L > 1 && m <= g->size[L - 1])
        L--;
    while (L < NLEV - 1 && m > g->size[L])
        L++;
    return L;
}

static inline idx_t grid_find(const grid_t *g, int L, int64_t ix, int64_t iy)
{
    const uint64_t key = cell_key(L, ix, iy), h = key_hash(key);
    const size_t bit = hash_bit(g, h);
    size_t p = (size_t)h & g->mask;
    if (!(g->bits[bit >> 6] >> (bit & 63) & 1))
        return -1;
    for (;;) {
        const gcell_t *c = g->cells + p;
        if (c->key == key)
            return c->head;
        if (c->key == 0)
            return -1;
        p = (p + 1) & g->mask;
    }
}

/* Insert object id with box b (copied) and the caller's tag. */
static int grid_insert(grid_t *g, idx_t id, const double *b, double area, idx_t tag)
{
    const double w = b[2] - b[0], h = b[3] - b[1], m = w > h ? w : h;
    const int L = grid_level(g, m);
    const int64_t ix = cell_of(0.5 * (b[0] + b[2]), g->ox, g->inv[L]);
    const int64_t iy = cell_of(0.5 * (b[1] + b[3]), g->oy, g->inv[L]);
    const uint64_t key = cell_key(L, ix, iy), hash = key_hash(key);
    const size_t bit = hash_bit(g, hash);
    size_t p = (size_t)hash & g->mask;
    gcell_t *c;
    gobj_t *o = g->obj + id;
    idx_t head;
    for (;;) {
        c = g->cells + p;
        if (c->key == key)
            break;
        if (c->key == 0) {
            if (g->nused >= g->max_used)
                return ST_INTERNAL; /* cannot happen: one new cell per insertion at most */
            c->key = key;
            c->head = -1;
            g->used[g->nused++] = (idx_t)p;
            g->bits[bit >> 6] |= (uint64_t)1 << (bit & 63);
            break;
        }
        p = (p + 1) & g->mask;
    }
    memcpy(o->b, b, sizeof o->b);
    o->area = area;
    o->tag = tag;
    head = c->head;
    o->next = head;
    o->prev = -1;
    if (head >= 0)
        g->obj[head].prev = id;
    c->head = id;
    head = g->lhead[L];
    g->lnext[id] = head;
    g->lprev[id] = -1;
    if (head >= 0)
        g->lprev[head] = id;
    g->lhead[L] = id;
    g->lcount[L]++;
    g->oslot[id] = (idx_t)p;
    g->olev[id] = L;
    if (L < g->lo_level)
        g->lo_level = L;
    if (L > g->hi_level)
        g->hi_level = L;
    return ST_OK;
}

static void grid_remove(grid_t *g, idx_t id)
{
    gobj_t *o = g->obj + id;
    const int L = g->olev[id];
    if (o->prev >= 0)
        g->obj[o->prev].next = o->next;
    else
        g->cells[g->oslot[id]].head = o->next;
    if (o->next >= 0)
        g->obj[o->next].prev = o->prev;
    if (g->lprev[id] >= 0)
        g->lnext[g->lprev[id]] = g->lnext[id];
    else
        g->lhead[L] = g->lnext[id];
    if (g->lnext[id] >= 0)
        g->lprev[g->lnext[id]] = g->lprev[id];
    g->lcount[L]--;
}

/* How far from the query's centre (along one axis, query extent wq) the centre of an object of
 * extent wo <= s can lie when the overlap is at least t > 0. Centres of intervals overlapping by
 * o lie at most (wo + wq) / 2 - o apart. IoU >= t implies o >= t * max(wo, wq) along each axis;
 * IoS >= t implies o >= t * wo when the object is the smaller box and o >= t * wq otherwise.
 * The bounds below maximize over wo in [0, s]. */
static inline double overlap_reach(double wq, double s, double t, int ios)
{
    if (ios) {
        const double object_smaller = 0.5 * wq + (t < 0.5 ? s * (0.5 - t) : 0.0);
        const double query_smaller = 0.5 * s + wq * (0.5 - t);
        return object_smaller > query_smaller ? object_smaller : query_smaller;
    }
    if (s <= wq)
        return 0.5 * s + wq * (0.5 - t);
    if (t >= 0.5)
        return wq * (1.0 - t);
    return s * (0.5 - t) + 0.5 * wq;
}

/* Call visit(ctx, id, obj) for every object that could overlap box q positively (and some more);
 * stop when it returns nonzero. t > 0 means only an IoU (or IoS, with ios) of at least t matters,
 * which bounds the distance between centres and, for IoU, the object's size to [t, 1/t] times
 * the query's. */
static int grid_query(const grid_t *g, const double *q, double t, int ios, visit_fn visit, void *ctx)
{
    const double w = q[2] - q[0], h = q[3] - q[1], mq = w > h ? w : h;
    const double cx = 0.5 * (q[0] + q[2]), cy = 0.5 * (q[1] + q[3]);
    const double iou_t = ios ? 0.0 : t;
    const double min_size = iou_t * mq * (1.0 - 1e-9);
    const double max_size = iou_t > 0.0 ? mq / iou_t * (1.0 + 1e-9) : HUGE_VAL;
    int L;
    idx_t id;
    for (L = g->lo_level; L <= g->hi_level; L++) {
        double s, rx, ry;
        int64_t x0, x1, y0, y1, ix, iy;
        if (g->lcount[L] == 0)
            continue;
        s = g->size[L];
        if (L < NLEV - 1) {
            /* objects here have size in (size[L-1], size[L]] (level 0: [0, size[0]]) */
            if (s < min_size)
                continue;
            if (L > 0 && g->size[L - 1] > max_size)
                continue;
        }
        if (t > 0.0) {
            rx = overlap_reach(w, s, t, ios) + 1e-9 * (w + s) + g->slack[L];
            ry = overlap_reach(h, s, t, ios) + 1e-9 * (h + s) + g->slack[L];
            x0 = cell_of(cx - rx, g->ox, g->inv[L]);
            x1 = cell_of(cx + rx, g->ox, g->inv[L]);
            y0 = cell_of(cy - ry, g->oy, g->inv[L]);
            y1 = cell_of(cy + ry, g->oy, g->inv[L]);
        } else {
            rx = 0.5 * s + g->slack[L];
            x0 = cell_of(q[0] - rx, g->ox, g->inv[L]);
            x1 = cell_of(q[2] + rx, g->ox, g->inv[L]);
            y0 = cell_of(q[1] - rx, g->oy, g->inv[L]);
            y1 = cell_of(q[3] + rx, g->oy, g->inv[L]);
        }
        if (L == NLEV - 1 || ((double)(x1 - x0) + 1.0) * ((double)(y1 - y0) + 1.0) > (double)g->lcount[L]) {
            for (id = g->lhead[L]; id >= 0; id = g->lnext[id]) {
                if (visit(ctx, id, g->obj + id))
                    return 1;
            }
            continue;
        }
        for (iy = y0; iy <= y1; iy++) {
            for (ix = x0; ix <= x1; ix++) {
                for (id = grid_find(g, L, ix, iy); id >= 0; id = g->obj[id].next) {
                    if (visit(ctx, id, g->obj + id))
                        return 1;
                }
            }
        }
    }
    return 0;
}

/* ============================================================================================ */
/* NMS                                                                                          */
/* ============================================================================================ */

typedef struct {
    const double *q;
    double qa, thr;
    int ios;
} nms_ctx_t;

static int nms_visit(void *vc, idx_t id, const gobj_t *o)
{
    const nms_ctx_t *c = (const nms_ctx_t *)vc;
    (void)id;
    return overlap(o->b, o->area, c->q, c->qa, c->ios) > c->thr;
}

static int nms_kernel(const double *boxes, const double *scores, const int64_t *labels, idx_t n, double thr, int ios,
                      int64_t *keep, idx_t *nkeep)
{
    idx_t *order = malloc((size_t)(n + 1) * sizeof(idx_t));
    idx_t *v = malloc((size_t)(n + 1) * sizeof(idx_t));
    idx_t *tmp = malloc((size_t)(n + 1) * sizeof(idx_t));
    idx_t *runs = malloc((size_t)(n + 2) * sizeof(idx_t));
    double *area = malloc((size_t)(n + 1) * sizeof(double));
    char *kept = calloc((size_t)(n + 1), 1);
    grid_t g;
    nms_ctx_t ctx;
    idx_t i, r, nruns, maxrun = 0, k = 0;
    int st = ST_NOMEM;
    memset(&g, 0, sizeof g);
    if (!order || !v || !tmp || !runs || !area || !kept)
        goto done;
    for (i = 0; i < n; i++)
        area[i] = box_area(boxes + 4 * i);
    if ((st = order_desc(scores, NULL, n, order)) != ST_OK)
        goto done;
    memcpy(v, order, (size_t)n * sizeof(idx_t));
    if ((st = label_runs(v, tmp, n, labels, runs, &nruns)) != ST_OK)
        goto done;
    st = ST_NOMEM;
    for (r = 0; r < nruns; r++) {
        if (runs[r + 1] - runs[r] > maxrun)
            maxrun = runs[r + 1] - runs[r];
    }
    if (grid_alloc(&g, n, maxrun) != ST_OK)
        goto done;
    ctx.thr = thr;
    ctx.ios = ios;
    for (r = 0; r < nruns; r++) {
        const idx_t *ids = v + runs[r];
        const idx_t len = runs[r + 1] - runs[r];
        grid_begin(&g, boxes, ids, len);
        for (i = 0; i < len; i++) {
            const idx_t j = ids[i];
            ctx.q = boxes + 4 * j;
            ctx.qa = area[j];
            if (grid_query(&g, ctx.q, thr, ios, nms_visit, &ctx))
                continue;
            kept[j] = 1;
            if ((st = grid_insert(&g, j, ctx.q, area[j], 0)) != ST_OK)
                goto done;
        }
    }
    for (i = 0; i < n; i++) {
        if (kept[order[i]])
            keep[k++] = order[i];
    }
    *nkeep = k;
    st = ST_OK;
done:
    grid_free(&g);
    free(order);
    free(v);
    free(tmp);
    free(runs);
    free(area);
    free(kept);
    return st;
}

/* ============================================================================================ */
/* Greedy non-maximum merging                                                                   */
/* ============================================================================================ */

typedef struct {
    const double *q;
    double qa, thr;
    int ios;
    idx_t best, best_rank;
} nmm_ctx_t;

static int nmm_visit(void *vc, idx_t id, const gobj_t *o)
{
    nmm_ctx_t *c = (nmm_ctx_t *)vc;
    /* the first kept box (in visiting order, o->tag) that the box matches takes it */
    if (o->tag < c->best_rank && overlap(o->b, o->area, c->q, c->qa, c->ios) >= c->thr) {
        c->best = id;
        c->best_rank = o->tag;
    }
    return 0;
}

static int nmm_kernel(const double *boxes, const double *scores, const int64_t *labels, idx_t n, double thr, int ios,
                      int64_t *keep, int64_t *members, int64_t *offsets, double *unions, idx_t *ngroups)
{
    idx_t *order = malloc((size_t)(n + 1) * sizeof(idx_t));
    idx_t *v = malloc((size_t)(n + 1) * sizeof(idx_t));
    idx_t *tmp = malloc((size_t)(n + 1) * sizeof(idx_t));
    idx_t *runs = malloc((size_t)(n + 2) * sizeof(idx_t));
    idx_t *rank = malloc((size_t)(n + 1) * sizeof(idx_t));
    idx_t *owner = malloc((size_t)(n + 1) * sizeof(idx_t));
    double *area = malloc((size_t)(n + 1) * sizeof(double));
    grid_t g;
    nmm_ctx_t ctx;
    idx_t i, r, nruns, maxrun = 0, ng = 0;
    int st = ST_NOMEM;
    memset(&g, 0, sizeof g);
    offsets[0] = 0;
    if (!order || !v || !tmp || !runs || !rank || !owner || !area)
        goto done;
    for (i = 0; i < n; i++)
        area[i] = box_area(boxes + 4 * i);
    if ((st = order_desc(scores, NULL, n, order)) != ST_OK)
        goto done;
    {
        /* SAHI breaks ties in score by x1, y1, x2, y2 (then index): re-sort each run of equal scores */
        const sahi_key_t key = {scores, boxes};
        idx_t a = 0, z;
        while (a < n) {
            for (z = a + 1; z < n && scores[order[z]] == scores[order[a]]; z++)
                ;
            if (z - a > 1)
                sort_sahi(order + a, tmp, z - a, &key);
            a = z;
        }
    }
    for (i = 0; i < n; i++)
        rank[order[i]] = i;
    memcpy(v, order, (size_t)n * sizeof(idx_t));
    if ((st = label_runs(v, tmp, n, labels, runs, &nruns)) != ST_OK)
        goto done;
    st = ST_NOMEM;
    if (thr <= 0.0) {
        /* every pair matches (SAHI's matches_all_pairs): each label is one group */
        for (r = 0; r < nruns; r++) {
            for (i = runs[r]; i < runs[r + 1]; i++)
                owner[v[i]] = v[runs[r]];
        }
    } else {
        for (r = 0; r < nruns; r++) {
            if (runs[r + 1] - runs[r] > maxrun)
                maxrun = runs[r + 1] - runs[r];
        }
        if (grid_alloc(&g, n, maxrun) != ST_OK)
            goto done;
        ctx.thr = thr;
        ctx.ios = ios;
        for (r = 0; r < nruns; r++) {
            const idx_t *ids = v + runs[r];
            const idx_t len = runs[r + 1] - runs[r];
            grid_begin(&g, boxes, ids, len);
            for (i = 0; i < len; i++) {
                const idx_t j = ids[i];
                ctx.q = boxes + 4 * j;
                ctx.qa = area[j];
                ctx.best = -1;
                ctx.best_rank = INT64_MAX;
                grid_query(&g, ctx.q, thr, ios, nmm_visit, &ctx);
                if (ctx.best >= 0) {
                    owner[j] = ctx.best;
                } else {
                    owner[j] = j;
                    if ((st = grid_insert(&g, j, ctx.q, area[j], rank[j])) != ST_OK)
                        goto done;
                }
            }
        }
    }
    /* Groups in visiting order of their kept box; members in visiting order, kept box first. */
    for (i = 0; i < n; i++) {
        const idx_t j = order[i];
        if (owner[j] == j) {
            rank[j] = ng; /* rank is free now: reuse it as the group id of kept boxes */
            keep[ng++] = j;
        }
    }
    for (i = 0; i <= ng; i++)
        offsets[i] = 0;
    for (i = 0; i < n; i++)
        offsets[rank[owner[i]] + 1]++;
    for (i = 0; i < ng; i++)
        offsets[i + 1] += offsets[i];
    memcpy(tmp, offsets, (size_t)ng * sizeof(idx_t));
    for (i = 0; i < n; i++) {
        const idx_t j = order[i];
        members[tmp[rank[owner[j]]]++] = j;
    }
    /* each group's box: the union of its members */
    for (i = 0; i < ng; i++) {
        double *u = unions + 4 * i;
        idx_t k;
        memcpy(u, boxes + 4 * members[offsets[i]], 4 * sizeof(double));
        for (k = offsets[i] + 1; k < offsets[i + 1]; k++) {
            const double *b = boxes + 4 * members[k];
            if (b[0] < u[0])
                u[0] = b[0];
            if (b[1] < u[1])
                u[1] = b[1];
            if (b[2] > u[2])
                u[2] = b[2];
            if (b[3] > u[3])
                u[3] = b[3];
        }
    }
    *ngroups = ng;
    st = ST_OK;
done:
    grid_free(&g);
    free(order);
    free(v);
    free(tmp);
    free(runs);
    free(rank);
    free(owner);
    free(area);
    return st;
}

/* ============================================================================================ */
/* Weighted Boxes Fusion                                                                        */
/* ============================================================================================ */

typedef struct {
    const double *q;
    double qa, thr, best_iou;
    idx_t best;
} wbf_ctx_t;

static int wbf_visit(void *vc, idx_t id, const gobj_t *o)
{
    wbf_ctx_t *c = (wbf_ctx_t *)vc;
    const double iou = overlap(o->b, o->area, c->q, c->qa, 0);
    /* ensemble-boxes: argmax over fused boxes (first maximum), matched when above the threshold */
    if (iou > c->thr && (c->best < 0 || iou > c->best_iou || (iou == c->best_iou && id < c->best))) {
        c->best = id;
        c->best_iou = iou;
    }
    return 0;
}

typedef struct {
    idx_t *v, *tmp, *runs, *first, *rorder, *mnext, *mhead, *mtail, *count, *corder;
    double *ws, *fused, *farea, *conf, *wsum, *wmax, *score, *weight, *final, *wbuf;
    float *acc;
    int64_t *clabel, *stamp;
} wbf_mem_t;

static void wbf_mem_free(wbf_mem_t *m)
{
    free(m->v);
    free(m->tmp);
    free(m->runs);
    free(m->first);
    free(m->rorder);
    free(m->mnext);
    free(m->mhead);
    free(m->mtail);
    free(m->count);
    free(m->corder);
    free(m->ws);
    free(m->fused);
    free(m->farea);
    free(m->conf);
    free(m->wsum);
    free(m->wmax);
    free(m->score);
    free(m->weight);
    free(m->final);
    free(m->wbuf);
    free(m->acc);
    free(m->clabel);
    free(m->stamp);
}

static int wbf_kernel(const double *boxes, const double *scores, const int64_t *labels, const int64_t *models, idx_t n,
                      const double *weights, idx_t nw, double thr, int conf_type, int allows_overflow,
                      double *out_boxes, double *out_scores, int64_t *out_labels, idx_t *nout)
{
    wbf_mem_t m;
    grid_t g;
    wbf_ctx_t ctx;
    idx_t i, r, nruns, maxrun = 0, nc = 0;
    double w_total, w_max = 0.0;
    int st = ST_NOMEM, d;
    const size_t N = (size_t)n + 2, W = (size_t)nw + 1;
    memset(&m, 0, sizeof m);
    memset(&g, 0, sizeof g);
    m.v = malloc(N * sizeof(idx_t));
    m.tmp = malloc(N * sizeof(idx_t));
    m.runs = malloc(N * sizeof(idx_t));
    m.first = malloc(N * sizeof(idx_t));
    m.rorder = malloc(N * sizeof(idx_t));
    m.mnext = malloc(N * sizeof(idx_t));
    m.mhead = malloc(N * sizeof(idx_t));
    m.mtail = malloc(N * sizeof(idx_t));
    m.count = malloc(N * sizeof(idx_t));
    m.corder = malloc(N * sizeof(idx_t));
    m.ws = malloc(N * sizeof(double));
    m.fused = malloc(4 * N * sizeof(double));
    m.farea = malloc(N * sizeof(double));
    m.conf = malloc(N * sizeof(double));
    m.wsum = malloc(N * sizeof(double));
    m.wmax = malloc(N * sizeof(double));
    m.score = malloc(N * sizeof(double));
    m.weight = malloc(N * sizeof(double));
    m.final = malloc(N * sizeof(double));
    m.wbuf = malloc(W * sizeof(double));
    m.acc = malloc(4 * N * sizeof(float));
    m.clabel = malloc(N * sizeof(int64_t));
    m.stamp = calloc(W, sizeof(int64_t));
    if (!m.v || !m.tmp || !m.runs || !m.first || !m.rorder || !m.mnext || !m.mhead || !m.mtail || !m.count ||
        !m.corder || !m.ws || !m.fused || !m.farea || !m.conf || !m.wsum || !m.wmax || !m.score || !m.weight ||
        !m.final || !m.wbuf || !m.acc || !m.clabel || !m.stamp)
        goto done;

    for (i = 0; i < n; i++) {
        m.ws[i] = scores[i] * weights[models[i]];
        m.v[i] = i;
    }
    /* Labels in order of first appearance (ensemble-boxes' dict order); within a label, boxes by
     * descending weighted score, ties by index. */
    if ((st = label_runs(m.v, m.tmp, n, labels, m.runs, &nruns)) != ST_OK)
        goto done;
    for (r = 0; r < nruns; r++) {
        const idx_t len = m.runs[r + 1] - m.runs[r];
        m.first[r] = m.v[m.runs[r]]; /* runs keep index order: the label's first appearance */
        m.rorder[r] = r;
        if (len > maxrun)
            maxrun = len;
        if ((st = order_desc(m.ws, m.v + m.runs[r], len, m.tmp)) != ST_OK)
            goto done;
        memcpy(m.v + m.runs[r], m.tmp, (size_t)len * sizeof(idx_t));
    }
    st = ST_NOMEM;
    {
        const ikey_t key = {m.first};
        sort_iasc(m.rorder, m.tmp, nruns, &key);
    }
    /* a run inserts at most once per box: a new fused box or a moved one */
    if (grid_alloc(&g, n, maxrun) != ST_OK)
        goto done;
    ctx.thr = thr;

    for (r = 0; r < nruns; r++) {
        const idx_t *ids = m.v + m.runs[m.rorder[r]];
        const idx_t len = m.runs[m.rorder[r] + 1] - m.runs[m.rorder[r]];
        grid_begin(&g, boxes, ids, len);
        for (i = 0; i < len; i++) {
            const idx_t j = ids[i];
            const double *b = boxes + 4 * j;
            const double wsj = m.ws[j], wj = weights[models[j]];
            idx_t c;
            ctx.q = b;
            ctx.qa = box_area(b);
            ctx.best = -1;
            ctx.best_iou = thr;
            grid_query(&g, b, thr, 0, wbf_visit, &ctx);
            c = ctx.best;
            if (c < 0) {
                c = nc++;
                for (d = 0; d < 4; d++) {
                    m.fused[4 * c + d] = b[d];
                    m.acc[4 * c + d] = (float)(wsj * b[d]);
                }
                m.farea[c] = ctx.qa;
                m.conf[c] = wsj;
                m.wsum[c] = wj;
                m.wmax[c] = wsj;
                m.score[c] = wsj;
                m.weight[c] = wj;
                m.count[c] = 1;
                m.clabel[c] = labels[j];
                m.mhead[c] = m.mtail[c] = j;
                m.mnext[j] = -1;
                if ((st = grid_insert(&g, c, b, ctx.qa, 0)) != ST_OK)
                    goto done;
                continue;
            }
            /* ensemble-boxes' get_weighted_box, which keeps the fused box in float32 */
            for (d = 0; d < 4; d++)
                m.acc[4 * c + d] = (float)((double)m.acc[4 * c + d] + wsj * b[d]);
            m.conf[c] += wsj;
            m.wsum[c] += wj;
            if (wsj > m.wmax[c])
                m.wmax[c] = wsj;
            m.count[c]++;
            m.mnext[m.mtail[c]] = j;
            m.mnext[j] = -1;
            m.mtail[c] = j;
            grid_remove(&g, c);
            if (m.conf[c] > 0.0) {
                for (d = 0; d < 4; d++)
                    m.fused[4 * c + d] = (double)(float)((double)m.acc[4 * c + d] / m.conf[c]);
            } /* else every member so far scored 0: ensemble-boxes divides 0 by 0, we keep the box */
            m.farea[c] = box_area(m.fused + 4 * c);
            m.score[c] = conf_type == CONF_MAX ? (double)(float)m.wmax[c]
                                               : (double)(float)(m.conf[c] / (double)m.count[c]);
            m.weight[c] = (double)(float)m.wsum[c];
            if ((st = grid_insert(&g, c, m.fused + 4 * c, m.farea[c], 0)) != ST_OK)
                goto done;
        }
    }

    /* Rescale the confidences as ensemble-boxes does, summing weights as np.sum does. */
    w_total = pairwise_sum(weights, nw);
    for (i = 0; i < nw; i++) {
        if (i == 0 || weights[i] > w_max)
            w_max = weights[i];
    }
    for (i = 0; i < nc; i++) {
        double s = m.score[i];
        const idx_t cnt = m.count[i];
        if (conf_type == CONF_BOX_AND_MODEL_AVG || conf_type == CONF_ABSENT_MODEL_AWARE_AVG) {
            idx_t j, k = 0, t;
            const int want_present = conf_type == CONF_BOX_AND_MODEL_AVG;
            for (j = m.mhead[i]; j >= 0; j = m.mnext[j])
                m.stamp[models[j]] = i + 1;
            for (t = 0; t < nw; t++) {
                if ((m.stamp[t] == i + 1) == want_present)
                    m.wbuf[k++] = weights[t];
            }
            if (want_present) {
                s = s * (double)cnt / m.weight[i];
                s = s * pairwise_sum(m.wbuf, k) / w_total;
            } else {
                s = s * (double)cnt / (m.weight[i] + pairwise_sum(m.wbuf, k));
            }
        } else if (conf_type == CONF_MAX) {
            s = s / w_max;
        } else if (!allows_overflow) {
            s = s * (double)(cnt < nw ? cnt : nw) / w_total;
        } else {
            s = s * (double)cnt / w_total;
        }
        m.final[i] = s;
    }
    if ((st = order_desc(m.final, NULL, nc, m.corder)) != ST_OK)
        goto done;
    for (i = 0; i < nc; i++) {
        const idx_t c = m.corder[i];
        for (d = 0; d < 4; d++)
            out_boxes[4 * i + d] = m.fused[4 * c + d];
        out_scores[i] = m.final[c];
        out_labels[i] = m.clabel[c];
    }
    *nout = nc;
    st = ST_OK;
done:
    grid_free(&g);
    wbf_mem_free(&m);
    return st;
}

/* ============================================================================================ */
/* Python entry points                                                                          */
/* ============================================================================================ */

static const char *const METRICS[] = {"iou", "ios"};
static const char *const CONF_TYPES[] = {"avg", "max", "box_and_model_avg", "absent_model_aware_avg"};

static PyObject *status_to_result(int st, idx_t count)
{
    if (st == ST_NOMEM)
        return PyErr_NoMemory();
    if (st != ST_OK) {
        PyErr_SetString(PyExc_SystemError, "edgetile merge kernel: internal grid capacity exceeded (a bug)");
        return NULL;
    }
    return PyLong_FromLongLong((long long)count);
}

PyDoc_STRVAR(nms_doc, "nms(boxes, scores, labels, iou_thr, metric, keep) -> int\n--\n\n"
                      "Non-maximum suppression; see _merge_ref.nms. Writes keep[:k], returns k.");

static PyObject *py_nms(PyObject *self, PyObject *args)
{
    PyObject *o_boxes, *o_scores, *o_labels, *o_thr, *o_metric, *o_keep, *ret = NULL;
    arr_t boxes = {0}, scores = {0}, labels = {0}, keep = {0};
    Py_ssize_t shape[2] = {-1, 4};
    double thr;
    idx_t n, nkeep = 0;
    int ios, st;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOO:nms", &o_boxes, &o_scores, &o_labels, &o_thr, &o_metric, &o_keep))
        return NULL;
    if (get_array(o_boxes, "boxes", 'd', 2, shape, 0, &boxes) < 0)
        goto done;
    n = boxes.view.shape[0];
    shape[0] = n;
    if (get_array(o_scores, "scores", 'd', 1, shape, 0, &scores) < 0 ||
        get_array(o_labels, "labels", 'q', 1, shape, 0, &labels) < 0 ||
        check_boxes("boxes", boxes.view.buf, n, 0) < 0 ||
        check_values("scores", scores.view.buf, n, 0, 0.0, 0.0, NULL) < 0 || get_threshold(o_thr, "iou_thr", &thr) < 0 ||
        (ios = get_choice(o_metric, "metric", METRICS, 2, "'iou', 'ios'")) < 0 ||
        get_array(o_keep, "keep", 'q', 1, shape, 1, &keep) < 0)
        goto done;
    Py_BEGIN_ALLOW_THREADS
    st = nms_kernel(boxes.view.buf, scores.view.buf, labels.view.buf, n, thr, ios, keep.view.buf, &nkeep);
    Py_END_ALLOW_THREADS
    ret = status_to_result(st, nkeep);
done:
    arr_release(&boxes);
    arr_release(&scores);
    arr_release(&labels);
    arr_release(&keep);
    return ret;
}

PyDoc_STRVAR(nmm_doc, "greedy_nmm(boxes, scores, labels, match_thr, metric, keep, members, offsets, unions) -> int\n--\n\n"
                      "Greedy non-maximum merging; see _merge_ref.greedy_nmm. Returns the number of groups.");

static PyObject *py_greedy_nmm(PyObject *self, PyObject *args)
{
    PyObject *o_boxes, *o_scores, *o_labels, *o_thr, *o_metric, *o_keep, *o_members, *o_offsets, *o_unions,
        *ret = NULL;
    arr_t boxes = {0}, scores = {0}, labels = {0}, keep = {0}, members = {0}, offsets = {0}, unions = {0};
    Py_ssize_t shape[2] = {-1, 4};
    double thr;
    idx_t n, ng = 0;
    int ios, st;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOOOO:greedy_nmm", &o_boxes, &o_scores, &o_labels, &o_thr, &o_metric, &o_keep,
                          &o_members, &o_offsets, &o_unions))
        return NULL;
    if (get_array(o_boxes, "boxes", 'd', 2, shape, 0, &boxes) < 0)
        goto done;
    n = boxes.view.shape[0];
    shape[0] = n;
    if (get_array(o_scores, "scores", 'd', 1, shape, 0, &scores) < 0 ||
        get_array(o_labels, "labels", 'q', 1, shape, 0, &labels) < 0 ||
        check_boxes("boxes", boxes.view.buf, n, 0) < 0 ||
        check_values("scores", scores.view.buf, n, 0, 0.0, 0.0, NULL) < 0 ||
        get_threshold(o_thr, "match_thr", &thr) < 0 ||
        (ios = get_choice(o_metric, "metric", METRICS, 2, "'iou', 'ios'")) < 0 ||
        get_array(o_keep, "keep", 'q', 1, shape, 1, &keep) < 0 ||
        get_array(o_members, "members", 'q', 1, shape, 1, &members) < 0)
        goto done;
    shape[0] = n + 1;
    if (get_array(o_offsets, "offsets", 'q', 1, shape, 1, &offsets) < 0)
        goto done;
    shape[0] = n;
    if (get_array(o_unions, "unions", 'd', 2, shape, 1, &unions) < 0)
        goto done;
    Py_BEGIN_ALLOW_THREADS
    st = nmm_kernel(boxes.view.buf, scores.view.buf, labels.view.buf, n, thr, ios, keep.view.buf, members.view.buf,
                    offsets.view.buf, unions.view.buf, &ng);
    Py_END_ALLOW_THREADS
    ret = status_to_result(st, ng);
done:
    arr_release(&boxes);
    arr_release(&scores);
    arr_release(&labels);
    arr_release(&keep);
    arr_release(&members);
    arr_release(&offsets);
    arr_release(&unions);
    return ret;
}

PyDoc_STRVAR(wbf_doc, "wbf(boxes, scores, labels, models, weights, iou_thr, conf_type, allows_overflow, out_boxes, "
                      "out_scores, out_labels) -> int\n--\n\n"
                      "Weighted Boxes Fusion of prefiltered boxes; see _merge_ref.wbf. Returns the number of fused boxes.");

static PyObject *py_wbf(PyObject *self, PyObject *args)
{
    PyObject *o_boxes, *o_scores, *o_labels, *o_models, *o_weights, *o_thr, *o_conf, *o_out_boxes, *o_out_scores,
        *o_out_labels, *ret = NULL;
    arr_t boxes = {0}, scores = {0}, labels = {0}, models = {0}, weights = {0}, out_boxes = {0}, out_scores = {0},
          out_labels = {0};
    Py_ssize_t shape[2] = {-1, 4};
    double thr;
    idx_t n, nw, i, nout = 0;
    int conf_type, allows_overflow, st;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOOpOOO:wbf", &o_boxes, &o_scores, &o_labels, &o_models, &o_weights, &o_thr,
                          &o_conf, &allows_overflow, &o_out_boxes, &o_out_scores, &o_out_labels))
        return NULL;
    if (get_array(o_boxes, "boxes", 'd', 2, shape, 0, &boxes) < 0)
        goto done;
    n = boxes.view.shape[0];
    shape[0] = n;
    if (get_array(o_scores, "scores", 'd', 1, shape, 0, &scores) < 0 ||
        get_array(o_labels, "labels", 'q', 1, shape, 0, &labels) < 0 ||
        get_array(o_models, "models", 'q', 1, shape, 0, &models) < 0)
        goto done;
    shape[0] = -1;
    if (get_array(o_weights, "weights", 'd', 1, shape, 0, &weights) < 0)
        goto done;
    nw = weights.view.shape[0];
    if (check_boxes("boxes", boxes.view.buf, n, 1) < 0 ||
        check_values("scores", scores.view.buf, n, 1, 0.0, 1.0, "[0, 1]") < 0 ||
        check_values("weights", weights.view.buf, nw, 1, MIN_WEIGHT, MAX_WEIGHT, "[1e-06, 1e+06]") < 0)
        goto done;
    for (i = 0; i < n; i++) {
        const int64_t t = ((const int64_t *)models.view.buf)[i];
        if (t < 0 || t >= nw) {
            PyErr_Format(PyExc_ValueError, "models must index weights, in [0, %lld]; found %lld at models[%lld]",
                         (long long)nw - 1, (long long)t, (long long)i);
            goto done;
        }
    }
    if (get_threshold(o_thr, "iou_thr", &thr) < 0 ||
        (conf_type = get_choice(o_conf, "conf_type", CONF_TYPES, 4,
                                "'avg', 'max', 'box_and_model_avg', 'absent_model_aware_avg'")) < 0)
        goto done;
    shape[0] = n;
    if (get_array(o_out_boxes, "out_boxes", 'd', 2, shape, 1, &out_boxes) < 0 ||
        get_array(o_out_scores, "out_scores", 'd', 1, shape, 1, &out_scores) < 0 ||
        get_array(o_out_labels, "out_labels", 'q', 1, shape, 1, &out_labels) < 0)
        goto done;
    Py_BEGIN_ALLOW_THREADS
    st = wbf_kernel(boxes.view.buf, scores.view.buf, labels.view.buf, models.view.buf, n, weights.view.buf, nw, thr,
                    conf_type, allows_overflow, out_boxes.view.buf, out_scores.view.buf, out_labels.view.buf, &nout);
    Py_END_ALLOW_THREADS
    ret = status_to_result(st, nout);
done:
    arr_release(&boxes);
    arr_release(&scores);
    arr_release(&labels);
    arr_release(&models);
    arr_release(&weights);
    arr_release(&out_boxes);
    arr_release(&out_scores);
    arr_release(&out_labels);
    return ret;
}

static PyMethodDef merge_methods[] = {
    {"nms", py_nms, METH_VARARGS, nms_doc},
    {"greedy_nmm", py_greedy_nmm, METH_VARARGS, nmm_doc},
    {"wbf", py_wbf, METH_VARARGS, wbf_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef merge_module = {
    PyModuleDef_HEAD_INIT,
    "edgetile.runtime._merge",
    "C kernels of edgetile's merge step (NMS, greedy NMM, WBF); use edgetile.runtime.merge.",
    0,
    merge_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__merge(void) { return PyModule_Create(&merge_module); }
