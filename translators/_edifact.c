/* The EDIFACT reader's loop in C (optional: setup.py builds it when it can; translators/native.py).

   split(text, element, component, terminator, release) does what envelope._EdifactReader does
   with text.split(terminator) and then, per piece, the split into elements and components with
   release characters resolved, in one pass: each ordinary segment comes back as the reader
   would have made it (["QTY", ["21", "5", "PCE"]]: an element with components is a list, a
   simple element a string), the blanks after the previous terminator (most often its line
   break) taken off its tag. Everything else comes back as the piece of text it is, for the
   Python reader to handle as before: blank pieces, a segment with a line break inside it
   (hard-wrapped files), a tag that is not three plain characters, the envelope tags UNA UNB
   UNG UNH UNT UNE UNZ, a release character at the end of a piece or before a line break, and
   the text after the last terminator. The list has one item per piece of
   text.split(terminator), so the reader's positions are unchanged.

   It returns None (the Python path) unless the text is one byte per character (ASCII or
   Latin-1, what nearly every file decodes to) and the separators are single such characters,
   different from each other and from white space. The reader calls it only where no release
   character stands before a terminator (text.split(terminator) then splits where the
   segments end). */

#include "_tokens.h" /* is_blank, element, one_byte_char, split_pieces */

/* What the scan looks for, per character. */
enum { PLAIN, SEPARATOR, COMPONENT, RELEASE, LINE_BREAK };
#define MAX_ELEMENTS 128 /* a segment with more comes back as text (the Python path splits it) */
/* Per element: whether it holds a component separator / a release character. */
#define HAS_COMPONENT 1
#define HAS_RELEASE 2

/* envelope._EDIFACT_ENVELOPE and UNA: the tags the reader must see itself. */
static int
is_service(const Py_UCS1 *tag)
{
    if (tag[0] != 'U' || tag[1] != 'N')
        return 0;
    switch (tag[2]) {
    case 'A': case 'B': case 'G': case 'H': case 'T': case 'E': case 'Z':
        return 1;
    }
    return 0;
}

/* A new reference to the value d[from:to]; ``released``: release characters are in it, and
   each one stands for the character after it (which is never past ``to``: see piece). */
static PyObject *
value(const Py_UCS1 *d, Py_ssize_t from, Py_ssize_t to, int released, Py_UCS1 rel, int ascii)
{
    if (!released)
        return element(d + from, to - from, ascii);
    Py_UCS1 small[256], *buf = small;
    if (to - from > (Py_ssize_t)sizeof(small) && (buf = PyMem_Malloc(to - from)) == NULL)
        return PyErr_NoMemory();
    Py_ssize_t n = 0;
    for (Py_ssize_t i = from; i < to; i++) {
        if (d[i] == rel && i + 1 < to)
            i++;
        buf[n++] = d[i];
    }
    PyObject *out = element(buf, n, ascii);
    if (buf != small)
        PyMem_Free(buf);
    return out;
}

/* Element d[from:to] split into its components: a new list. */
static PyObject *
components(const Py_UCS1 *d, Py_ssize_t from, Py_ssize_t to, const unsigned char *kinds, int released,
           Py_UCS1 rel, int ascii)
{
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    Py_ssize_t start = from;
    for (Py_ssize_t i = from; i <= to; i++) {
        if (i < to) {
            unsigned char kind = kinds[d[i]];
            if (kind == RELEASE) {
                i++; /* the released character is data */
                continue;
            }
            if (kind != COMPONENT)
                continue;
        }
        PyObject *v = value(d, start, i, released, rel, ascii);
        if (v == NULL || PyList_Append(list, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(v); /* the list holds it now */
        start = i + 1;
    }
    return list;
}

/* How split reads a piece: ``kinds`` classifies each character; ``rel``: the release character
   (when kinds has one); ``ascii``: the text is ASCII. */
typedef struct {
    unsigned char kinds[256];
    Py_UCS1 rel;
    int ascii;
} Reading;

/* How a segment's items are made: the Reading, and what each element holds (its flags). */
typedef struct {
    const Reading *reading;
    const unsigned char *flags;
} Items;

/* Element k of a segment, its components split when it has some (an item_maker: ``how`` is an
   Items). */
static PyObject *
item_of(const Py_UCS1 *d, Py_ssize_t from, Py_ssize_t to, Py_ssize_t k, const void *how)
{
    const Reading *r = ((const Items *)how)->reading;
    unsigned char flags = ((const Items *)how)->flags[k];
    int released = (flags & HAS_RELEASE) != 0;
    return flags & HAS_COMPONENT ? components(d, from, to, r->kinds, released, r->rel, r->ascii)
                                 : value(d, from, to, released, r->rel, r->ascii);
}

/* The piece text[start:end] as a new reference: the segment when it is an ordinary one, else
   the piece itself (a piece_reader: ``how`` is a Reading). */
static PyObject *
piece(PyObject *text, const Py_UCS1 *d, Py_ssize_t start, Py_ssize_t lead, Py_ssize_t end, const void *how)
{
    const unsigned char *kinds = ((const Reading *)how)->kinds;
    /* One pass: where each element ends, and what it holds. */
    Py_ssize_t ends[MAX_ELEMENTS], count = 0;
    unsigned char flags[MAX_ELEMENTS];
    flags[0] = 0;
    for (Py_ssize_t i = lead; i < end; i++) {
        unsigned char kind = kinds[d[i]];
        if (kind == PLAIN)
            continue;
        if (kind == COMPONENT) {
            flags[count] |= HAS_COMPONENT;
            continue;
        }
        if (kind == RELEASE) {
            /* Released: the next character is data. At the end of the piece or before a line
               break the Python path decides (the piece may be wrapped, or the file's end). */
            if (i + 1 == end || kinds[d[i + 1]] == LINE_BREAK)
                return PyUnicode_Substring(text, start, end);
            flags[count] |= HAS_RELEASE;
            i++;
            continue;
        }
        if (kind == LINE_BREAK || count == MAX_ELEMENTS - 1)
            return PyUnicode_Substring(text, start, end); /* unwrapped or split in Python */
        ends[count++] = i; /* SEPARATOR */
        flags[count] = 0;
    }
    ends[count++] = end;
    if (ends[0] - lead != 3 || flags[0] != 0 || is_service(d + lead))
        return PyUnicode_Substring(text, start, end);

    Items items = {how, flags};
    return segment_list(d, lead, ends, count, item_of, &items);
}

static PyObject *
split(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "split(text, element, component, terminator, release) takes 5 arguments");
        return NULL;
    }
    PyObject *text = args[0];
    Py_UCS1 el, comp, term, rel = 0;
    int has_release = args[4] != Py_None && !(PyUnicode_Check(args[4]) && PyUnicode_GET_LENGTH(args[4]) == 0);
    if (!PyUnicode_Check(text) || PyUnicode_KIND(text) != PyUnicode_1BYTE_KIND
            || !one_byte_char(args[1], &el) || !one_byte_char(args[2], &comp) || !one_byte_char(args[3], &term)
            || (has_release && !one_byte_char(args[4], &rel)))
        Py_RETURN_NONE;
    if (el == comp || el == term || comp == term || is_blank(el) || is_blank(comp) || is_blank(term)
            || (has_release && (rel == el || rel == comp || rel == term || is_blank(rel))))
        Py_RETURN_NONE; /* separators the Python path sorts out */
    Reading how = {{0}, rel, PyUnicode_IS_ASCII(text)};
    how.kinds['\n'] = how.kinds['\r'] = LINE_BREAK;
    how.kinds[el] = SEPARATOR;
    how.kinds[comp] = COMPONENT;
    if (has_release)
        how.kinds[rel] = RELEASE;
    return split_pieces(text, term, piece, &how);
}

static PyMethodDef methods[] = {
    {"split", (PyCFunction)(void (*)(void))split, METH_FASTCALL,
     "split(text, element, component, terminator, release) -> list | None: the EDIFACT pieces of text, "
     "ordinary segments split."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "translators._edifact", "The EDIFACT reader's loop in C (see translators/_edifact.c).", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__edifact(void)
{
    return PyModule_Create(&module);
}
