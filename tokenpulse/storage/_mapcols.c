/* Arrow buffers built in C from the batch's Python lists: the attributes column and the String columns.
 *
 * flatten(dicts, lean, alloc) -> (map offsets, key offsets, key bytes, value offsets, value bytes):
 * the five buffers of an Arrow Map(String, String) array of len(dicts) rows, int32 offsets,
 * no nulls. strings(values, alloc) -> (offsets, bytes): a String array's two buffers.
 * schema.py wraps them with pa.Array.from_buffers. Its Python ``_map_array`` builds the same map
 * array with pa.array over flattened lists (~2.7 us per span of 16 entries against ~0.6 here) and
 * stays the reference, as pa.array does for strings: tests/unit/test_mapcols.py compares them.
 *
 * ``lean`` maps an attribute key to its typed column (a list with one item per row, str or
 * int): an entry whose value is that row's column item, as text (an int in decimal), is left
 * out ("Lean rows", docs/spans-table.md). Entries keep the dict's order (PyDict_Next walks
 * insertion order).
 *
 * Memory: every buffer is allocated once, at its exact size, by ``alloc(nbytes)``
 * (pa.allocate_buffer: Arrow's own pool, as pa.array's are), and filled in place; a first pass
 * measures. Nothing grows by reallocation, nothing is copied at the end, and the tables the
 * writer queues hold no Python objects.
 *
 * Anything unexpected (a key or value that is not str, a string that is not UTF-8 encodable,
 * more than 2 GiB of text, a column shorter than the batch) raises; schema.py then takes the
 * Python path, which decides what such input means.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* A buffer from ``alloc``, written front to back. */
typedef struct {
    PyObject *obj; /* owned: what alloc returned */
    Py_buffer view;
    char *p;
    Py_ssize_t len;
} Out;

static int out_new(Out *o, PyObject *alloc, Py_ssize_t size) {
    o->obj = PyObject_CallFunction(alloc, "n", size);
    if (!o->obj)
        return -1;
    if (PyObject_GetBuffer(o->obj, &o->view, PyBUF_WRITABLE | PyBUF_SIMPLE) < 0) {
        Py_CLEAR(o->obj);
        return -1;
    }
    if (o->view.len < size) {
        PyBuffer_Release(&o->view);
        Py_CLEAR(o->obj);
        PyErr_SetString(PyExc_ValueError, "alloc returned a buffer too small");
        return -1;
    }
    o->p = o->view.buf;
    o->len = 0;
    return 0;
}

static void out_free(Out *o) {
    if (o->obj) {
        PyBuffer_Release(&o->view);
        Py_CLEAR(o->obj);
    }
}

/* Writes never pass the measured size: alloc may release the GIL, so the input could in principle
 * change between the passes; then this raises instead of writing past the buffer. */
static int put(Out *o, const char *src, Py_ssize_t n) {
    if (o->len + n > o->view.len) {
        PyErr_SetString(PyExc_RuntimeError, "the input changed while it was encoded");
        return -1;
    }
    memcpy(o->p + o->len, src, (size_t)n);
    o->len += n;
    return 0;
}

static int put_offset(Out *o, Py_ssize_t at) {
    int32_t v = (int32_t)at; /* callers check the totals against INT32_MAX first */
    return put(o, (const char *)&v, (Py_ssize_t)sizeof v);
}

static int too_big(Py_ssize_t total) {
    if (total > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "more than 2 GiB of text in one column");
        return 1;
    }
    return 0;
}

/* A tuple of the filled buffers' objects (new reference), or NULL. */
static PyObject *take_all(Out *outs, int n) {
    PyObject *t = PyTuple_New(n);
    if (!t)
        return NULL;
    for (int i = 0; i < n; i++) {
        PyBuffer_Release(&outs[i].view);
        PyTuple_SET_ITEM(t, i, outs[i].obj); /* steals */
        outs[i].obj = NULL;
    }
    return t;
}

/* 1: ``value`` (UTF-8, n bytes) is the column item's text; 0: it is not; -1: error. */
static int same_as_column(const char *value, Py_ssize_t n, PyObject *item) {
    if (PyUnicode_CheckExact(item)) {
        Py_ssize_t m;
        const char *s = PyUnicode_AsUTF8AndSize(item, &m);
        if (!s)
            return -1;
        return m == n && memcmp(s, value, (size_t)n) == 0;
    }
    if (PyLong_CheckExact(item)) {
        unsigned long long v = PyLong_AsUnsignedLongLong(item);
        if (v == (unsigned long long)-1 && PyErr_Occurred())
            return -1;
        /* v in decimal, right-aligned in text (snprintf cost more than the rest of the entry) */
        char text[24];
        char *p = text + sizeof text;
        do {
            *--p = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        Py_ssize_t m = text + sizeof text - p;
        return m == n && memcmp(p, value, (size_t)n) == 0;
    }
    PyErr_SetString(PyExc_TypeError, "a lean column holds neither str nor int");
    return -1;
}

/* One row's entries: counted into the sizes (``outs`` NULL) or written (``outs``: keys' offsets,
 * keys, values' offsets, values). The same entries either way, so the sizes are exact. */
static int row(PyObject *d, PyObject *lean, Py_ssize_t r, Py_ssize_t *entries, Py_ssize_t *kb, Py_ssize_t *vb,
               Out *outs) {
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(d, &pos, &k, &v)) {
        if (!PyUnicode_CheckExact(k) || !PyUnicode_CheckExact(v)) {
            PyErr_SetString(PyExc_TypeError, "an attribute key or value is not a str");
            return -1;
        }
        Py_ssize_t kn, vn;
        const char *ks = PyUnicode_AsUTF8AndSize(k, &kn);
        const char *vs = ks ? PyUnicode_AsUTF8AndSize(v, &vn) : NULL;
        if (!vs)
            return -1;
        PyObject *column = PyDict_GET_SIZE(lean) ? PyDict_GetItemWithError(lean, k) : NULL; /* borrowed */
        if (!column && PyErr_Occurred())
            return -1;
        if (column) {
            if (r >= PyList_GET_SIZE(column)) {
                PyErr_SetString(PyExc_RuntimeError, "the input changed while it was encoded");
                return -1;
            }
            int same = same_as_column(vs, vn, PyList_GET_ITEM(column, r));
            if (same < 0)
                return -1;
            if (same)
                continue;
        }
        *entries += 1, *kb += kn, *vb += vn;
        if (outs && (put(&outs[1], ks, kn) < 0 || put_offset(&outs[0], outs[1].len) < 0 ||
                     put(&outs[3], vs, vn) < 0 || put_offset(&outs[2], outs[3].len) < 0))
            return -1;
    }
    return 0;
}

static PyObject *flatten(PyObject *self, PyObject *args) {
    PyObject *dicts, *lean, *alloc;
    if (!PyArg_ParseTuple(args, "O!O!O", &PyList_Type, &dicts, &PyDict_Type, &lean, &alloc))
        return NULL;
    Py_ssize_t rows = PyList_GET_SIZE(dicts);
    Py_ssize_t lp = 0;
    PyObject *lk, *lc;
    while (PyDict_Next(lean, &lp, &lk, &lc)) {
        if (!PyList_CheckExact(lc) || PyList_GET_SIZE(lc) != rows) {
            PyErr_SetString(PyExc_ValueError, "a lean column is not a list of one item per row");
            return NULL;
        }
    }
    for (Py_ssize_t r = 0; r < rows; r++) {
        if (!PyDict_Check(PyList_GET_ITEM(dicts, r))) {
            PyErr_SetString(PyExc_TypeError, "an attributes row is not a dict");
            return NULL;
        }
    }
    /* Pass 1: the exact sizes. */
    Py_ssize_t m = 0, kb = 0, vb = 0;
    for (Py_ssize_t r = 0; r < rows; r++)
        if (row(PyList_GET_ITEM(dicts, r), lean, r, &m, &kb, &vb, NULL) < 0)
            return NULL;
    if (too_big(kb) || too_big(vb) || too_big(m))
        return NULL;
    /* Pass 2: the map's offsets, then keys' offsets, keys, values' offsets, values. */
    Out outs[5] = {{0}};
    PyObject *result = NULL;
    Py_ssize_t sizes[5] = {(rows + 1) * 4, (m + 1) * 4, kb, (m + 1) * 4, vb};
    for (int i = 0; i < 5; i++)
        if (out_new(&outs[i], alloc, sizes[i]) < 0)
            goto done;
    if (put_offset(&outs[0], 0) < 0 || put_offset(&outs[1], 0) < 0 || put_offset(&outs[3], 0) < 0)
        goto done;
    Py_ssize_t entries = 0, k2 = 0, v2 = 0;
    for (Py_ssize_t r = 0; r < rows; r++) {
        PyObject *d = r < PyList_GET_SIZE(dicts) ? PyList_GET_ITEM(dicts, r) : NULL;
        if (!d || !PyDict_Check(d)) {
            PyErr_SetString(PyExc_RuntimeError, "the input changed while it was encoded");
            goto done;
        }
        if (row(d, lean, r, &entries, &k2, &v2, &outs[1]) < 0 ||
            put_offset(&outs[0], entries) < 0)
            goto done;
    }
    result = take_all(outs, 5);
done:
    for (int i = 0; i < 5; i++)
        out_free(&outs[i]);
    return result;
}

PyDoc_STRVAR(flatten_doc,
             "flatten(dicts, lean, alloc) -> (map offsets, key offsets, key bytes, value offsets, value bytes)\n\n"
             "The Arrow Map(String, String) buffers of the attribute dicts (int32 offsets), each from\n"
             "alloc(nbytes), leaving out an entry whose key is in ``lean`` and whose value is that row's\n"
             "item of the key's column.");

static PyObject *strings(PyObject *self, PyObject *args) {
    PyObject *values, *alloc;
    if (!PyArg_ParseTuple(args, "O!O", &PyList_Type, &values, &alloc))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(values), total = 0, len;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(values, i);
        if (!PyUnicode_CheckExact(v)) {
            PyErr_SetString(PyExc_TypeError, "a value is not a str");
            return NULL;
        }
        if (!PyUnicode_AsUTF8AndSize(v, &len))
            return NULL;
        total += len;
    }
    if (too_big(total))
        return NULL;
    Out outs[2] = {{0}};
    PyObject *result = NULL;
    if (out_new(&outs[0], alloc, (n + 1) * 4) < 0 || out_new(&outs[1], alloc, total) < 0)
        goto done;
    if (put_offset(&outs[0], 0) < 0)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = i < PyList_GET_SIZE(values) ? PyList_GET_ITEM(values, i) : NULL;
        const char *s = v && PyUnicode_CheckExact(v) ? PyUnicode_AsUTF8AndSize(v, &len) : NULL; /* cached by pass 1 */
        if (!s) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_RuntimeError, "the input changed while it was encoded");
            goto done;
        }
        if (put(&outs[1], s, len) < 0 || put_offset(&outs[0], outs[1].len) < 0)
            goto done;
    }
    result = take_all(outs, 2);
done:
    out_free(&outs[0]);
    out_free(&outs[1]);
    return result;
}

PyDoc_STRVAR(strings_doc, "strings(values, alloc) -> (offsets, bytes): an Arrow String array's buffers (int32\n"
                          "offsets), each from alloc(nbytes); about half pa.array's time.");

static PyMethodDef methods[] = {
    {"flatten", flatten, METH_VARARGS, flatten_doc},
    {"strings", strings, METH_VARARGS, strings_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_mapcols", NULL, -1, methods};

PyMODINIT_FUNC PyInit__mapcols(void) { return PyModule_Create(&module); }
