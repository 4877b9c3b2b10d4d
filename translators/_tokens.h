/* What the C readers (translators/_x12.c, translators/_edifact.c) share: the white space the
   readers skip around segments, the element values they make, and the loop over the pieces of
   text between terminators. Included by each module, which gets its own copy (and its own
   cache). */

#ifndef EDI_TOKENS_H
#define EDI_TOKENS_H

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

/* Short ASCII values (tags, qualifiers, codes, small quantities) repeat on every segment: they
   share one str object each from this direct-mapped cache, which saves an allocation per
   element. Those that start with a letter (tags, qualifiers, codes) are interned, so the
   mappers' dict lookups (the tables' keys are interned literals) find the hash computed and
   the key by identity; numbers are not looked up, and interning them would cost more than it
   saves. Strings are immutable, so sharing them changes no value. The cache holds one
   reference per entry. */
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

/* A new reference to the value p[0:n]; ``ascii``: the text it comes from is ASCII. */
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
    if (Py_ISALPHA(p[0]))
        PyUnicode_InternInPlace(&s); /* may hand back the interned twin (and drop ours) */
    Py_INCREF(s); /* the cache's reference */
    Py_XSETREF(cache[slot].str, s);
    cache[slot].key = key;
    return s;
}

/* Whether ``s`` is one character of one byte; the character in *out. */
static int
one_byte_char(PyObject *s, Py_UCS1 *out)
{
    if (!PyUnicode_Check(s) || PyUnicode_GET_LENGTH(s) != 1 || PyUnicode_KIND(s) != PyUnicode_1BYTE_KIND)
        return 0;
    *out = PyUnicode_1BYTE_DATA(s)[0];
    return 1;
}

/* Item ``k`` of a segment, the value d[from:to] (``how``: the reader's own): a new reference. */
typedef PyObject *(*item_maker)(const Py_UCS1 *d, Py_ssize_t from, Py_ssize_t to, Py_ssize_t k, const void *how);

/* A new list of the ``count`` items of a segment: item k runs from the end of item k - 1 (the
   start: ``lead``) to ends[k]. (Inlined where it is used, ``make`` a known function.) */
static inline PyObject *
segment_list(const Py_UCS1 *d, Py_ssize_t lead, const Py_ssize_t *ends, Py_ssize_t count, item_maker make,
             const void *how)
{
    PyObject *seg = PyList_New(count);
    if (seg == NULL)
        return NULL;
    Py_ssize_t from = lead;
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *item = make(d, from, ends[k], k, how);
        if (item == NULL) {
            Py_DECREF(seg); /* frees the items set so far; the rest are NULL */
            return NULL;
        }
        PyList_SET_ITEM(seg, k, item); /* steals the reference */
        from = ends[k] + 1;
    }
    return seg;
}

/* What a reader makes of the piece text[start:end] (before a terminator), whose blanks end at
   ``lead`` (< end): a new reference. ``how`` is the reader's own (its character table ...). */
typedef PyObject *(*piece_reader)(PyObject *text, const Py_UCS1 *d, Py_ssize_t start, Py_ssize_t lead,
                                  Py_ssize_t end, const void *how);

/* The items of text.split(terminator) for one-byte text: each piece before a terminator as
   ``read`` makes it, or as it is when it is blank (the readers skip it), and the text after the
   last terminator as it is, whatever it holds. */
static PyObject *
split_pieces(PyObject *text, Py_UCS1 term, piece_reader read, const void *how)
{
    const Py_UCS1 *d = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    PyObject *items = PyList_New(0);
    if (items == NULL)
        return NULL;
    Py_ssize_t start = 0;
    for (;;) {
        const Py_UCS1 *hit = memchr(d + start, term, n - start);
        Py_ssize_t end = hit ? hit - d : n;
        Py_ssize_t lead = start;
        while (lead < end && is_blank(d[lead]))
            lead++;
        PyObject *item = hit && lead < end ? read(text, d, start, lead, end, how) : PyUnicode_Substring(text, start, end);
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

#endif
