/* Compiled reader for the rows of a BVH file's MOTION section.
 *
 * motionode.bvh calls parse_rows() on the text after the "Frame Time:" line. It
 * handles the plain form real files use: ASCII digits, signs, '.', exponents,
 * spaces and tabs between values, and LF, CRLF or CR line ends. Anything else
 * (other characters, or a token that is not a plain decimal number) is left to the
 * Python reader, which owns the full rules and the error messages.
 *
 * Every value equals Python's float() of its token bit for bit. A token whose
 * decimal mantissa fits in 2^53 with a power of ten of at most 22 is converted with
 * one IEEE multiply or divide of two exact doubles, which is correctly rounded
 * (Clinger's fast path); any other token goes to PyOS_string_to_double, which is
 * what float() itself calls.
 *
 * TODO: values with more than 15 or 16 significant digits, as shortest round-trip
 * output often has (our own writer's), all take PyOS_string_to_double; such files
 * read at about a third of the usual speed. An Eisel-Lemire path would keep them
 * fast.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef __FAST_MATH__
#error "_bvhmotion must not be built with -ffast-math: values would not round as float()"
#endif

/* The fast path needs each multiply or divide rounded once, to double. */
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD != 0
#define FAST_PATH 0
#else
#define FAST_PATH 1
#endif

#define MAX_EXACT_MANTISSA ((uint64_t)1 << 53)
#define MAX_MANTISSA_DIGITS 19  /* any 19 decimal digits fit in a uint64 */
#define EXPONENT_CAP 100000     /* past this every nonzero value is 0 or inf */

static const double POW10[] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};
#define MAX_POW10 22

/* Byte classes: separators inside a row, line ends, characters of a token, and
 * characters only the Python reader judges (they are whitespace or line breaks
 * to str.split()/str.splitlines(), or not ASCII). */
enum { C_TOKEN = 0, C_BLANK, C_EOL, C_OTHER };

static unsigned char byte_class[256];

static void init_classes(void)
{
    for (int c = 0; c < 256; c++) {
        if (c == ' ' || c == '\t')
            byte_class[c] = C_BLANK;
        else if (c == '\n' || c == '\r')
            byte_class[c] = C_EOL;
        else if (c < 0x20 || c >= 0x80)
            byte_class[c] = C_OTHER;
        else
            byte_class[c] = C_TOKEN;
    }
}

typedef enum { NUM_DONE, NUM_DEFER, NUM_BAD } NumResult;

static inline int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static inline int ends_token(const unsigned char *s, size_t n, size_t i)
{
    return i >= n || byte_class[s[i]] == C_BLANK || byte_class[s[i]] == C_EOL;
}

/* Read the number starting at s[*pos]: [+-] (digits [. digits] | . digits)
 * [(e|E) [+-] digits], followed by a blank, a line end or the end of the text.
 * NUM_DONE stores its value; NUM_DEFER means it is well formed but needs the
 * slow, exact conversion; NUM_BAD means it is not of this form. On success *pos
 * moves past the token. */
static NumResult read_number(const unsigned char *s, size_t n, size_t *pos,
                             double *value)
{
    size_t i = *pos;
    int negative = 0, seen_digit = 0, exact = 1, digits = 0;
    uint64_t mantissa = 0;
    int64_t scale = 0; /* value = mantissa * 10^scale */

    if (i < n && (s[i] == '+' || s[i] == '-')) {
        negative = s[i] == '-';
        i++;
    }
    for (; i < n && is_digit(s[i]); i++) {
        seen_digit = 1;
        if (mantissa == 0 && s[i] == '0')
            continue;
        if (digits < MAX_MANTISSA_DIGITS) {
            mantissa = mantissa * 10 + (uint64_t)(s[i] - '0');
            digits++;
        }
        else {
            exact = 0;
        }
    }
    if (i < n && s[i] == '.') {
        i++;
        for (; i < n && is_digit(s[i]); i++) {
            seen_digit = 1;
            if (mantissa == 0 && s[i] == '0') {
                scale--;
                continue;
            }
            if (digits < MAX_MANTISSA_DIGITS) {
                mantissa = mantissa * 10 + (uint64_t)(s[i] - '0');
                digits++;
                scale--;
            }
            else {
                exact = 0;
            }
        }
    }
    if (!seen_digit)
        return NUM_BAD;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        int exp_negative = 0;
        int64_t exponent = 0;
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) {
            exp_negative = s[i] == '-';
            i++;
        }
        if (i >= n || !is_digit(s[i]))
            return NUM_BAD;
        for (; i < n && is_digit(s[i]); i++) {
            if (exponent < EXPONENT_CAP)
                exponent = exponent * 10 + (s[i] - '0');
        }
        if (exponent >= EXPONENT_CAP)
            exact = 0;
        scale += exp_negative ? -exponent : exponent;
    }
    if (!ends_token(s, n, i))
        return NUM_BAD;
    *pos = i;

    if (!exact)
        return NUM_DEFER;
    if (mantissa == 0) {
        *value = negative ? -0.0 : 0.0;
        return NUM_DONE;
    }
    if (!FAST_PATH || mantissa > MAX_EXACT_MANTISSA)
        return NUM_DEFER;
    if (scale > MAX_POW10 && scale <= MAX_POW10 + 16) {
        /* 12e30 is 1200000000e22: still exact if the wider mantissa fits. */
        for (; scale > MAX_POW10; scale--) {
            mantissa *= 10;
            if (mantissa > MAX_EXACT_MANTISSA)
                return NUM_DEFER;
        }
    }
    if (scale < -MAX_POW10 || scale > MAX_POW10)
        return NUM_DEFER;
    double v = (double)mantissa;
    v = scale < 0 ? v / POW10[-scale] : v * POW10[scale];
    *value = negative ? -v : v;
    return NUM_DONE;
}

typedef struct {
    size_t index;  /* into the values */
    size_t offset; /* of the token in the text */
    size_t length;
} Deferred;

typedef enum { SCAN_OK, SCAN_WIDTH, SCAN_OTHER, SCAN_NO_MEMORY } ScanResult;

typedef struct {
    const unsigned char *text;
    size_t size, width;
    double *values;
    size_t capacity, rows;
    Deferred *deferred;
    size_t num_deferred, deferred_capacity;
    size_t bad_line, bad_count; /* for SCAN_WIDTH */
} Scan;

static int grow(void **buf, size_t *capacity, size_t need, size_t item)
{
    size_t cap = *capacity ? *capacity : 1024;
    while (cap < need) {
        if (cap > SIZE_MAX / 2 / item)
            return -1;
        cap *= 2;
    }
    void *p = realloc(*buf, cap * item);
    if (p == NULL)
        return -1;
    *buf = p;
    *capacity = cap;
    return 0;
}

/* Split the text into rows of width numbers; needs no Python objects, so it runs
 * without the GIL. Lines are counted as str.splitlines() counts them. */
static ScanResult scan_rows(Scan *sc)
{
    const unsigned char *s = sc->text;
    const size_t n = sc->size, width = sc->width;
    size_t i = 0, line = 0;

    /* Most files spend 6 to 10 characters on a value; growing covers the rest. */
    if (width && grow((void **)&sc->values, &sc->capacity, n / 6 + width,
                      sizeof(double)))
        return SCAN_NO_MEMORY;
    while (i < n) {
        size_t count = 0, base = sc->rows * width;
        int bad = 0;

        if (base + width > sc->capacity &&
            grow((void **)&sc->values, &sc->capacity, base + width, sizeof(double)))
            return SCAN_NO_MEMORY;
        for (;;) {
            while (i < n && byte_class[s[i]] == C_BLANK)
                i++;
            if (i >= n || byte_class[s[i]] == C_EOL)
                break;
            if (byte_class[s[i]] == C_OTHER)
                return SCAN_OTHER;
            size_t start = i;
            double v = 0.0;
            NumResult r = bad ? NUM_BAD : read_number(s, n, &i, &v);
            if (r == NUM_BAD) {
                /* Keep counting: a row of the wrong length is reported as such
                 * even when it also holds a bad token. */
                bad = 1;
                while (i < n && byte_class[s[i]] == C_TOKEN)
                    i++;
                if (i < n && byte_class[s[i]] == C_OTHER)
                    return SCAN_OTHER;
            }
            else if (count < width) {
                sc->values[base + count] = v;
                if (r == NUM_DEFER) {
                    if (sc->num_deferred == sc->deferred_capacity &&
                        grow((void **)&sc->deferred, &sc->deferred_capacity,
                             sc->num_deferred + 1, sizeof(Deferred)))
                        return SCAN_NO_MEMORY;
                    Deferred *d = &sc->deferred[sc->num_deferred++];
                    d->index = base + count;
                    d->offset = start;
                    d->length = i - start;
                }
            }
            count++;
        }
        if (count) {
            if (count != width) {
                sc->bad_line = line;
                sc->bad_count = count;
                return SCAN_WIDTH;
            }
            if (bad)
                return SCAN_OTHER;
            sc->rows++;
        }
        if (i < n)
            i += (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n') ? 2 : 1;
        line++;
    }
    return SCAN_OK;
}

/* Convert the deferred tokens exactly as float() does; needs the GIL. Returns 0,
 * or -1 if one of them is not a number to Python after all (no error set). */
static int convert_deferred(Scan *sc)
{
    char small[64];
    for (size_t k = 0; k < sc->num_deferred; k++) {
        const Deferred *d = &sc->deferred[k];
        char *buf = d->length < sizeof(small) ? small : PyMem_Malloc(d->length + 1);
        if (buf == NULL) {
            PyErr_NoMemory();
            return -2;
        }
        memcpy(buf, sc->text + d->offset, d->length);
        buf[d->length] = '\0';
        char *end = NULL;
        double v = PyOS_string_to_double(buf, &end, NULL);
        int ok = !(v == -1.0 && PyErr_Occurred()) && end == buf + d->length;
        if (buf != small)
            PyMem_Free(buf);
        if (!ok) {
            PyErr_Clear();
            return -1;
        }
        sc->values[d->index] = v;
    }
    return 0;
}

PyDoc_STRVAR(parse_rows_doc,
"parse_rows(text, start, width, /)\n--\n\n"
"Parse the motion rows of text[start:] (a str or bytes-like object).\n\n"
"Blank lines are skipped; every other line must hold width numbers. Returns a\n"
"tuple (values, rows, line, count):\n\n"
"- (bytearray of rows * width float64 values, rows, -1, 0) when every row parses;\n"
"- (None, 0, line, count) when the line with index line (0 for the line at\n"
"  start) holds count values instead of width;\n"
"- (None, 0, -1, 0) when the text holds anything beyond plain decimal numbers,\n"
"  blanks and line ends; the caller then uses its general reader.\n");

/* The answer for input that parse_rows leaves to the caller. */
static PyObject *no_rows(Py_ssize_t line, Py_ssize_t count)
{
    return Py_BuildValue("(Onnn)", Py_None, (Py_ssize_t)0, line, count);
}

static PyObject *parse_rows(PyObject *module, PyObject *args)
{
    PyObject *obj;
    Py_ssize_t start, width;
    Py_buffer view = {0};
    const unsigned char *data;
    Py_ssize_t size;

    (void)module;
    if (!PyArg_ParseTuple(args, "Onn:parse_rows", &obj, &start, &width))
        return NULL;
    if (width < 0) {
        PyErr_Format(PyExc_ValueError, "width: expected >= 0, got %zd", width);
        return NULL;
    }
    if (PyUnicode_Check(obj)) {
#if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_READY(obj) < 0)
            return NULL;
#endif
        /* Wider strings hold characters this parser leaves to Python anyway. */
        if (PyUnicode_KIND(obj) != PyUnicode_1BYTE_KIND)
            return no_rows(-1, 0);
        data = PyUnicode_1BYTE_DATA(obj);
        size = PyUnicode_GET_LENGTH(obj);
    }
    else {
        if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0)
            return NULL;
        data = view.buf;
        size = view.len;
    }
    if (start < 0 || start > size) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "start: expected 0 to %zd, got %zd", size,
                     start);
        return NULL;
    }

    Scan sc = {0};
    sc.text = data + start;
    sc.size = (size_t)(size - start);
    sc.width = (size_t)width;
    ScanResult r;
    Py_BEGIN_ALLOW_THREADS
    r = scan_rows(&sc);
    Py_END_ALLOW_THREADS

    PyObject *result = NULL;
    if (r == SCAN_NO_MEMORY) {
        PyErr_NoMemory();
    }
    else if (r == SCAN_WIDTH) {
        result = no_rows((Py_ssize_t)sc.bad_line, (Py_ssize_t)sc.bad_count);
    }
    else if (r == SCAN_OTHER) {
        result = no_rows(-1, 0);
    }
    else {
        int converted = convert_deferred(&sc);
        if (converted == -1) {
            result = no_rows(-1, 0);
        }
        else if (converted == 0) {
            size_t count = sc.rows * sc.width;
            PyObject *values = PyByteArray_FromStringAndSize(
                (const char *)sc.values, (Py_ssize_t)(count * sizeof(double)));
            if (values != NULL) {
                result = Py_BuildValue("(Nnnn)", values, (Py_ssize_t)sc.rows,
                                       (Py_ssize_t)-1, (Py_ssize_t)0);
            }
        }
    }
    free(sc.values);
    free(sc.deferred);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"parse_rows", parse_rows, METH_VARARGS, parse_rows_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "motionode._bvhmotion",
    "Compiled parser for the MOTION rows of BVH files (see motionode.bvh).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__bvhmotion(void)
{
    init_classes();
    return PyModule_Create(&module_def);
}
