/* The X12 reader's hot loop in C (optional: setup.py builds it when it can).

   split(text, element, terminator) does what envelope._X12Reader does with
   text.split(terminator) and then piece.split(element), in one pass and without a string per
   segment: each ordinary segment comes back already split into its elements, the blanks
   after the previous terminator (most often its line break) taken off its tag. Everything
   else comes back as the piece of text it is, for the Python reader to handle as before:
   blank pieces, a segment with a line break inside it (hard-wrapped files), a tag of four
   characters or more, the envelope tags ST SE GS GE ISA IEA, and the text after the last
   terminator. The list has one item per piece of text.split(terminator), so the reader's
   positions are unchanged.

   It returns None (the Python path) unless the text is one byte per character (ASCII or
   Latin-1, what nearly every file decodes to) and both separators are single such
   characters. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* White space around segments: envelope._WS (U+0085 is EBCDIC NL as cp037 decodes it). */
static inline int
is_blank(Py_UCS1 c)
{
    switch (c) {
    case ' ': case '\t': case '\r': case '\n': case 0x00: case 0x1a: case 0x0b: case 0x0c: case 0x85:
        return 1;
    }
    return 0;
}

/* Segments the envelope reader must see itself (envelope._X12_TRIGGERS). */
static int
is_trigger(const Py_UCS1 *tag, Py_ssize_t n)
{
    if (n == 2)
        return (tag[0] == 'S' && (tag[1] == 'T' || tag[1] == 'E')) ||
               (tag[0] == 'G' && (tag[1] == 'S' || tag[1] == 'E'));
    if (n == 3)
        return tag[0] == 'I' && ((tag[1] == 'S' && tag[2] == 'A') || (tag[1] == 'E' && tag[2] == 'A'));
    return 0;
}

/* Short ASCII values (tags, qualifiers, codes, small quantities) repeat on every segment: they
   share one str object each from this direct-mapped cache, which saves an allocation per
   element and lets the mappers' dict lookups find the hash already computed. Strings are
   immutable, so sharing them changes no value. The cache holds one reference per entry. */
#define CACHE_BITS 12
static struct {
    uint64_t key; /* the characters and the length; 0 = empty slot */
    PyObject *str;
} cache[1 << CACHE_BITS];

static PyObject *
new_ascii(const Py_UCS1 *p, Py_ssize_t n)
{
    PyObject *s = PyUnicode_New(n, 127); /* n == 0 gives the shared empty string */
    if (s != NULL && n > 0)
        memcpy(PyUnicode_1BYTE_DATA(s), p, n);
    return s;
}

/* A new reference to the element p[0:n]. */
static PyObject *
element(const Py_UCS1 *p, Py_ssize_t n, int ascii)
{
    if (!ascii)
        return PyUnicode_FromKindAndData(PyUnicode_1BYTE_KIND, p, n); /* exact max char */
    if (n == 0 || n > 4)
        return new_ascii(p, n);
    uint64_t key = (uint64_t)n << 32;
    for (Py_ssize_t i = 0; i < n; i++)
        key |= (uint64_t)p[i] << (8 * i);
    size_t slot = (size_t)((key * 0x9E3779B97F4A7C15ull) >> (64 - CACHE_BITS));
    if (cache[slot].key == key) {
        Py_INCREF(cache[slot].str);
        return cache[slot].str;
    }
    PyObject *s = new_ascii(p, n);
    if (s == NULL)
        return NULL;
    Py_INCREF(s); /* the cache's reference */
    Py_XSETREF(cache[slot].str, s);
    cache[slot].key = key;
    return s;
}

/* The piece text[start:end] as a new reference: an element list when it is an ordinary
   segment, else the piece itself. */
static PyObject *
piece(PyObject *text, const Py_UCS1 *d, Py_ssize_t start, Py_ssize_t end, Py_UCS1 el, int ascii)
{
    Py_ssize_t lead = start;
    while (lead < end && is_blank(d[lead]))
        lead++;
    if (lead == end)
        return PyUnicode_Substring(text, start, end); /* blank: the reader skips it */
    Py_ssize_t count = 1, tag_end = -1;
    for (Py_ssize_t i = lead; i < end; i++) {
        Py_UCS1 c = d[i];
        if (c == el) {
            if (tag_end < 0)
                tag_end = i;
            count++;
        }
        else if (c == '\n' || c == '\r')
            return PyUnicode_Substring(text, start, end); /* wrapped: unwrapped in Python */
    }
    if (tag_end < 0)
        tag_end = end;
    if (tag_end - lead >= 4 || is_trigger(d + lead, tag_end - lead))
        return PyUnicode_Substring(text, start, end);

    PyObject *seg = PyList_New(count);
    if (seg == NULL)
        return NULL;
    Py_ssize_t from = lead, k = 0;
    for (Py_ssize_t i = lead; i <= end; i++) {
        if (i == end || d[i] == el) {
            PyObject *value = element(d + from, i - from, ascii);
            if (value == NULL) {
                Py_DECREF(seg); /* frees the elements set so far; the rest are NULL */
                return NULL;
            }
            PyList_SET_ITEM(seg, k++, value); /* steals the reference */
            from = i + 1;
        }
    }
    return seg;
}

static int
one_byte_char(PyObject *s, Py_UCS1 *out)
{
    if (!PyUnicode_Check(s) || PyUnicode_GET_LENGTH(s) != 1 || PyUnicode_KIND(s) != PyUnicode_1BYTE_KIND)
        return 0;
    *out = PyUnicode_1BYTE_DATA(s)[0];
    return 1;
}

static PyObject *
split(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "split(text, element, terminator) takes 3 arguments");
        return NULL;
    }
    PyObject *text = args[0];
    Py_UCS1 el, term;
    if (!PyUnicode_Check(text) || PyUnicode_KIND(text) != PyUnicode_1BYTE_KIND
            || !one_byte_char(args[1], &el) || !one_byte_char(args[2], &term))
        Py_RETURN_NONE;
    const Py_UCS1 *d = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    int ascii = PyUnicode_IS_ASCII(text);

    PyObject *items = PyList_New(0);
    if (items == NULL)
        return NULL;
    Py_ssize_t start = 0;
    for (;;) {
        const Py_UCS1 *hit = memchr(d + start, term, n - start);
        Py_ssize_t end = hit ? hit - d : n;
        /* The text after the last terminator stays text, whatever it holds. */
        PyObject *item = hit ? piece(text, d, start, end, el, ascii) : PyUnicode_Substring(text, start, n);
        if (item == NULL || PyList_Append(items, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(items);
            return NULL;
        }
        Py_DECREF(item); /* the list holds it now */
        if (!hit)
            return items;
        start = end + 1;
    }
}

static PyMethodDef methods[] = {
    {"split", (PyCFunction)(void (*)(void))split, METH_FASTCALL,
     "split(text, element, terminator) -> list | None: the X12 pieces of text, ordinary segments split."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "translators._x12", "The X12 reader's hot loop in C (see translators/_x12.c).", -1, methods,
};

PyMODINIT_FUNC
PyInit__x12(void)
{
    return PyModule_Create(&module);
}
