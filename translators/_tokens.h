/* What the C readers (translators/_x12.c, translators/_edifact.c) share: the white space the
   readers skip around segments, and the element values they make. Included by each module,
   which gets its own copy (and its own cache). */

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

#endif
