/* The X12 hot path in C (optional: setup.py builds it when it can; translators/native.py).

   The reader's loop. split(text, element, terminator) does what envelope._X12Reader does with
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
   characters.

   The mappers' value work (translators/messages/x12_common.py): decimal(), item(),
   description() and passes() do the common case of X12Mapper.num, X12Mapper._item (with the
   segment's checks), X12Mapper._pid (likewise) and passes(); lines() runs the line loop's
   plain PO1 / IT1 and PID segments as those handlers would, in one call. All but passes()
   return None for anything else (a value that needs a finding, a shape they do not know, a
   segment failing its checks), and the Python code then runs as it always did: they change
   no result, only its cost. */

#include "_tokens.h" /* is_blank, element, one_byte_char, split_pieces */

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

/* What the scan looks for, per character: the element separator, a line break, or nothing. */
enum { PLAIN, SEPARATOR, LINE_BREAK };
#define MAX_ELEMENTS 128 /* a segment with more comes back as text (the Python path splits it) */

/* How split reads a piece: ``kinds`` classifies each character; ``ascii``: the text is ASCII. */
typedef struct {
    unsigned char kinds[256];
    int ascii;
} Reading;

/* Element k of a segment (an item_maker: ``how`` is a Reading). */
static PyObject *
element_of(const Py_UCS1 *d, Py_ssize_t from, Py_ssize_t to, Py_ssize_t k, const void *how)
{
    return element(d + from, to - from, ((const Reading *)how)->ascii);
}

/* The piece text[start:end] as a new reference: an element list when it is an ordinary
   segment, else the piece itself (a piece_reader: ``how`` is a Reading). */
static PyObject *
piece(PyObject *text, const Py_UCS1 *d, Py_ssize_t start, Py_ssize_t lead, Py_ssize_t end, const void *how)
{
    const unsigned char *kinds = ((const Reading *)how)->kinds;
    /* One pass: where each element ends; a line break inside means a hard-wrapped segment. */
    Py_ssize_t ends[MAX_ELEMENTS], count = 0;
    for (Py_ssize_t i = lead; i < end; i++) {
        unsigned char kind = kinds[d[i]];
        if (kind == PLAIN)
            continue;
        if (kind == LINE_BREAK || count == MAX_ELEMENTS - 1)
            return PyUnicode_Substring(text, start, end); /* unwrapped or split in Python */
        ends[count++] = i;
    }
    ends[count++] = end;
    Py_ssize_t tag_length = ends[0] - lead;
    if (tag_length >= 4 || is_trigger(d + lead, tag_length))
        return PyUnicode_Substring(text, start, end);

    return segment_list(d, lead, ends, count, element_of, how);
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
    Reading how = {{0}, PyUnicode_IS_ASCII(text)};
    how.kinds[el] = SEPARATOR;
    how.kinds['\n'] = how.kinds['\r'] = LINE_BREAK; /* first: the reader takes line breaks out before splitting */
    return split_pieces(text, term, piece, &how);
}

/* ------------------------------------------------------------------------------------------
   The mappers' value work. Every function takes exact str elements (what the reader makes). */

static inline int
is_space_at(PyObject *s, Py_ssize_t i)
{
    if (PyUnicode_IS_ASCII(s))
        return Py_UNICODE_ISSPACE(PyUnicode_1BYTE_DATA(s)[i]);
    return Py_UNICODE_ISSPACE(PyUnicode_READ_CHAR(s, i));
}

/* s.strip() as a new reference (s itself when there is nothing to strip). */
static PyObject *
strip(PyObject *s)
{
    Py_ssize_t a = 0, b = PyUnicode_GET_LENGTH(s);
    if (b && !is_space_at(s, 0) && !is_space_at(s, b - 1)) {
        Py_INCREF(s); /* the common case: nothing to strip */
        return s;
    }
    while (a < b && is_space_at(s, a))
        a++;
    while (b > a && is_space_at(s, b - 1))
        b--;
    return PyUnicode_Substring(s, a, b);
}

/* dict[key] = value.strip(): 0, or -1 on an error. */
static int
set_stripped(PyObject *dict, PyObject *key, PyObject *value)
{
    PyObject *text = strip(value);
    if (text == NULL)
        return -1;
    int rc = PyDict_SetItem(dict, key, text);
    Py_DECREF(text);
    return rc;
}

/* not s.strip() */
static int
is_blank_str(PyObject *s)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    for (Py_ssize_t i = 0; i < n; i++)
        if (!is_space_at(s, i))
            return 0;
    return 1;
}

static int
all_digits(const char *p, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i] < '0' || p[i] > '9')
            return 0;
    return n > 0;
}

/* X12Mapper.num's fast paths for a non-empty value: ASCII digits (with ``implied`` decimals,
   X12 Nn), or digits with one decimal point. A new reference, or NULL without an error set
   when the value needs the Python path. */
static PyObject *
canonical_decimal(PyObject *v, long implied)
{
    if (!PyUnicode_IS_ASCII(v))
        return NULL;
    const char *p = (const char *)PyUnicode_1BYTE_DATA(v);
    Py_ssize_t n = PyUnicode_GET_LENGTH(v), z = 0;
    if (all_digits(p, n)) {
        while (z < n && p[z] == '0')
            z++;
        if (implied == 0)
            return z == n ? PyUnicode_FromString("0") : PyUnicode_Substring(v, z, n); /* v.lstrip("0") or "0" */
        if (implied < 0 || implied > 64)
            return NULL;
        /* divmod(int(v), 10**implied) written "q.r": the digits split before the last
           ``implied`` ones, the quotient without leading zeros, the remainder zero-padded. */
        Py_ssize_t digits = n - z, q = digits > implied ? digits - implied : 0;
        PyObject *out = PyUnicode_New((q ? q : 1) + 1 + implied, 127);
        if (out == NULL)
            return NULL;
        char *o = (char *)PyUnicode_1BYTE_DATA(out);
        if (q) {
            memcpy(o, p + z, q);
            o += q;
        }
        else
            *o++ = '0';
        *o++ = '.';
        Py_ssize_t pad = implied - (digits - q);
        memset(o, '0', pad);
        memcpy(o + pad, p + z + q, digits - q);
        return out;
    }
    if (implied)
        return NULL;
    const char *dot = memchr(p, '.', n);
    if (dot == NULL)
        return NULL;
    Py_ssize_t a = dot - p;
    if (!all_digits(dot + 1, n - a - 1) || (a && !all_digits(p, a)))
        return NULL;
    if (a && p[0] != '0') {
        Py_INCREF(v); /* already canonical: "12.34" */
        return v;
    }
    while (z < a && p[z] == '0')
        z++;
    if (z < a) /* "012.5" -> "12.5" */
        return PyUnicode_Substring(v, z, n);
    /* "0.5", ".5", "00.5" -> "0.5" */
    PyObject *out = PyUnicode_New(n - a + 1, 127);
    if (out == NULL)
        return NULL;
    char *o = (char *)PyUnicode_1BYTE_DATA(out);
    o[0] = '0';
    memcpy(o + 1, dot, n - a);
    return out;
}

static PyObject *
decimal(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyUnicode_CheckExact(args[0]) || !PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "decimal(value: str, implied: int)");
        return NULL;
    }
    long implied = PyLong_AsLong(args[1]);
    if (implied == -1 && PyErr_Occurred())
        return NULL;
    if (PyUnicode_GET_LENGTH(args[0]) == 0)
        Py_RETURN_NONE;
    PyObject *out = canonical_decimal(args[0], implied);
    if (out == NULL && !PyErr_Occurred())
        Py_RETURN_NONE;
    return out;
}

/* Whether a segment passes its syntax checks (x12_common.passes): 1, 0, or -1 on an error.
   ``packed`` is x12_common.Checks.packed: groups of a kind (M mandatory, or a syntax note's
   C P R E), a count and that many element positions, one byte each. */
static int
check_spec(PyObject *seg, PyObject *packed)
{
    if (!PyBytes_CheckExact(packed)) {
        PyErr_SetString(PyExc_TypeError, "a segment's checks come packed in bytes (x12_common.Checks)");
        return -1;
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(packed);
    const unsigned char *stop = p + PyBytes_GET_SIZE(packed);
    Py_ssize_t n = PyList_GET_SIZE(seg);
    while (p < stop) {
        if (stop - p < 2 || stop - p - 2 < p[1]) {
            PyErr_SetString(PyExc_ValueError, "packed checks cut short");
            return -1;
        }
        unsigned char kind = p[0], m = p[1];
        const unsigned char *els = p + 2;
        p = els + m;
        Py_ssize_t count = 0;
        for (Py_ssize_t j = 0; j < m; j++) {
            Py_ssize_t k = els[j];
            PyObject *v = k < n ? PyList_GET_ITEM(seg, k) : NULL;
            if (v != NULL && !PyUnicode_Check(v)) {
                PyErr_SetString(PyExc_TypeError, "an X12 segment holds str elements");
                return -1;
            }
            if (kind == 'M') { /* mandatory: there, and not blank */
                if (v == NULL || is_blank_str(v))
                    return 0;
                continue;
            }
            int has = v != NULL && PyUnicode_GET_LENGTH(v) != 0;
            if (kind == 'C' && j == 0 && !has)
                break; /* C: nothing required when the first is absent */
            count += has;
        }
        /* C conditional and P paired: all or none; R required: one at least; E exclusion: one at most. */
        if (((kind == 'C' || kind == 'P') && count && count != m) || (kind == 'R' && !count) || (kind == 'E' && count > 1))
            return 0;
    }
    return 1;
}

/* The line keys item() and description() set, and "" (made once, at import). */
static PyObject *key_line_number, *key_quantity, *key_uom, *key_unit_price, *key_description, *empty;

/* Element k of seg as a borrowed str, or NULL (no error set) when it is not an exact str. */
static PyObject *
element_at(PyObject *seg, Py_ssize_t k)
{
    PyObject *v = PyList_GET_ITEM(seg, k);
    return PyUnicode_CheckExact(v) ? v : NULL;
}

#define GIVE_UP 1 /* a return value of the helpers below: the Python path decides */

/* line[key] = num(seg, k) for an element that is there. 0, GIVE_UP, or -1 on an error. */
static int
set_number(PyObject *line, PyObject *key, PyObject *seg, Py_ssize_t k)
{
    PyObject *v = element_at(seg, k);
    if (v == NULL)
        return GIVE_UP;
    if (PyUnicode_GET_LENGTH(v) == 0)
        return PyDict_SetItem(line, key, Py_None);
    PyObject *d = canonical_decimal(v, 0);
    if (d == NULL)
        return PyErr_Occurred() ? -1 : GIVE_UP;
    int rc = PyDict_SetItem(line, key, d);
    Py_DECREF(d);
    return rc;
}

/* The best rank per part-number field so far: what X12Mapper.line_parts holds. */
#define MAX_FIELDS 8
typedef struct {
    Py_ssize_t count;
    PyObject *field[MAX_FIELDS]; /* borrowed from the mapping's qualifier table */
    PyObject *rank[MAX_FIELDS];
} Ranks;

/* The slot of ``field`` in ``ranks`` (a new one when it has none), or -1 when full. */
static Py_ssize_t
rank_slot(Ranks *ranks, PyObject *field)
{
    for (Py_ssize_t i = 0; i < ranks->count; i++)
        if (ranks->field[i] == field)
            return i; /* the common case: the table's tuples share their field names */
    for (Py_ssize_t i = 0; i < ranks->count; i++)
        if (PyUnicode_GET_LENGTH(ranks->field[i]) == PyUnicode_GET_LENGTH(field)
                && PyUnicode_Compare(ranks->field[i], field) == 0)
            return i;
    if (ranks->count == MAX_FIELDS)
        return -1;
    ranks->field[ranks->count] = field;
    ranks->rank[ranks->count] = NULL;
    return ranks->count++;
}

/* X12Mapper._parts(seg, i, 6) for pairs that need no finding: a known qualifier (as sent)
   with a value, or both empty. */
static int
read_parts(PyObject *seg, PyObject *parts, PyObject *line, Ranks *ranks)
{
    Py_ssize_t n = PyList_GET_SIZE(seg), stop = n < 26 ? n : 26;
    for (Py_ssize_t k = 6; k < stop; k += 2) {
        PyObject *q = element_at(seg, k);
        PyObject *v = k + 1 < n ? element_at(seg, k + 1) : empty;
        if (q == NULL || v == NULL)
            return GIVE_UP;
        Py_ssize_t qn = PyUnicode_GET_LENGTH(q), vn = PyUnicode_GET_LENGTH(v);
        if (qn == 0 && vn == 0)
            continue;
        if (qn == 0 || vn == 0 || is_blank_str(v))
            return GIVE_UP; /* half a pair: a finding */
        PyObject *hit = PyDict_GetItemWithError(parts, q); /* borrowed: (field, rank) */
        if (hit == NULL) {
            if (PyErr_Occurred())
                return -1;
            if (is_space_at(q, 0) || is_space_at(q, qn - 1))
                return GIVE_UP; /* looked up again stripped */
            continue; /* a qualifier the mapping does not use */
        }
        if (!PyTuple_CheckExact(hit) || PyTuple_GET_SIZE(hit) != 2 || !PyUnicode_Check(PyTuple_GET_ITEM(hit, 0)))
            return GIVE_UP;
        PyObject *field = PyTuple_GET_ITEM(hit, 0), *rank = PyTuple_GET_ITEM(hit, 1);
        Py_ssize_t slot = rank_slot(ranks, field);
        if (slot < 0)
            return GIVE_UP;
        PyObject *cur = ranks->rank[slot];
        int better = 1;
        if (cur != NULL && (better = PyObject_RichCompareBool(rank, cur, Py_LT)) < 0)
            return -1;
        if (!better)
            continue;
        if (set_stripped(line, field, v) < 0)
            return -1;
        ranks->rank[slot] = rank; /* borrowed: the table holds it */
    }
    return 0;
}

/* seg[k].strip() as a new reference in *out: 0, GIVE_UP (not text), or -1 on an error. */
static int
stripped_at(PyObject *seg, Py_ssize_t k, PyObject **out)
{
    PyObject *v = element_at(seg, k);
    if (v == NULL)
        return GIVE_UP;
    *out = strip(v);
    return *out == NULL ? -1 : 0;
}

/* The line of a PO1 / IT1 whose every value is plain: X12Mapper._item without its loop
   state. 0, GIVE_UP, or -1 on an error. */
static int
fill_item(PyObject *seg, PyObject *uoms, PyObject *parts, PyObject *line, Ranks *ranks)
{
    Py_ssize_t n = PyList_GET_SIZE(seg);
    PyObject *v5 = n > 5 ? element_at(seg, 5) : NULL;
    if (n > 5 && (v5 == NULL || (PyUnicode_GET_LENGTH(v5) && (n == 6 || n % 2 == 1))))
        return GIVE_UP; /* PO105 may hold a qualifier: the pairs may start one early */
    int rc;
    PyObject *number, *uom;
    if (n > 1) {
        if ((rc = stripped_at(seg, 1, &number)) != 0)
            return rc;
        rc = PyDict_SetItem(line, key_line_number, PyUnicode_GET_LENGTH(number) ? number : Py_None);
        Py_DECREF(number);
        if (rc < 0)
            return -1;
    }
    if (n > 2 && (rc = set_number(line, key_quantity, seg, 2)) != 0)
        return rc;
    if (n > 3) {
        if ((rc = stripped_at(seg, 3, &uom)) != 0)
            return rc;
        if (PyUnicode_GET_LENGTH(uom)) {
            /* uom = plan.uom.get(uom, uom); if uom: line["uom"] = uom (most mappings translate none) */
            PyObject *mapped = PyDict_GET_SIZE(uoms) ? PyDict_GetItemWithError(uoms, uom) : NULL; /* borrowed */
            rc = mapped ? PyObject_IsTrue(mapped) : PyErr_Occurred() ? -1 : 1;
            if (rc > 0)
                rc = PyDict_SetItem(line, key_uom, mapped ? mapped : uom);
        }
        Py_DECREF(uom);
        if (rc < 0)
            return -1;
    }
    if (n > 4 && (rc = set_number(line, key_unit_price, seg, 4)) != 0)
        return rc;
    return read_parts(seg, parts, line, ranks);
}

/* The line of a PO1 / IT1 that passes its ``checks`` (packed, or None for none) and whose every
   value is plain: a new reference in *out. ``ranks``, a dict or NULL, receives the rank of the
   qualifier each part number came from. 0, GIVE_UP, or -1 on an error. */
static int
make_line(PyObject *seg, PyObject *uoms, PyObject *parts, PyObject *empty_line, PyObject *checks, PyObject *ranks_out,
          PyObject **out)
{
    int ok = checks == Py_None ? 1 : check_spec(seg, checks);
    if (ok <= 0)
        return ok < 0 ? -1 : GIVE_UP; /* the mapper explains what fails */
    PyObject *line = PyDict_Copy(empty_line);
    if (line == NULL)
        return -1;
    Ranks ranks = {0};
    int rc = fill_item(seg, uoms, parts, line, &ranks);
    for (Py_ssize_t i = 0; rc == 0 && ranks_out != NULL && i < ranks.count; i++)
        if (ranks.rank[i] != NULL && PyDict_SetItem(ranks_out, ranks.field[i], ranks.rank[i]) < 0)
            rc = -1;
    if (rc != 0) {
        Py_DECREF(line);
        return rc;
    }
    *out = line;
    return 0;
}

/* item(segment, uoms, parts, empty_line, checks[, ranks]): the line of a PO1 / IT1 that passes
   its checks (packed, or None for none) and whose every value is plain, or None. ``ranks``,
   a dict when given, receives the rank of the qualifier each part number came from
   (X12Mapper.line_parts: only a LIN in the line loop needs it, so the mapper asks then). */
static PyObject *
item(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if ((nargs != 5 && nargs != 6) || !PyList_CheckExact(args[0]) || !PyDict_CheckExact(args[1])
            || !PyDict_CheckExact(args[2]) || !PyDict_CheckExact(args[3]) || (nargs == 6 && !PyDict_Check(args[5]))) {
        PyErr_SetString(PyExc_TypeError, "item(segment: list, uoms: dict, parts: dict, empty_line: dict, checks[, ranks: dict])");
        return NULL;
    }
    PyObject *line;
    int rc = make_line(args[0], args[1], args[2], args[3], args[4], nargs == 6 ? args[5] : NULL, &line);
    if (rc != 0) {
        if (rc < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    return line;
}

static PyObject *
passes(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "passes(segment: list, checks: bytes)");
        return NULL;
    }
    int ok = check_spec(args[0], args[1]);
    if (ok < 0)
        return NULL;
    return PyBool_FromLong(ok);
}

/* Whether the str ``tag`` is the ASCII ``text``, without a call (tags, codes). */
static inline int
tag_is(PyObject *tag, const char *text, Py_ssize_t n)
{
    return PyUnicode_GET_LENGTH(tag) == n && PyUnicode_KIND(tag) == PyUnicode_1BYTE_KIND
           && memcmp(PyUnicode_1BYTE_DATA(tag), text, n) == 0;
}

/* X12Mapper._pid for a PID that passes its ``checks`` (packed, or None): the line's description
   is the first PID05, or the first from a PID02 "08" (product description); *desc08 says
   whether it came from one. 0, GIVE_UP (the mapper explains), or -1 on an error. */
static int
read_description(PyObject *seg, PyObject *checks, PyObject *line, int *desc08)
{
    int ok = checks == Py_None ? 1 : check_spec(seg, checks);
    if (ok <= 0)
        return ok < 0 ? -1 : GIVE_UP;
    Py_ssize_t n = PyList_GET_SIZE(seg);
    PyObject *v5 = n > 5 ? element_at(seg, 5) : NULL, *v2 = n > 2 ? element_at(seg, 2) : NULL;
    if ((n > 5 && v5 == NULL) || (n > 2 && v2 == NULL))
        return GIVE_UP; /* not text: the Python path */
    if (line == Py_None || v5 == NULL || is_blank_str(v5))
        return 0; /* nothing to take */
    PyObject *code = strip(v2 ? v2 : empty);
    if (code == NULL)
        return -1;
    int is08 = tag_is(code, "08", 2);
    Py_DECREF(code);
    PyObject *current = PyDict_GetItemWithError(line, key_description); /* borrowed */
    if (current == NULL)
        return PyErr_Occurred() ? -1 : GIVE_UP; /* no such key: the Python path says so */
    if (current != Py_None && !(is08 && !*desc08))
        return 0;
    if (set_stripped(line, key_description, v5) < 0)
        return -1;
    *desc08 = is08;
    return 0;
}

/* description(segment, checks, line, desc08) -> bool | None: X12Mapper._pid for a PID that
   passes its checks (None when it does not: the mapper explains); the result is the new desc08. */
static PyObject *
description(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyList_CheckExact(args[0]) || (args[2] != Py_None && !PyDict_CheckExact(args[2]))
            || !PyBool_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "description(segment: list, checks, line: dict | None, desc08: bool)");
        return NULL;
    }
    int desc08 = args[3] == Py_True;
    int rc = read_description(args[0], args[1], args[2], &desc08);
    if (rc != 0) {
        if (rc < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    return PyBool_FromLong(desc08);
}

/* Whether elements 2, 3 and 4 (quantity, unit, price) are there and not blank: a line the
   message modules find nothing to say about (X12Mapper subclasses check those themselves). */
static int
has_amounts(PyObject *seg)
{
    if (PyList_GET_SIZE(seg) <= 4)
        return 0;
    for (Py_ssize_t k = 2; k <= 4; k++) {
        PyObject *v = element_at(seg, k);
        if (v == NULL || is_blank_str(v))
            return 0;
    }
    return 1;
}

/* lines(segments, start, line_tag, line_checks, pid_checks, uoms, parts, empty_line, lines_out)
   -> (stop, line, line_segment, desc08) | None: X12Mapper.run over the line loop from
   segments[start] (a line segment), as its line and PID handlers would read it: each line
   appended to lines_out, each PID's description put on its line. It stops before the first
   segment that is neither, or that item() or description() would hand back, or a line whose
   quantity, unit or price is missing or blank (the message modules check those); ``stop`` is
   where, and the rest is the state the loop leaves (the last line, its segment, desc08).
   None when it stops at ``start``. */
static PyObject *
lines(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9 || !PyList_CheckExact(args[0]) || !PyLong_Check(args[1]) || !PyUnicode_Check(args[2])
            || !PyDict_CheckExact(args[5]) || !PyDict_CheckExact(args[6]) || !PyDict_CheckExact(args[7])
            || !PyList_Check(args[8])) {
        PyErr_SetString(PyExc_TypeError, "lines(segments: list, start: int, line_tag: str, line_checks, pid_checks, "
                        "uoms: dict, parts: dict, empty_line: dict, lines_out: list)");
        return NULL;
    }
    PyObject *segs = args[0], *lines_out = args[8];
    Py_ssize_t k = PyLong_AsSsize_t(args[1]), n = PyList_GET_SIZE(segs);
    if (k == -1 && PyErr_Occurred())
        return NULL;
    if (PyUnicode_KIND(args[2]) != PyUnicode_1BYTE_KIND)
        Py_RETURN_NONE;
    const char *line_tag = (const char *)PyUnicode_1BYTE_DATA(args[2]);
    Py_ssize_t line_tag_length = PyUnicode_GET_LENGTH(args[2]);
    PyObject *line = NULL, *line_seg = NULL; /* the line being read (our reference), its segment (borrowed) */
    int desc08 = 0;
    for (; k >= 0 && k < n; k++) {
        PyObject *seg = PyList_GET_ITEM(segs, k);
        PyObject *tag = PyList_CheckExact(seg) && PyList_GET_SIZE(seg) ? PyList_GET_ITEM(seg, 0) : NULL;
        if (tag == NULL || !PyUnicode_CheckExact(tag))
            break;
        int rc;
        if (tag_is(tag, line_tag, line_tag_length)) {
            if (!has_amounts(seg))
                break;
            PyObject *made;
            if ((rc = make_line(seg, args[5], args[6], args[7], args[3], NULL, &made)) != 0) {
                if (rc < 0)
                    goto error;
                break;
            }
            if (PyList_Append(lines_out, made) < 0) {
                Py_DECREF(made);
                goto error;
            }
            Py_XSETREF(line, made); /* ours now; lines_out holds its own */
            line_seg = seg;
            desc08 = 0;
        }
        else if (line != NULL && tag_is(tag, "PID", 3)) {
            if ((rc = read_description(seg, args[4], line, &desc08)) != 0) {
                if (rc < 0)
                    goto error;
                break;
            }
        }
        else
            break;
    }
    if (line == NULL)
        Py_RETURN_NONE;
    return Py_BuildValue("(nNOO)", k, line, line_seg, desc08 ? Py_True : Py_False); /* N: steals ours */
error:
    Py_XDECREF(line);
    return NULL;
}

static PyMethodDef methods[] = {
    {"split", (PyCFunction)(void (*)(void))split, METH_FASTCALL,
     "split(text, element, terminator) -> list | None: the X12 pieces of text, ordinary segments split."},
    {"decimal", (PyCFunction)(void (*)(void))decimal, METH_FASTCALL,
     "decimal(value, implied) -> str | None: X12Mapper.num's common case, None for the rest."},
    {"item", (PyCFunction)(void (*)(void))item, METH_FASTCALL,
     "item(segment, uoms, parts, empty_line, checks[, ranks]) -> dict | None: a plain PO1 / IT1 line."},
    {"passes", (PyCFunction)(void (*)(void))passes, METH_FASTCALL,
     "passes(segment, checks) -> bool: x12_common.passes, the checks packed (x12_common.Checks)."},
    {"description", (PyCFunction)(void (*)(void))description, METH_FASTCALL,
     "description(segment, checks, line, desc08) -> bool | None: a PID that passes its checks."},
    {"lines", (PyCFunction)(void (*)(void))lines, METH_FASTCALL,
     "lines(segments, start, line_tag, line_checks, pid_checks, uoms, parts, empty_line, lines_out) "
     "-> (stop, line, line_segment, desc08) | None: the line loop's plain lines and PIDs."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "translators._x12", "The X12 hot path in C (see translators/_x12.c).", -1, methods,
};

PyMODINIT_FUNC
PyInit__x12(void)
{
    key_line_number = PyUnicode_InternFromString("line_number");
    key_quantity = PyUnicode_InternFromString("quantity");
    key_uom = PyUnicode_InternFromString("uom");
    key_unit_price = PyUnicode_InternFromString("unit_price");
    key_description = PyUnicode_InternFromString("description");
    empty = PyUnicode_New(0, 0);
    if (!key_line_number || !key_quantity || !key_uom || !key_unit_price || !key_description || !empty)
        return NULL; /* the import fails: the pure path */
    return PyModule_Create(&module);
}
