/* Arrow buffers built in C from the batch's Python lists: the attributes column and the String columns.
 *
 * flatten(dicts, lean) -> (map offsets, key offsets, key bytes, value offsets, value bytes):
 * the five buffers of an Arrow Map(String, String) array of len(dicts) rows, int32 offsets,
 * no nulls. schema.py wraps them with pa.Array.from_buffers; its Python ``_map_array`` builds
 * the same array with pa.array over flattened lists (~2.7 us per span of 16 entries against
 * ~0.5 here), and stays the reference: tests/unit/test_mapcols.py compares the two.
 *
 * ``lean`` maps an attribute key to its typed column (a list with one item per row, str or
 * int): an entry whose value is that row's column item, as text (an int in decimal), is left
 * out ("Lean rows", docs/spans-table.md). Entries keep the dict's order (PyDict_Next walks
 * insertion order).
 *
 * Anything unexpected (a key or value that is not str, a string that is not UTF-8 encodable,
 * more than 2 GiB of text, a column shorter than the batch) raises; schema.py then takes the
 * Python path, which decides what such input means.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    char *p;
    size_t len, cap;
} Grow;

static int grow(Grow *g, size_t more) {
    if (g->len + more <= g->cap)
        return 0;
    size_t cap = g->cap ? g->cap : 4096;
    while (cap < g->len + more)
        cap *= 2;
    char *p = PyMem_Realloc(g->p, cap);
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    g->p = p;
    g->cap = cap;
    return 0;
}

static int put(Grow *g, const void *src, size_t n) {
    if (grow(g, n) < 0)
        return -1;
    memcpy(g->p + g->len, src, n);
    g->len += n;
    return 0;
}

static int put_offset(Grow *g, size_t at) {
    if (at > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "more than 2 GiB of attribute text in one batch");
        return -1;
    }
    int32_t o = (int32_t)at;
    return put(g, &o, sizeof o);
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

static PyObject *flatten(PyObject *self, PyObject *args) {
    PyObject *dicts, *lean;
    if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &dicts, &PyDict_Type, &lean))
        return NULL;
    Py_ssize_t rows = PyList_GET_SIZE(dicts);
    Grow offsets = {0}, key_off = {0}, keys = {0}, val_off = {0}, vals = {0};
    PyObject *result = NULL;
    size_t entries = 0;
    int has_lean = PyDict_GET_SIZE(lean) > 0;

    if (put_offset(&offsets, 0) < 0 || put_offset(&key_off, 0) < 0 || put_offset(&val_off, 0) < 0)
        goto done;
    for (Py_ssize_t r = 0; r < rows; r++) {
        PyObject *d = PyList_GET_ITEM(dicts, r);
        if (!PyDict_Check(d)) {
            PyErr_SetString(PyExc_TypeError, "an attributes row is not a dict");
            goto done;
        }
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(d, &pos, &k, &v)) {
            if (!PyUnicode_CheckExact(k) || !PyUnicode_CheckExact(v)) {
                PyErr_SetString(PyExc_TypeError, "an attribute key or value is not a str");
                goto done;
            }
            Py_ssize_t kn, vn;
            const char *ks = PyUnicode_AsUTF8AndSize(k, &kn);
            if (!ks)
                goto done;
            const char *vs = PyUnicode_AsUTF8AndSize(v, &vn);
            if (!vs)
                goto done;
            if (has_lean) {
                PyObject *column = PyDict_GetItemWithError(lean, k);  /* borrowed */
                if (!column && PyErr_Occurred())
                    goto done;
                if (column) {
                    if (!PyList_CheckExact(column) || PyList_GET_SIZE(column) != rows) {
                        PyErr_SetString(PyExc_ValueError, "a lean column is not a list of one item per row");
                        goto done;
                    }
                    int same = same_as_column(vs, vn, PyList_GET_ITEM(column, r));
                    if (same < 0)
                        goto done;
                    if (same)
                        continue;
                }
            }
            if (put(&keys, ks, (size_t)kn) < 0 || put_offset(&key_off, keys.len) < 0 ||
                put(&vals, vs, (size_t)vn) < 0 || put_offset(&val_off, vals.len) < 0)
                goto done;
            entries++;
        }
        if (put_offset(&offsets, entries) < 0)
            goto done;
    }
    result = Py_BuildValue("(y#y#y#y#y#)", offsets.p, (Py_ssize_t)offsets.len, key_off.p, (Py_ssize_t)key_off.len,
                           keys.p ? keys.p : "", (Py_ssize_t)keys.len, val_off.p, (Py_ssize_t)val_off.len,
                           vals.p ? vals.p : "", (Py_ssize_t)vals.len);
done:
    PyMem_Free(offsets.p);
    PyMem_Free(key_off.p);
    PyMem_Free(keys.p);
    PyMem_Free(val_off.p);
    PyMem_Free(vals.p);
    return result;
}

/* strings(values) -> (offsets, bytes): the two buffers of an Arrow String array (int32 offsets,
 * no nulls) of a list of str; pa.array does the same at ~21 ns per item, this at a few. */
static PyObject *strings(PyObject *self, PyObject *args) {
    PyObject *values;
    if (!PyArg_ParseTuple(args, "O!", &PyList_Type, &values))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(values);
    Grow offsets = {0}, data = {0};
    PyObject *result = NULL;
    if (grow(&offsets, (size_t)(n + 1) * sizeof(int32_t)) < 0 || put_offset(&offsets, 0) < 0)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(values, i);
        if (!PyUnicode_CheckExact(v)) {
            PyErr_SetString(PyExc_TypeError, "a value is not a str");
            goto done;
        }
        Py_ssize_t len;
        const char *s = PyUnicode_AsUTF8AndSize(v, &len);
        if (!s || put(&data, s, (size_t)len) < 0 || put_offset(&offsets, data.len) < 0)
            goto done;
    }
    result = Py_BuildValue("(y#y#)", offsets.p, (Py_ssize_t)offsets.len, data.p ? data.p : "", (Py_ssize_t)data.len);
done:
    PyMem_Free(offsets.p);
    PyMem_Free(data.p);
    return result;
}

PyDoc_STRVAR(strings_doc, "strings(values) -> (offsets, bytes): an Arrow String array's buffers (int32 offsets).");

PyDoc_STRVAR(flatten_doc,
             "flatten(dicts, lean) -> (map offsets, key offsets, key bytes, value offsets, value bytes)\n\n"
             "The Arrow Map(String, String) buffers of the attribute dicts (int32 offsets), leaving out an\n"
             "entry whose key is in ``lean`` and whose value is that row's item of the key's column.");

static PyMethodDef methods[] = {
    {"flatten", flatten, METH_VARARGS, flatten_doc},
    {"strings", strings, METH_VARARGS, strings_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_mapcols", NULL, -1, methods};

PyMODINIT_FUNC PyInit__mapcols(void) { return PyModule_Create(&module); }
