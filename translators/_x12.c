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

   A tokenizer only, like StAEDI's lexer: no business rule lives here. Mapping (PO1 / IT1 and
   PID values, part numbers by qualifier rank, units, numbers) and the syntax notes are written
   once, in Python (translators/messages/x12_common.py). */

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

static PyMethodDef methods[] = {
    {"split", (PyCFunction)(void (*)(void))split, METH_FASTCALL,
     "split(text, element, terminator) -> list | None: the X12 pieces of text, ordinary segments split."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "translators._x12", "The X12 reader's tokenizer in C (see translators/_x12.c).", -1, methods,
};

PyMODINIT_FUNC
PyInit__x12(void)
{
    return PyModule_Create(&module);
}
