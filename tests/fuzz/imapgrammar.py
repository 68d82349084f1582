"""Hypothesis strategies for IMAP client input: RFC 3501's grammar (sequence sets, search keys,
FETCH items, flags, mailbox names, strings as atoms, quoted strings and literals, synchronizing
or not), with wrong pieces mixed in so that the error paths run as well as the good ones."""

from __future__ import annotations

from hypothesis import strategies as st

ATOM_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '(){ %*"\\]')
atoms = st.text(ATOM_CHARS, min_size=1, max_size=8).map(str.encode)
junk = st.binary(max_size=12).filter(lambda b: not set(b) & set(b"\r\n}"))

numbers = st.one_of(st.integers(0, 12), st.sampled_from([4294967295, 4294967296, 10**20]))


def _range(pair: tuple[int | None, int | None]) -> bytes:
    lo, hi = (b"*" if n is None else b"%d" % n for n in pair)
    return lo if pair[0] == pair[1] else lo + b":" + hi


seq_numbers = st.one_of(st.none(), st.integers(1, 12), st.just(4294967295))
seq_ranges = st.lists(st.tuples(seq_numbers, seq_numbers), min_size=1, max_size=4)
_good_seq_sets = seq_ranges.map(lambda rs: b",".join(map(_range, rs)))
seq_sets = st.one_of(
    _good_seq_sets, _good_seq_sets, _good_seq_sets,
    st.sampled_from([b"0", b"1:0", b",", b"1,", b":", b"1::2", b"$", b"*:*", b"99999999999999"]),
)


@st.composite
def strings(draw: st.DrawFn, content: st.SearchStrategy[bytes] | None = None) -> bytes:
    """An atom, a quoted string or a literal (``{N}`` or ``{N+}``, CRLF, N bytes) of
    ``content``."""
    value = draw(content if content is not None else st.binary(max_size=10))
    kind = draw(st.sampled_from(["atom", "quoted", "sync", "plus"]))
    if kind == "atom" and value and all(chr(c) in ATOM_CHARS for c in value):
        return value
    if kind == "quoted" and b"\r" not in value and b"\n" not in value:
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    plus = b"+" if kind == "plus" else b""
    return b"{%d%s}\r\n" % (len(value), plus) + value


mailboxes = strings(st.sampled_from([
    b"INBOX", b"inbox", b"Trash", b"Sent", b"a", b"a/b", b"INBOX/x", b"Caf&AOk-", b"&",
    b"&-", b"&Jjo", b"/", b"a//b", b"..", b"", b"NIL", b"x" * 300, b"\xff\xfe",
]))

FLAGS = [b"\\Seen", b"\\Answered", b"\\Flagged", b"\\Deleted", b"\\Draft", b"\\Recent",
         b"\\Bogus", b"$Work", b"Junk", b"\\*", b"a]b", b"\\", b"NIL"]
flags = st.one_of(st.sampled_from(FLAGS), atoms)


@st.composite
def flag_lists(draw: st.DrawFn) -> bytes:
    inner = b" ".join(draw(st.lists(flags, max_size=4)))
    return draw(st.sampled_from([b"(%s)"] * 5 + [b"%s", b"((%s))", b"(%s"])) % inner


DATES = [b"14-Sep-2026", b"1-Jan-1970", b"31-Feb-2026", b"14-Foo-2026", b"x", b"99-Sep-99999",
         b'"14-Sep-2026"']
dates = st.sampled_from(DATES)

_NO_ARG = [b"ALL", b"ANSWERED", b"DELETED", b"DRAFT", b"FLAGGED", b"NEW", b"OLD", b"RECENT",
           b"SEEN", b"UNANSWERED", b"UNDELETED", b"UNDRAFT", b"UNFLAGGED", b"UNSEEN"]
_STRING_ARG = [b"BCC", b"BODY", b"CC", b"FROM", b"SUBJECT", b"TEXT", b"TO", b"KEYWORD",
               b"UNKEYWORD"]
_DATE_ARG = [b"BEFORE", b"ON", b"SINCE", b"SENTBEFORE", b"SENTON", b"SENTSINCE"]
search_text = strings(st.sampled_from([b"", b"a", b"Caf\xc3\xa9", b"boss", b"lunch", b"\xff",
                                       b"bob@example.org", b"=?utf-8?q?x?="]))

search_leaves = st.one_of(
    st.sampled_from(_NO_ARG),
    st.tuples(st.sampled_from(_STRING_ARG), search_text).map(b" ".join),
    st.tuples(st.sampled_from(_DATE_ARG), dates).map(b" ".join),
    st.tuples(st.just(b"HEADER"), strings(st.sampled_from([b"Subject", b"X-A", b""])),
              search_text).map(b" ".join),
    st.tuples(st.sampled_from([b"LARGER", b"SMALLER"]), numbers.map(b"%d".__mod__)
              ).map(b" ".join),
    st.tuples(st.just(b"UID"), seq_sets).map(b" ".join),
    seq_sets,
    atoms,
)
search_keys = st.recursive(
    search_leaves,
    lambda keys: st.one_of(
        keys.map(b"NOT ".__add__),
        st.tuples(keys, keys).map(lambda p: b"OR " + p[0] + b" " + p[1]),
        st.lists(keys, min_size=1, max_size=3).map(lambda ks: b"(" + b" ".join(ks) + b")"),
    ),
    max_leaves=8,
)


@st.composite
def search_programs(draw: st.DrawFn) -> bytes:
    charset = draw(st.sampled_from([b"", b"CHARSET UTF-8 ", b"CHARSET US-ASCII ",
                                    b"CHARSET KOI8-R ", b"CHARSET "]))
    return charset + b" ".join(draw(st.lists(search_keys, min_size=1, max_size=3)))


_SECTIONS = [b"", b"HEADER", b"TEXT", b"MIME", b"1", b"1.MIME", b"2.1", b"1.2.3.HEADER",
             b"0", b"1.TEXT", b"HEADER.FIELDS (From Subject)", b"HEADER.FIELDS.NOT (To)",
             b'HEADER.FIELDS ("From" {2}\r\nTo)', b"HEADER.FIELDS ()", b"HEADER.FIELDS",
             b'HEADER.FIELDS ("x)', b"99999999999999999999", b"1.2.3.4.5.6.7.8.9"]
_SIMPLE = [b"UID", b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY",
           b"BODYSTRUCTURE", b"RFC822", b"RFC822.HEADER", b"RFC822.TEXT", b"RFC822.PEEK",
           b"BINARY[]", b"X-GM-MSGID"]
_PARTIALS = [b""] * 6 + [b"<0.10>", b"<5.0>", b"<0.4294967296>", b"<99999999.1>", b"<1>", b"<a.b>"]


@st.composite
def fetch_items(draw: st.DrawFn) -> bytes:
    def one() -> bytes:
        if draw(st.booleans()):
            return draw(st.sampled_from(_SIMPLE))
        name = draw(st.sampled_from([b"BODY", b"BODY.PEEK"]))
        section = draw(st.sampled_from(_SECTIONS))
        return name + b"[" + section + b"]" + draw(st.sampled_from(_PARTIALS))

    items = [one() for _ in range(draw(st.integers(1, 4)))]
    if len(items) == 1 and draw(st.booleans()):
        return items[0]
    form = draw(st.sampled_from([b"(%s)"] * 6 + [b"(%s", b"%s)"]))
    macro = draw(st.sampled_from([None, b"ALL", b"FAST", b"FULL"]))
    return macro if macro else form % b" ".join(items)


APPEND_MESSAGES = [b"Subject: a\r\n\r\nhello\r\n", b"", b"x", b"From x\r\n\r\nFrom y\r\n",
                   b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n"]


def _cmd(*parts: st.SearchStrategy[bytes] | bytes) -> st.SearchStrategy[bytes]:
    return st.tuples(*(p if isinstance(p, st.SearchStrategy) else st.just(p) for p in parts)
                     ).map(lambda ps: b" ".join(p for p in ps if p))


@st.composite
def appends(draw: st.DrawFn) -> bytes:
    message = draw(st.sampled_from(APPEND_MESSAGES))
    parts = [b"APPEND", draw(mailboxes)]
    if draw(st.booleans()):
        parts.append(draw(flag_lists()))
    if draw(st.booleans()):
        parts.append(draw(st.sampled_from([b'"14-Sep-2026 19:07:10 +0200"', b'"x"',
                                           b'"31-Feb-2026 19:07:10 +0200"'])))
    plus = draw(st.sampled_from([b"", b"+"]))
    parts.append(b"{%d%s}\r\n" % (len(message), plus) + message)
    return b" ".join(parts)


_UID = st.sampled_from([b"", b"UID "])
commands = st.one_of(
    st.sampled_from([b"NOOP", b"CHECK", b"CAPABILITY", b"NAMESPACE", b"CLOSE", b"UNSELECT",
                     b"EXPUNGE", b"LOGIN boss secret", b"ENABLE UTF8=ACCEPT", b"ENABLE",
                     b"ID NIL", b'ID ("name" "x")', b"ID (", b"SELECT", b"FETCH", b"UID",
                     b"UID BOGUS 1", b"XYZZY", b"STORE 1", b"SEARCH"]),
    _cmd(st.sampled_from([b"SELECT", b"EXAMINE"]), mailboxes),
    _cmd(b"SELECT", mailboxes, st.sampled_from([b"(CONDSTORE)", b"()", b"(", b"(X (Y))"])),
    _cmd(st.sampled_from([b"CREATE", b"DELETE", b"SUBSCRIBE", b"UNSUBSCRIBE"]), mailboxes),
    _cmd(b"RENAME", mailboxes, mailboxes),
    _cmd(st.sampled_from([b"LIST", b"LSUB", b"XLIST"]), strings(st.just(b"")),
         strings(st.sampled_from([b"*", b"%", b"INBOX*", b"a/%", b"**%*"]))),
    _cmd(b"LIST", st.sampled_from([b"(SUBSCRIBED)", b"(SPECIAL-USE)", b"()", b"(X"]),
         strings(st.just(b"")), strings(st.just(b"*")),
         st.sampled_from([b"", b"RETURN (CHILDREN)", b"RETURN (SPECIAL-USE)", b"RETURN ("])),
    _cmd(b"STATUS", mailboxes, st.sampled_from([b"(MESSAGES UIDNEXT UIDVALIDITY UNSEEN)"] * 3
                                               + [b"(RECENT)", b"()", b"(BOGUS)", b"MESSAGES"])),
    appends(),
    _cmd(_UID.map(lambda u: u + b"FETCH"), seq_sets, fetch_items()),
    _cmd(_UID.map(lambda u: u + b"STORE"), seq_sets,
         st.sampled_from([b"FLAGS", b"+FLAGS", b"-FLAGS", b"FLAGS.SILENT", b"+FLAGS.SILENT",
                          b"X-FLAGS"]), flag_lists()),
    _cmd(st.sampled_from([b"COPY", b"MOVE", b"UID COPY", b"UID MOVE"]), seq_sets, mailboxes),
    _cmd(_UID.map(lambda u: u + b"SEARCH"), search_programs()),
    _cmd(_UID.map(lambda u: u + b"SEARCH"),  # ESEARCH, SEARCHRES, WITHIN
         st.sampled_from([b"RETURN ()", b"RETURN (MIN MAX COUNT ALL)", b"RETURN (SAVE)",
                          b"RETURN (SAVE MIN)", b"RETURN (", b"RETURN (PARTIAL 1:5)"]),
         st.sampled_from([b"$", b"NOT $", b"UID $", b"OLDER 60", b"YOUNGER 0", b"ALL"])),
    _cmd(_UID.map(lambda u: u + b"SORT"),  # SORT, ESORT, SORT=DISPLAY
         st.sampled_from([b"", b"RETURN (ALL)", b"RETURN (SAVE MAX)", b"RETURN"]),
         st.sampled_from([b"(SUBJECT)", b"(REVERSE DATE ARRIVAL)", b"(DISPLAYFROM SIZE)",
                          b"(REVERSE)", b"()", b"(CC TO FROM", b"SUBJECT"]),
         st.sampled_from([b"UTF-8", b"US-ASCII", b"KOI8-R", b'"UTF-8"', b""]),
         search_programs()),
    _cmd(_UID.map(lambda u: u + b"THREAD"),
         st.sampled_from([b"REFERENCES", b"REFS", b"ORDEREDSUBJECT", b"X", b""]),
         st.sampled_from([b"UTF-8", b"US-ASCII", b"BIG5", b""]), search_programs()),
    _cmd(b"UID EXPUNGE", seq_sets),
    st.tuples(atoms, junk).map(b" ".join),
)


@st.composite
def sessions(draw: st.DrawFn, max_size: int = 8) -> list[bytes]:
    """A few complete commands (tag, name, arguments, CRLF), tags t0 t1 ..."""
    lines = draw(st.lists(commands, min_size=1, max_size=max_size))
    return [b"t%d %s\r\n" % (i, line) for i, line in enumerate(lines)]
