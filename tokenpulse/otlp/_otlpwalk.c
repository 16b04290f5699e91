/* The OTLP span walk in C: ExportTraceServiceRequest bytes -> the SpanBatch columns.
 *
 * decode.py parses every request with upb first (that is what validates it and what
 * forwarding keeps), then calls walk() on the same bytes instead of walking the parsed
 * message attribute by attribute from Python, which measured ~20 us of the ~21 us a span
 * cost to decode (docs/sources.md#platform: the attribute walk is the bottleneck).
 *
 * walk() produces exactly what decode_message() produces from the parsed message; a
 * differential test (tests/unit/test_decode_fast.py) and the decoder fuzz target hold it to
 * that. Where protobuf semantics get subtle it does not try: a singular message field that
 * occurs twice (which protobuf merges), a group, or a known field with an unexpected wire
 * type makes it return False, and decode.py walks the parsed message instead. Values that
 * need JSON or base64 (arrays, kvlists, bytes) are rendered by a Python callback given the
 * AnyValue's bytes, so their text is the Python path's own.
 *
 * Field numbers: opentelemetry-proto collector/trace/v1/trace_service.proto,
 * trace/v1/trace.proto, common/v1/common.proto, resource/v1/resource.proto.
 *
 * The bytes have passed upb, but every read is bounds-checked anyway: the walk never trusts
 * a length.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} Buf;

/* What went wrong, if anything: BAD = give up, the Python walk decides. */
enum { OK = 0, BAD = 1, ERR = 2 /* a Python exception is set */ };

static int read_varint(Buf *b, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (b->p >= b->end) return BAD;
        uint8_t c = *b->p++;
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *out = v;
            return OK;
        }
    }
    return BAD;
}

static int read_fixed64(Buf *b, uint64_t *out) {
    if (b->end - b->p < 8) return BAD;
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | b->p[i];
    b->p += 8;
    *out = v;
    return OK;
}

static int read_len(Buf *b, Buf *inner) {
    uint64_t n;
    if (read_varint(b, &n) != OK) return BAD;
    if (n > (uint64_t)(b->end - b->p)) return BAD;
    inner->p = b->p;
    inner->end = b->p + n;
    b->p += n;
    return OK;
}

/* Skip one field of the given wire type (groups are refused). */
static int skip(Buf *b, int wt) {
    uint64_t v;
    Buf tmp;
    switch (wt) {
    case 0: return read_varint(b, &v);
    case 1: if (b->end - b->p < 8) return BAD; b->p += 8; return OK;
    case 2: return read_len(b, &tmp);
    case 5: if (b->end - b->p < 4) return BAD; b->p += 4; return OK;
    default: return BAD;
    }
}

static int read_tag(Buf *b, uint32_t *field, int *wt) {
    uint64_t tag;
    if (read_varint(b, &tag) != OK) return BAD;
    *field = (uint32_t)(tag >> 3);
    *wt = (int)(tag & 7);
    if (*field == 0) return BAD;
    return OK;
}

/* A str from UTF-8 bytes; BAD when they are not valid UTF-8 (upb refuses such a body too). */
static PyObject *utf8(Buf s) {
    PyObject *o = PyUnicode_DecodeUTF8((const char *)s.p, s.end - s.p, NULL);
    if (!o) PyErr_Clear();
    return o;
}

static PyObject *hex(Buf s) {
    static const char digits[] = "0123456789abcdef";
    Py_ssize_t n = s.end - s.p;
    PyObject *o = PyUnicode_New(2 * n, 127);
    if (!o) return NULL;
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(o);
    for (Py_ssize_t i = 0; i < n; i++) {
        out[2 * i] = digits[s.p[i] >> 4];
        out[2 * i + 1] = digits[s.p[i] & 15];
    }
    return o;
}

static int all_zero(Buf s) {
    for (const uint8_t *q = s.p; q < s.end; q++)
        if (*q) return 0;
    return 1;
}

/* decode.py's _render_double: integral finite values below 1e16 as integers, else repr(). */
static PyObject *render_double(double d) {
    if (isfinite(d) && fabs(d) < 1e16 && d == (double)(long long)d) /* range first: the cast needs it */
        return PyUnicode_FromFormat("%lld", (long long)d);
    char *s = PyOS_double_to_string(d, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (!s) return NULL;
    PyObject *o = PyUnicode_FromString(s);
    PyMem_Free(s);
    return o;
}

/* The key or value last seen at one attribute position of a span: its bytes on the wire (a view
 * of the request body, which outlives the walk) and the str made from them (owned). */
typedef struct {
    const uint8_t *p;
    Py_ssize_t n;
    PyObject *o;
} Slot;

/* Spans of one instrumentation carry the same keys in the same order, and many of the same
 * values (operation, provider, model, tenant, host): the str made for position i of the previous
 * span is reused when the bytes are the same, instead of decoding, hashing and interning again.
 * Later steps then also meet one object per repeated value (its hash computed once). */
#define SLOTS 64

typedef struct {
    PyObject *render;   /* callable(AnyValue bytes) -> str, for arrays, kvlists and bytes */
    PyObject *interned; /* dict: reuse one str object per distinct key */
    PyObject *empty;    /* "" */
    /* The widest the request is, for the receiver's limits (receiver/limits.py): the most
     * attributes on one span or resource, the longest value in characters. */
    Py_ssize_t max_attrs, max_chars;
    Slot keys[SLOTS], values[SLOTS]; /* span attributes by position; zeroed per walk */
} Ctx;

/* slot's str when it was made from the same bytes (new reference), else NULL. */
static PyObject *slot_get(Slot *slot, Buf b) {
    Py_ssize_t n = b.end - b.p;
    if (slot->o && slot->n == n && memcmp(slot->p, b.p, (size_t)n) == 0) {
        Py_INCREF(slot->o);
        return slot->o;
    }
    return NULL;
}

static void slot_set(Slot *slot, Buf b, PyObject *o) {
    Py_INCREF(o);
    Py_XSETREF(slot->o, o);
    slot->p = b.p;
    slot->n = b.end - b.p;
}

static void slots_clear(Ctx *cx) {
    for (int i = 0; i < SLOTS; i++) {
        Py_CLEAR(cx->keys[i].o);
        Py_CLEAR(cx->values[i].o);
    }
}

/* AnyValue -> its string form, as decode._attrs_pb renders it. New reference or NULL with
 * *status set (BAD, or ERR with an exception). */
static PyObject *any_value(Ctx *cx, Buf v, int *status) {
    Buf whole = v, str = {NULL, NULL};
    int which = 0; /* the oneof field last seen: 1 string, 2 bool, 3 int, 4 double, 5-7 messages/bytes, 8 strindex */
    uint64_t num = 0;
    while (v.p < v.end) {
        uint32_t f;
        int wt;
        if (read_tag(&v, &f, &wt) != OK) goto bad;
        int expect = (f == 1 || f == 5 || f == 6 || f == 7) ? 2 : (f == 4 ? 1 : 0);
        if (f >= 1 && f <= 8 && wt != expect) goto bad;
        switch (f) {
        case 1: if (read_len(&v, &str) != OK) goto bad; which = 1; break;
        case 2: case 3: case 8: if (read_varint(&v, &num) != OK) goto bad; which = (int)f; break;
        case 4: if (read_fixed64(&v, &num) != OK) goto bad; which = 4; break;
        case 5: case 6: case 7: { Buf t; if (read_len(&v, &t) != OK) goto bad; which = (int)f; break; }
        default: if (skip(&v, wt) != OK) goto bad;
        }
    }
    switch (which) {
    case 1: {
        PyObject *o = utf8(str);
        if (!o) goto bad;
        return o;
    }
    case 2: return PyUnicode_FromString(num ? "true" : "false");
    case 3: return PyUnicode_FromFormat("%lld", (long long)(int64_t)num);
    case 4: {
        double d;
        memcpy(&d, &num, sizeof d);
        PyObject *o = render_double(d);
        if (!o) *status = ERR;
        return o;
    }
    case 5: case 6: case 7: {
        PyObject *raw = PyBytes_FromStringAndSize((const char *)whole.p, whole.end - whole.p);
        if (!raw) { *status = ERR; return NULL; }
        PyObject *o = PyObject_CallOneArg(cx->render, raw);
        Py_DECREF(raw);
        if (!o) *status = ERR;
        return o;
    }
    default: /* unset, or string_value_strindex (profiles only): "" as in _render_pb */
        Py_INCREF(cx->empty);
        return cx->empty;
    }
bad:
    *status = BAD;
    return NULL;
}

/* Interned key: one str object per distinct key across the request. */
static PyObject *key_str(Ctx *cx, Buf k) {
    PyObject *o = utf8(k);
    if (!o) return NULL;
    PyObject *got = PyDict_SetDefault(cx->interned, o, o);
    if (!got) { Py_DECREF(o); return NULL; }
    Py_INCREF(got);
    Py_DECREF(o);
    return got;
}

/* One KeyValue into dict d (later keys overwrite earlier ones, as in _attrs_pb); ``pos``: its
 * position among a span's attributes (the slot to reuse), or -1 (a resource's, a scope's). */
static int key_value(Ctx *cx, Buf kv, PyObject *d, int pos) {
    Buf key = {NULL, NULL}, value = {NULL, NULL};
    int have_key = 0, have_value = 0;
    while (kv.p < kv.end) {
        uint32_t f;
        int wt;
        if (read_tag(&kv, &f, &wt) != OK) return BAD;
        if (f == 1) {
            if (wt != 2 || read_len(&kv, &key) != OK) return BAD;
            have_key = 1;
        } else if (f == 2) {
            if (wt != 2 || have_value) return BAD; /* twice: protobuf merges the two; leave it to upb */
            if (read_len(&kv, &value) != OK) return BAD;
            have_value = 1;
        } else if (skip(&kv, wt) != OK) {
            return BAD;
        }
    }
    Slot *ks = pos >= 0 && pos < SLOTS ? &cx->keys[pos] : NULL, *vs = ks ? &cx->values[pos] : NULL;
    PyObject *k;
    if (have_key) {
        k = ks ? slot_get(ks, key) : NULL;
        if (!k) {
            k = key_str(cx, key);
            if (!k) return PyErr_Occurred() ? ERR : BAD;
            if (ks) slot_set(ks, key, k);
        }
    } else {
        k = cx->empty;
        Py_INCREF(k);
    }
    PyObject *v;
    if (have_value) {
        /* The whole AnyValue's bytes decide: the same bytes render to the same str. */
        v = vs ? slot_get(vs, value) : NULL;
        if (!v) {
            int status = OK;
            v = any_value(cx, value, &status);
            if (!v) {
                Py_DECREF(k);
                return status == OK ? ERR : status;
            }
            if (vs) slot_set(vs, value, v);
        }
    } else {
        v = cx->empty;
        Py_INCREF(v);
    }
    Py_ssize_t chars = PyUnicode_GET_LENGTH(v);
    if (chars > cx->max_chars) cx->max_chars = chars;
    int rc = PyDict_SetItem(d, k, v);
    Py_DECREF(k);
    Py_DECREF(v);
    if (rc == 0 && PyDict_GET_SIZE(d) > cx->max_attrs) cx->max_attrs = PyDict_GET_SIZE(d);
    return rc < 0 ? ERR : OK;
}

/* Resource or InstrumentationScope: attributes (field 1 resp. 3) into d, name/version if asked. */
static int resource(Ctx *cx, Buf r, PyObject *d) {
    while (r.p < r.end) {
        uint32_t f;
        int wt;
        if (read_tag(&r, &f, &wt) != OK) return BAD;
        if (f == 1) {
            Buf kv;
            if (wt != 2 || read_len(&r, &kv) != OK) return BAD;
            int rc = key_value(cx, kv, d, -1);
            if (rc != OK) return rc;
        } else if (skip(&r, wt) != OK) {
            return BAD;
        }
    }
    return OK;
}

static int scope(Buf s, Buf *name, Buf *version) {
    while (s.p < s.end) {
        uint32_t f;
        int wt;
        if (read_tag(&s, &f, &wt) != OK) return BAD;
        if (f == 1 || f == 2) {
            if (wt != 2 || read_len(&s, f == 1 ? name : version) != OK) return BAD;
        } else if (skip(&s, wt) != OK) {
            return BAD;
        }
    }
    return OK;
}

enum {
    C_TRACE, C_SPAN, C_PARENT, C_NAME, C_KIND, C_SERVICE, C_SCOPE_NAME, C_SCOPE_VERSION, C_START, C_END,
    C_STATUS_CODE, C_STATUS_MESSAGE, C_RES_ATTRS, C_ATTRS, N_COLS
};

typedef struct {
    PyObject *cols[N_COLS];
    PyObject *reject; /* callable(message) for a span refused for its ids */
    /* The previous span's trace id and its hex string: spans of one trace usually come together,
     * and sharing one str lets the per-trace memories hash it once and compare by identity. */
    uint8_t last_tid[16];
    PyObject *last_tid_o; /* owned; NULL before the first span */
} Out;

static int append_new(PyObject *list, PyObject *o) {
    if (!o) return ERR;
    int rc = PyList_Append(list, o);
    Py_DECREF(o);
    return rc < 0 ? ERR : OK;
}

static int reject_span(Out *out, PyObject *name, const char *what, Py_ssize_t got) {
    PyObject *msg = PyUnicode_FromFormat("span %R: %s, got %zd", name, what, got);
    if (!msg) return ERR;
    PyObject *r = PyObject_CallOneArg(out->reject, msg);
    Py_DECREF(msg);
    if (!r) return ERR;
    Py_DECREF(r);
    return OK;
}

static int span(Ctx *cx, Out *out, Buf s, PyObject *service, PyObject *scope_name, PyObject *scope_version,
                PyObject *res_attrs) {
    Buf tid = {NULL, NULL}, sid = {NULL, NULL}, pid = {NULL, NULL}, name = {NULL, NULL}, smsg = {NULL, NULL};
    uint64_t kind = 0, start = 0, end = 0, code = 0;
    int have_status = 0, pos = 0;
    PyObject *attrs = PyDict_New();
    if (!attrs) return ERR;
    int rc = OK;
    while (s.p < s.end && rc == OK) {
        uint32_t f;
        int wt;
        if (read_tag(&s, &f, &wt) != OK) { rc = BAD; break; }
        switch (f) {
        case 1: case 2: case 4: case 5:
            if (wt != 2) { rc = BAD; break; }
            rc = read_len(&s, f == 1 ? &tid : f == 2 ? &sid : f == 4 ? &pid : &name);
            break;
        case 6:
            rc = wt != 0 ? BAD : read_varint(&s, &kind);
            break;
        case 7: case 8:
            rc = wt != 1 ? BAD : read_fixed64(&s, f == 7 ? &start : &end);
            break;
        case 9: {
            Buf kv;
            if (wt != 2 || read_len(&s, &kv) != OK) { rc = BAD; break; }
            rc = key_value(cx, kv, attrs, pos++);
            break;
        }
        case 15: {
            Buf st;
            if (wt != 2 || have_status || read_len(&s, &st) != OK) { rc = BAD; break; }
            have_status = 1;
            while (st.p < st.end && rc == OK) {
                uint32_t g;
                int gwt;
                if (read_tag(&st, &g, &gwt) != OK) { rc = BAD; break; }
                if (g == 2) rc = gwt != 2 ? BAD : read_len(&st, &smsg);
                else if (g == 3) rc = gwt != 0 ? BAD : read_varint(&st, &code);
                else rc = skip(&st, gwt);
            }
            break;
        }
        default:
            rc = skip(&s, wt);
        }
    }
    if (rc != OK) goto done;

    PyObject *name_o = name.p ? utf8(name) : PyUnicode_FromStringAndSize("", 0);
    if (!name_o) { rc = PyErr_Occurred() ? ERR : BAD; goto done; }
    Py_ssize_t nt = tid.end - tid.p, ns = sid.end - sid.p, np = pid.end - pid.p;
    if (nt != 16 || all_zero(tid)) {
        rc = reject_span(out, name_o, "trace_id must be 16 non-zero bytes", nt);
    } else if (ns != 8 || all_zero(sid)) {
        rc = reject_span(out, name_o, "span_id must be 8 non-zero bytes", ns);
    } else if (np && np != 8) {
        rc = reject_span(out, name_o, "parent_span_id must be empty or 8 bytes", np);
    } else {
        PyObject **c = out->cols;
        PyObject *empty = cx->empty;
        PyObject *smsg_o = smsg.p ? utf8(smsg) : (Py_INCREF(empty), empty);
        if (!smsg_o) { Py_DECREF(name_o); rc = PyErr_Occurred() ? ERR : BAD; goto done; }
        if (np && !all_zero(pid)) {
            rc = append_new(c[C_PARENT], hex(pid));
        } else {
            rc = PyList_Append(c[C_PARENT], empty) < 0 ? ERR : OK;
        }
        /* The columns grow together: an error here is ERR (an exception), and decode.py then
         * drops the whole batch, so unequal lengths never escape. */
        if (rc == OK) {
            if (out->last_tid_o && memcmp(out->last_tid, tid.p, 16) == 0) {
                rc = PyList_Append(c[C_TRACE], out->last_tid_o) < 0 ? ERR : OK;
            } else {
                PyObject *t = hex(tid);
                if (!t) {
                    rc = ERR;
                } else {
                    Py_XSETREF(out->last_tid_o, t);
                    memcpy(out->last_tid, tid.p, 16);
                    rc = PyList_Append(c[C_TRACE], t) < 0 ? ERR : OK;
                }
            }
        }
        if (rc == OK) rc = append_new(c[C_SPAN], hex(sid));
        if (rc == OK) rc = PyList_Append(c[C_NAME], name_o) < 0 ? ERR : OK;
        if (rc == OK) rc = append_new(c[C_KIND], PyLong_FromLong((int32_t)kind));
        if (rc == OK) rc = PyList_Append(c[C_SERVICE], service) < 0 ? ERR : OK;
        if (rc == OK) rc = PyList_Append(c[C_SCOPE_NAME], scope_name) < 0 ? ERR : OK;
        if (rc == OK) rc = PyList_Append(c[C_SCOPE_VERSION], scope_version) < 0 ? ERR : OK;
        if (rc == OK) rc = append_new(c[C_START], PyLong_FromUnsignedLongLong(start));
        if (rc == OK) rc = append_new(c[C_END], PyLong_FromUnsignedLongLong(end));
        if (rc == OK) rc = append_new(c[C_STATUS_CODE], PyLong_FromLong((int32_t)code));
        if (rc == OK) rc = PyList_Append(c[C_STATUS_MESSAGE], smsg_o) < 0 ? ERR : OK;
        if (rc == OK) rc = PyList_Append(c[C_RES_ATTRS], res_attrs) < 0 ? ERR : OK;
        if (rc == OK) rc = PyList_Append(c[C_ATTRS], attrs) < 0 ? ERR : OK;
        Py_DECREF(smsg_o);
    }
    Py_DECREF(name_o);
done:
    Py_DECREF(attrs);
    return rc;
}

static int scope_spans(Ctx *cx, Out *out, Buf ss, PyObject *service, PyObject *res_attrs) {
    /* The scope may follow the spans on the wire: find it first. */
    Buf name = {NULL, NULL}, version = {NULL, NULL};
    int have_scope = 0;
    for (Buf b = ss; b.p < b.end;) {
        uint32_t f;
        int wt;
        if (read_tag(&b, &f, &wt) != OK) return BAD;
        if (f == 1) {
            Buf sc;
            if (wt != 2 || have_scope || read_len(&b, &sc) != OK) return BAD;
            have_scope = 1;
            if (scope(sc, &name, &version) != OK) return BAD;
        } else if (skip(&b, wt) != OK) {
            return BAD;
        }
    }
    PyObject *name_o = name.p ? utf8(name) : (Py_INCREF(cx->empty), cx->empty);
    if (!name_o) return PyErr_Occurred() ? ERR : BAD;
    PyObject *version_o = version.p ? utf8(version) : (Py_INCREF(cx->empty), cx->empty);
    if (!version_o) { Py_DECREF(name_o); return PyErr_Occurred() ? ERR : BAD; }
    int rc = OK;
    while (ss.p < ss.end && rc == OK) {
        uint32_t f;
        int wt;
        if (read_tag(&ss, &f, &wt) != OK) { rc = BAD; break; }
        if (f == 2) {
            Buf sp;
            if (wt != 2 || read_len(&ss, &sp) != OK) { rc = BAD; break; }
            rc = span(cx, out, sp, service, name_o, version_o, res_attrs);
        } else {
            rc = skip(&ss, wt);
        }
    }
    Py_DECREF(name_o);
    Py_DECREF(version_o);
    return rc;
}

static int resource_spans(Ctx *cx, Out *out, Buf rs, PyObject *unknown_service) {
    PyObject *res_attrs = PyDict_New();
    if (!res_attrs) return ERR;
    int rc = OK, have_resource = 0;
    for (Buf b = rs; b.p < b.end && rc == OK;) { /* the resource first: it may follow the spans */
        uint32_t f;
        int wt;
        if (read_tag(&b, &f, &wt) != OK) { rc = BAD; break; }
        if (f == 1) {
            Buf r;
            if (wt != 2 || have_resource || read_len(&b, &r) != OK) { rc = BAD; break; }
            have_resource = 1;
            rc = resource(cx, r, res_attrs);
        } else {
            rc = skip(&b, wt);
        }
    }
    if (rc == OK) {
        PyObject *service = PyDict_GetItemString(res_attrs, "service.name"); /* borrowed */
        if (!service || PyUnicode_GET_LENGTH(service) == 0) service = unknown_service;
        Py_INCREF(service);
        while (rs.p < rs.end && rc == OK) {
            uint32_t f;
            int wt;
            if (read_tag(&rs, &f, &wt) != OK) { rc = BAD; break; }
            if (f == 2) {
                Buf ss;
                if (wt != 2 || read_len(&rs, &ss) != OK) { rc = BAD; break; }
                rc = scope_spans(cx, out, ss, service, res_attrs);
            } else {
                rc = skip(&rs, wt);
            }
        }
        Py_DECREF(service);
    }
    Py_DECREF(res_attrs);
    return rc;
}

PyDoc_STRVAR(walk_doc,
"walk(body, columns, reject, render, unknown_service) -> (max_attrs, max_chars) | False\n\n"
"Append the spans of an ExportTraceServiceRequest (already parsed once by upb) to the 14\n"
"column lists in ``columns`` (SpanBatch order: trace_id, span_id, parent_span_id, name,\n"
"kind, service, scope_name, scope_version, start_time_ns, end_time_ns, status_code,\n"
"status_message, resource_attributes, attributes). ``reject(message)`` is called for a span\n"
"with invalid ids; ``render(anyvalue_bytes)`` renders arrays, kvlists and bytes. Returns\n"
"the most attributes on one span or resource and the longest value in characters, or\n"
"False when the request needs the message walk (the columns are then partly filled).");

static PyObject *walk(PyObject *self, PyObject *args) {
    Py_buffer body;
    PyObject *columns, *reject, *render, *unknown_service;
    if (!PyArg_ParseTuple(args, "y*O!OOU", &body, &PyTuple_Type, &columns, &reject, &render, &unknown_service))
        return NULL;
    Out out;
    if (PyTuple_GET_SIZE(columns) != N_COLS) {
        PyBuffer_Release(&body);
        PyErr_SetString(PyExc_ValueError, "columns must be a tuple of 14 lists");
        return NULL;
    }
    for (int i = 0; i < N_COLS; i++) {
        out.cols[i] = PyTuple_GET_ITEM(columns, i);
        if (!PyList_Check(out.cols[i])) {
            PyBuffer_Release(&body);
            PyErr_SetString(PyExc_TypeError, "columns must be lists");
            return NULL;
        }
    }
    out.reject = reject;
    out.last_tid_o = NULL;
    Ctx cx = {render, PyDict_New(), PyUnicode_FromStringAndSize("", 0), 0, 0, {{0}}, {{0}}};
    int rc = (cx.interned && cx.empty) ? OK : ERR;
    Buf b = {(const uint8_t *)body.buf, (const uint8_t *)body.buf + body.len};
    while (b.p < b.end && rc == OK) {
        uint32_t f;
        int wt;
        if (read_tag(&b, &f, &wt) != OK) { rc = BAD; break; }
        if (f == 1) {
            Buf rs;
            if (wt != 2 || read_len(&b, &rs) != OK) { rc = BAD; break; }
            rc = resource_spans(&cx, &out, rs, unknown_service);
        } else {
            rc = skip(&b, wt);
        }
    }
    slots_clear(&cx);
    Py_XDECREF(cx.interned);
    Py_XDECREF(cx.empty);
    Py_XDECREF(out.last_tid_o);
    PyBuffer_Release(&body);
    if (rc == ERR) return NULL;
    if (PyErr_Occurred()) PyErr_Clear();
    if (rc != OK) Py_RETURN_FALSE;
    return Py_BuildValue("(nn)", cx.max_attrs, cx.max_chars);
}

/* ---------------------------------------------------------------- keep_first
 * Count a request's spans without building anything per span, and, when there are more than
 * ``max_spans``, the bytes of the same request cut after its first ``max_spans`` spans: whole
 * ResourceSpans and ScopeSpans are copied as they are up to the one holding the cut, which is
 * rebuilt with its fields up to the cut (its fields after it are dropped, as is everything
 * after it). A bomb of millions of empty spans is refused before upb allocates millions of
 * messages (measured: 8M empty spans, 15 MiB inflated from 15 KiB of gzip, cost upb 1.8 s and
 * 1.35 GB to parse). Malformed bytes: (-1, None); upb then says what is wrong. */

static int64_t count_ss(Buf ss) {
    int64_t n = 0;
    while (ss.p < ss.end) {
        uint32_t f;
        int wt;
        if (read_tag(&ss, &f, &wt) != OK) return -1;
        if (f == 2 && wt == 2) {
            Buf sp;
            if (read_len(&ss, &sp) != OK) return -1;
            n++;
        } else if (skip(&ss, wt) != OK) {
            return -1;
        }
    }
    return n;
}

static int64_t count_rs(Buf rs) {
    int64_t n = 0;
    while (rs.p < rs.end) {
        uint32_t f;
        int wt;
        if (read_tag(&rs, &f, &wt) != OK) return -1;
        if (f == 2 && wt == 2) {
            Buf ss;
            if (read_len(&rs, &ss) != OK) return -1;
            int64_t k = count_ss(ss);
            if (k < 0) return -1;
            n += k;
        } else if (skip(&rs, wt) != OK) {
            return -1;
        }
    }
    return n;
}

typedef struct {
    uint8_t *p;
} Out8;

static void put_bytes(Out8 *o, const uint8_t *p, size_t n) {
    memcpy(o->p, p, n);
    o->p += n;
}

static void put_varint(Out8 *o, uint64_t v) {
    while (v >= 0x80) {
        *o->p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *o->p++ = (uint8_t)v;
}

/* Copy the fields of a ScopeSpans up to (not including) its (keep+1)-th span. */
static size_t cut_ss(Buf ss, int64_t keep, uint8_t *dst) {
    Out8 o = {dst};
    while (ss.p < ss.end) {
        const uint8_t *start = ss.p;
        uint32_t f;
        int wt;
        read_tag(&ss, &f, &wt); /* counted before: well formed */
        if (f == 2 && wt == 2) {
            if (keep == 0) break;
            keep--;
        }
        skip(&ss, wt);
        put_bytes(&o, start, (size_t)(ss.p - start));
    }
    return (size_t)(o.p - dst);
}

/* Copy the fields of a ResourceSpans up to its cut ScopeSpans, rebuilt with ``keep`` spans. */
static size_t cut_rs(Buf rs, int64_t keep, uint8_t *dst, uint8_t *scratch) {
    Out8 o = {dst};
    while (rs.p < rs.end) {
        const uint8_t *start = rs.p;
        uint32_t f;
        int wt;
        read_tag(&rs, &f, &wt);
        if (f == 2 && wt == 2) {
            Buf ss;
            read_len(&rs, &ss);
            int64_t k = count_ss(ss);
            if (k > keep) {
                size_t len = cut_ss(ss, keep, scratch);
                put_varint(&o, (2 << 3) | 2);
                put_varint(&o, len);
                put_bytes(&o, scratch, len);
                break;
            }
            keep -= k;
        } else {
            skip(&rs, wt);
        }
        put_bytes(&o, start, (size_t)(rs.p - start));
    }
    return (size_t)(o.p - dst);
}

PyDoc_STRVAR(keep_first_doc,
"keep_first(body, max_spans) -> (spans, cut_body or None)\n\n"
"The number of spans in an ExportTraceServiceRequest, counted on the wire; when it exceeds\n"
"``max_spans``, also the request's bytes cut after its first ``max_spans`` spans. (-1, None)\n"
"when the bytes are not a well-formed request.");

static PyObject *keep_first(PyObject *self, PyObject *args) {
    Py_buffer body;
    long long max_spans;
    if (!PyArg_ParseTuple(args, "y*L", &body, &max_spans)) return NULL;
    Buf b = {(const uint8_t *)body.buf, (const uint8_t *)body.buf + body.len};
    int64_t total = 0;
    for (Buf c = b; c.p < c.end;) {
        uint32_t f;
        int wt;
        if (read_tag(&c, &f, &wt) != OK) { total = -1; break; }
        if (f == 1 && wt == 2) {
            Buf rs;
            if (read_len(&c, &rs) != OK) { total = -1; break; }
            int64_t k = count_rs(rs);
            if (k < 0) { total = -1; break; }
            total += k;
        } else if (skip(&c, wt) != OK) {
            total = -1;
            break;
        }
    }
    if (total < 0 || total <= max_spans) {
        PyBuffer_Release(&body);
        return Py_BuildValue("(LO)", (long long)total, Py_None);
    }
    /* A cut body is never longer than the original plus a few varint bytes. */
    uint8_t *out = PyMem_Malloc((size_t)body.len + 32), *scratch = PyMem_Malloc((size_t)body.len + 32);
    uint8_t *rsbuf = PyMem_Malloc((size_t)body.len + 32);
    if (!out || !scratch || !rsbuf) {
        PyMem_Free(out); PyMem_Free(scratch); PyMem_Free(rsbuf);
        PyBuffer_Release(&body);
        return PyErr_NoMemory();
    }
    Out8 o = {out};
    int64_t keep = max_spans;
    for (Buf c = b; c.p < c.end;) {
        const uint8_t *start = c.p;
        uint32_t f;
        int wt;
        read_tag(&c, &f, &wt);
        if (f == 1 && wt == 2) {
            Buf rs;
            read_len(&c, &rs);
            int64_t k = count_rs(rs);
            if (k > keep) {
                size_t len = cut_rs(rs, keep, rsbuf, scratch);
                put_varint(&o, (1 << 3) | 2);
                put_varint(&o, len);
                put_bytes(&o, rsbuf, len);
                break;
            }
            keep -= k;
        } else {
            skip(&c, wt);
        }
        put_bytes(&o, start, (size_t)(c.p - start));
    }
    PyObject *cut = PyBytes_FromStringAndSize((const char *)out, o.p - out);
    PyMem_Free(out); PyMem_Free(scratch); PyMem_Free(rsbuf);
    PyBuffer_Release(&body);
    if (!cut) return NULL;
    PyObject *res = Py_BuildValue("(LN)", (long long)total, cut);
    return res;
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS, walk_doc},
    {"keep_first", keep_first, METH_VARARGS, keep_first_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_otlpwalk", "The OTLP span walk in C (see decode.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__otlpwalk(void) { return PyModule_Create(&module); }
