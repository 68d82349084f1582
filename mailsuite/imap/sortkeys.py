"""What SORT (RFC 5256, RFC 5957) and THREAD order and link messages by, read once per message.

``base_subject`` is RFC 5256 section 2.1 step by step; ``sent_date`` is section 2.2 (the Date
field in UTC, else the internal date). ``SortRecord`` holds every key of one message, made from
its header block; ``records`` gives them for a view's messages, read with one ``read_headers``
call per chunk (the store reads in its threads) and kept per view, keyed by UID (a UID's
message never changes, so the cache needs no invalidation but a new UIDVALIDITY, and expunged
UIDs are dropped as the view loses them).
"""

from __future__ import annotations

import contextlib
import email.errors
import re
import weakref
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.header import decode_header, make_header
from itertools import count, repeat
from typing import Any, NamedTuple, overload

from twisted.internet import threads

from mailsuite.imap.addresses import parse_address_list
from mailsuite.imap.collation import casemap
from mailsuite.imap.fastkeys import (
    NO_DATE,
    date_of,
    dates_of,
    field_value,
    header_cut,
    plain_base,
    sent_date,
)
from mailsuite.store.mboxmailbox import quiet_gc

_new_tuple = tuple.__new__

_WSP_RUN = re.compile(r"[ \t\r\n]+")
_TRAILER = re.compile(r"(?:\(fwd\)|[ \t])$", re.I)
_BLOB = r"\[[^\[\]]*\][ \t]*"
_LEADER = re.compile(r"(?:[ \t]|(?:" + _BLOB + r")*(?:re|fwd?)[ \t]*(?:" + _BLOB + r")?:)", re.I)
_LEADING_BLOB = re.compile(_BLOB)
_ENCODED_WORD = re.compile(r"=\?[^?]+\?[bBqQ]\?")


def decode_words(value: str) -> str:
    """RFC 2047 encoded words decoded (an undecodable one is kept as it is)."""
    if _ENCODED_WORD.search(value):
        with contextlib.suppress(ValueError, LookupError, email.errors.HeaderParseError):
            return str(make_header(decode_header(value)))
    return value


def _strip_leaders(text: str) -> tuple[str, bool]:
    """Steps 3 to 5: subj-leader and subj-blob prefixes off, until none is left."""
    reply = False
    while True:
        before = text
        m = _LEADER.match(text)
        while m:
            if m.group(0) not in (" ", "\t"):
                reply = True
            text = text[m.end():]
            m = _LEADER.match(text)
        blob = _LEADING_BLOB.match(text)
        if blob and text[blob.end():].strip(" \t"):
            text = text[blob.end():]
        if text == before:
            return text, reply


def base_subject(subject: str) -> tuple[str, bool]:
    """(the base subject, whether the message is a reply or forward) of a decoded Subject
    (RFC 5256 section 2.1; the casemap for comparing is applied by the caller)."""
    text = _WSP_RUN.sub(" ", subject)  # step 1: tabs, folding and runs of blanks are one space
    reply = False
    while True:
        while True:  # step 2: subj-trailer
            m = _TRAILER.search(text)
            if not m:
                break
            reply = reply or (m.group(0) != " " and m.group(0) != "\t")
            text = text[: m.start()]
        text, refwd = _strip_leaders(text)
        reply = reply or refwd
        # step 6: "[fwd:" ... "]" around everything: off, and again from step 2
        if text[:5].lower() == "[fwd:" and text.endswith("]"):
            text = text[5:-1]
            reply = True
            continue
        return text, reply


_MSGID = re.compile(r"<([^<>\s]+)>")


def message_ids(value: str) -> list[str]:
    """The msg-ids of References or In-Reply-To, without their angle brackets."""
    return _MSGID.findall(value)


_ADDR = r'([^<>@\s"(),;:\\\[\]]+)@([^<>@\s"(),;:\\\[\]]+)'
_SIMPLE_NAMED = re.compile(
    r'[ \t]*(?:"([^"\\]*)"|([A-Za-z0-9!#$%&\'*+/=?^_`{|}~. \t-]*?))[ \t]*<' + _ADDR
    + r'>[ \t]*(?:,|$)')
_SIMPLE_BARE = re.compile(r"[ \t]*" + _ADDR + r"[ \t]*(?:,|$)")


def _first_address(value: str | None) -> tuple[str, str]:
    """(addr-mailbox, display value: RFC 5957 display-name, else mailbox@host) of the first
    address of a list. A list that starts with a group starts with its group marker, the
    address structure whose addr-mailbox is the group's name (RFC 3501 section 7.4.2): the
    name is both keys (``undisclosed-recipients:;`` sorts by that name, as in Dovecot and
    as clients show it, not first among the messages without the field). The usual
    ``Name <a@b>`` and ``a@b`` are read by a regular expression (most of the time of
    reading the keys went to the full address parser), anything else by
    ``parse_address_list``."""
    if not value:
        return "", ""
    m = _SIMPLE_NAMED.match(value)
    if m:
        name = m.group(1) if m.group(1) is not None else " ".join(m.group(2).split())
        name = decode_words(name).strip()
        return m.group(3), name or m.group(3) + "@" + m.group(4)
    m = _SIMPLE_BARE.match(value)
    if m:
        return m.group(1), m.group(1) + "@" + m.group(2)
    return _parsed_first_address(value)


def _parsed_first_address(value: str) -> tuple[str, str]:
    for addr in parse_address_list(value):
        if addr.group_marker and addr.mailbox:  # the start of a group: its name
            return addr.mailbox, addr.mailbox
        if addr.group_marker or (addr.host is None and addr.mailbox is None):
            continue
        mailbox = addr.mailbox or ""
        spec = mailbox + ("@" + addr.host if addr.host else "")
        name = decode_words(addr.name).strip() if addr.name else ""
        return mailbox, name or spec
    return "", ""


def _when(info: Any) -> int:
    """The internal date in seconds since the epoch (a store index entry has it as ``date``)."""
    epoch = getattr(info, "date", None)
    if type(epoch) is int:
        return epoch
    return int(info.internal_date.timestamp())


_FIELD = re.compile(  # only the fields wanted: the Received lines are not even looked at
    rb"^(subject|from|to|cc|date|message-id|references|in-reply-to)[ \t]*:(.*(?:\r?\n[ \t].*)*)",
    re.M | re.I)


def wanted_fields(header: bytes) -> dict[bytes, str]:
    """The first value of each field sort and thread use, unfolded and decoded from UTF-8."""
    out: dict[bytes, str] = {}
    for m in _FIELD.finditer(header, 0, header_cut(header)):
        name = m.group(1).upper()
        if name not in out:
            out[name] = m.group(2).decode("utf-8", "replace").replace("\r", "").replace(
                "\n", "").strip()
    return out


DATE, SUBJECT, FROM, TO, CC, IDS = 1, 2, 4, 8, 16, 32  # key groups: the fields of each
ALL_KEYS = 63
THREAD_KEYS = DATE | SUBJECT | IDS  # what THREAD REFERENCES, REFS and THREADID use
_GROUP_FIELDS = ((DATE, (b"DATE",)), (SUBJECT, (b"SUBJECT",)), (FROM, (b"FROM",)),
                 (TO, (b"TO",)), (CC, (b"CC",)),
                 (IDS, (b"MESSAGE-ID", b"REFERENCES", b"IN-REPLY-TO")))



@dataclass(slots=True)
class SortRecord:
    """The SORT and THREAD keys of one message, each group made when first asked for
    (``complete``) from ``raw``, the header or the header cache's fields of it."""

    uid: int
    arrival: int
    size: int
    date: int  # sent date, seconds since the epoch, UTC
    subject: str  # the casemapped base subject
    reply: bool
    from_: str
    to: str
    cc: str
    display_from: str
    display_to: str
    message_id: str  # "" when absent or invalid
    references: list[str] | tuple[()]  # References' msg-ids, else In-Reply-To's first (or
    # the shared (): no empty list per message)
    made: int = 0  # the key groups made (the others hold nothing yet)
    can: int = ALL_KEYS  # the groups ``raw`` has the fields of
    raw: bytes | None = None  # what the groups not yet made are made from (None: the
    # groups not made are read again when asked: ``settle``)


def fields_of(groups: int) -> list[bytes]:
    """The header fields the key groups ``groups`` are made from."""
    return [name for group, names in _GROUP_FIELDS if group & groups for name in names]


def groups_in(fields: frozenset[bytes]) -> int:
    """The key groups whose fields are all among ``fields``."""
    return sum(group for group, names in _GROUP_FIELDS if fields.issuperset(names))


def new_record(info: Any, raw: bytes, can: int) -> SortRecord:
    """A record of no key yet, made from ``raw`` (which has the fields of groups ``can``)."""
    return SortRecord(info.uid, _when(info), info.size, 0, "", False, "", "", "", "", "", "",
                      (), 0, can, raw)


def complete(rec: SortRecord, groups: int, values: dict[bytes, str] | None = None
             ) -> SortRecord:
    """The groups ``groups`` made (those ``rec.raw`` has the fields of, not made before);
    ``raw`` dropped as ``settle`` says. Each key is what the field
    ``wanted_fields`` finds gives: ``values`` when given (its answer for ``raw``), else
    each field looked for alone (``fastkeys``)."""
    todo = groups & rec.can & ~rec.made
    raw = rec.raw
    if todo and raw is not None:
        cut = header_cut(raw)
        if todo & DATE:
            date = date_of(raw, rec.arrival, cut) if values is None else None
            if date is None:
                date = sent_date(_value(raw, cut, values, b"DATE"), rec.arrival)
            rec.date = date
        if todo & ~DATE:
            _complete_more(rec, todo, raw, cut, values)
        rec.made |= todo
    settle(rec)
    return rec


#: the groups a record keeps ``raw`` for: once they are made it goes (``settle``)
KEPT_FOR = DATE | SUBJECT


def settle(rec: SortRecord) -> None:
    """``raw`` dropped once every group it can make is made, or DATE and SUBJECT are (the
    keys of the usual sorts and of every THREAD: kept for the next command). The address
    and id groups are then made from the header cache again when a command asks for them
    (``_make``): 100,000 messages' cached fields kept for a FROM sort that may never come
    were 17 MB of the agent."""
    if rec.raw is not None and (rec.made & rec.can == rec.can
                                or rec.made & KEPT_FOR == KEPT_FOR):
        rec.raw, rec.can = None, rec.made


def _value(raw: bytes, cut: int, values: dict[bytes, str] | None, name: bytes) -> str | None:
    return values.get(name) if values is not None else field_value(raw, name, cut)


def _complete_more(rec: SortRecord, todo: int, raw: bytes, cut: int,
                   values: dict[bytes, str] | None) -> None:
    if todo & SUBJECT:
        text = decode_words(_value(raw, cut, values, b"SUBJECT") or "")
        subject, rec.reply = plain_base(text) or base_subject(text)
        rec.subject = casemap(subject)
    if todo & FROM:
        from_, display_from = _first_address(_value(raw, cut, values, b"FROM"))
        rec.from_, rec.display_from = casemap(from_), casemap(display_from)
    if todo & TO:
        to, display_to = _first_address(_value(raw, cut, values, b"TO"))
        rec.to, rec.display_to = casemap(to), casemap(display_to)
    if todo & CC:
        rec.cc = casemap(_first_address(_value(raw, cut, values, b"CC"))[0])
    if todo & IDS:
        ids = message_ids(_value(raw, cut, values, b"MESSAGE-ID") or "")
        refs = message_ids(_value(raw, cut, values, b"REFERENCES") or "")
        if not refs:
            refs = message_ids(_value(raw, cut, values, b"IN-REPLY-TO") or "")[:1]
        rec.message_id, rec.references = ids[0] if ids else "", refs or ()


def make_record(uid: int, info: Any, header: bytes, old: SortRecord | None = None,
                groups: int = ALL_KEYS) -> SortRecord:
    """The keys of one message from its header block: every key for a new record (the
    header, read once, serves each later sort); for ``old`` (a record of the message made
    from the header cache) the groups ``groups`` made into it, those it made kept, and what
    its cached fields can make left to them (THREAD makes no address key: 0.7 s of 100,000
    ``From``/``To`` parsed for nothing), the header itself not kept (it is long)."""
    values = wanted_fields(header)  # one pass: a whole header is long
    if old is None:
        return complete(new_record(info, header, ALL_KEYS), ALL_KEYS, values)
    raw, can = old.raw, old.can
    old.raw, old.can = header, ALL_KEYS
    complete(old, groups, values)
    if old.raw is not None:  # groups left: made later from the cached fields, else read again
        old.raw, old.can = (raw, can | old.made) if raw is not None else (None, old.made)
        settle(old)  # the cached fields dropped if they can make nothing more
    return old


def _make_records(chunk: list[tuple[Any, SortRecord | None]], headers: dict[int, bytes],
                  groups: int = ALL_KEYS) -> list[SortRecord]:
    """Records of ``(entry, record or None)`` pairs with the key groups ``groups`` made from
    their headers (a record given is completed, its groups made kept)."""
    with quiet_gc():  # 100,000s of new objects: no collection walking them again and again
        out = []
        for info, rec in chunk:
            uid = info.uid if rec is None else rec.uid
            if uid in headers:
                out.append(make_record(uid, info, headers[uid], rec, groups))
        return out


def _cached_records(infos: list[Any], data: dict[int, bytes], can: int, groups: int,
                    known: dict[int, int]) -> list[SortRecord]:
    """New records of ``infos`` from the header cache's ``data``, the groups made; the
    dates from ``known`` (the cache's, NO_DATE for the arrival), else of all in one pass
    (``fastkeys.dates_of``), else the general way."""
    with quiet_gc():
        raws = [data[info.uid] for info in infos]
        if not groups & DATE:
            dates: list[int | None] = [None] * len(raws)
        elif all(info.uid in known for info in infos):
            dates = [known[info.uid] for info in infos]
        else:
            dates = dates_of(raws)
        out = [SortRecord(info.uid, arrival := _when(info), info.size,
                          0 if date is None else arrival if date == NO_DATE else date, "",
                          False, "", "", "", "", "", "", (), 0 if date is None else DATE, can,
                          raw) for info, raw, date in zip(infos, raws, dates, strict=True)]
        if groups != DATE or None in dates:
            for rec in out:
                complete(rec, groups)
        return out


def _refill(found: list[SortRecord], data: dict[int, bytes], can: int, groups: int) -> None:
    """The groups ``groups`` made into records that dropped their ``raw`` (``settle``),
    from the header cache's ``data`` (which has the fields of groups ``can``)."""
    todo = [rec for rec in found if rec.made & groups != groups]  # (or made meanwhile)
    for rec in todo:
        rec.raw, rec.can = data[rec.uid], can | rec.made
    _complete_all(todo, groups)


def _complete_all(found: list[SortRecord], groups: int) -> None:
    with quiet_gc():
        if groups == SUBJECT:
            _subjects(found)
        for rec in found:
            complete(rec, groups)


def _subjects(found: list[SortRecord]) -> None:
    """The SUBJECT group of records that have it to make, ``complete``'s steps written out
    for the usual case (one spelling of the field, a plain subject); the others left."""
    usual = b"\nSubject:"
    for rec in found:
        raw = rec.raw
        if raw is None or rec.made & SUBJECT or not rec.can & SUBJECT:
            continue
        at = raw.find(usual)
        start = at + len(usual)
        if at < 0 or b"\nsubject" in raw[:at].lower() or raw[:7].lower() == b"subject" \
                or at + 1 >= header_cut(raw):
            continue
        end = raw.find(b"\n", start)
        if end < 0 or raw[end + 1 : end + 2] in (b" ", b"\t"):
            continue  # folded: the general way
        text = raw[start:end].decode("utf-8", "replace").replace("\r", "").strip()
        if "=?" in text:
            continue
        plain = plain_base(text)
        if plain is None:
            continue
        rec.subject, rec.reply = casemap(plain[0]), plain[1]
        rec.made |= SUBJECT
        settle(rec)


#: work on more messages than this is done in a thread, so the reactor goes on meanwhile
#: (the GIL is handed over every few milliseconds); less is done at once
OFF_REACTOR = 1000


async def off_reactor(count: int, f: Any, *args: Any) -> Any:
    """``f(*args)``, in a thread of the reactor's pool when ``count`` is over OFF_REACTOR
    (``f`` must touch nothing the reactor thread changes meanwhile)."""
    if count <= OFF_REACTOR:
        return f(*args)
    return await threads.deferToThread(f, *args)


_CHUNK = 2048


MAX_RESULTS = 32  # whole-mailbox answers kept per mailbox


class Numbered(Sequence[tuple[int, SortRecord]]):
    """``(sequence number, record)`` of a view's messages, in sequence order, kept as the
    records and, unless they are numbered 1 to n, their numbers (``array``): a pair is made as
    it is read. (100,000 pairs, kept with their numbers between commands, were 10 MB of the
    agent.)"""

    __slots__ = ("recs", "seqs")

    def __init__(self, recs: list[SortRecord], seqs: array[int] | None = None) -> None:
        self.recs, self.seqs = recs, seqs

    def __len__(self) -> int:
        return len(self.recs)

    def __iter__(self) -> Iterator[tuple[int, SortRecord]]:
        if self.seqs is None:
            return zip(count(1), self.recs, strict=False)  # (``count`` never ends)
        return zip(self.seqs, self.recs, strict=True)

    @overload
    def __getitem__(self, i: int) -> tuple[int, SortRecord]: ...

    @overload
    def __getitem__(self, i: slice) -> list[tuple[int, SortRecord]]: ...

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return list(self)[i]
        at = range(len(self.recs))[i]  # (a negative index counted from the end; IndexError)
        return (at + 1 if self.seqs is None else self.seqs[at], self.recs[at])


class ViewKeys:
    """What is kept for one view: the records by UID and the answers of whole-mailbox SORT
    and THREAD commands (``results``, keyed by ``(membership, request)``), both shared by
    every view of the same store mailbox (a UID's record never changes, and views showing the
    same messages number them alike: a new session on a big mailbox reads and threads nothing
    again); the last ``records`` answer and the view's membership it was made for."""

    def __init__(self, validity: int, by_uid: dict[int, SortRecord],
                 results: dict[Any, Any]) -> None:
        self.validity = validity
        self.by_uid = by_uid
        self.results = results
        self.membership: tuple[int, ...] = ()
        self.found = Numbered([])
        self.made = 0  # the key groups every record of ``found`` has made

    def result(self, request: Any) -> Any:
        return self.results.get((self.membership, request))

    def keep(self, request: Any, result: Any) -> None:
        if len(self.results) >= MAX_RESULTS:
            self.results.clear()
        self.results[(self.membership, request)] = result


_caches: weakref.WeakKeyDictionary[Any, ViewKeys] = weakref.WeakKeyDictionary()
_shared: weakref.WeakKeyDictionary[Any, tuple[int, dict[int, SortRecord], dict[Any, Any]]] = (
    weakref.WeakKeyDictionary())


def _shared_keys(mailbox: Any, validity: int) -> tuple[dict[int, SortRecord], dict[Any, Any]]:
    try:
        found = _shared.get(mailbox)
        if found is None or found[0] != validity:
            found = _shared[mailbox] = (validity, {}, {})
    except TypeError:  # a mailbox that takes no weak reference: the view's own
        return {}, {}
    return found[1], found[2]


def view_keys(view: Any) -> ViewKeys:
    validity = int(view.uid_validity)
    keys = _caches.get(view)
    if keys is None or keys.validity != validity:
        keys = _caches[view] = ViewKeys(validity, *_shared_keys(view.mailbox, validity))
    return keys


async def records(view: Any, groups: int = ALL_KEYS) -> Numbered:
    """``(sequence number, record)`` of each message of the view still present, in sequence
    order, with the key groups ``groups`` made (others may be missing); those of messages
    not seen before made from the header cache when it has their fields, else from headers
    read in chunks. While the view shows the same messages, the same list is returned (do
    not change it)."""
    keys = view_keys(view)
    uids = view.uids()
    is_expunged = view.is_expunged
    gone = [seq for seq, uid in enumerate(uids, 1) if is_expunged(uid)]
    # the messages as numbered here: views of one mailbox with equal ones share answers
    membership = (len(uids), uids[-1] if uids else 0, sum(uids), *gone)
    same = membership == keys.membership
    if same and keys.made & groups == groups:
        return keys.found
    cache = keys.by_uid
    if same:  # the records of ``found`` completed where they are
        short = [rec for rec in keys.found.recs if rec.made & groups != groups]
        await _make(view.mailbox, cache, short, [], groups)
        if all(rec.made & groups == groups for rec in short):
            keys.made |= groups
            return keys.found
        same = False  # a header not read (gone meanwhile): the list made again without it
    for _ in range(3):  # again if another command's records replaced some meanwhile
        old: list[SortRecord] = []
        new: list[int] = []
        for uid in uids:  # two lists, not 100,000 pairs the collector walks again and again
            if (rec := cache.get(uid)) is None:
                new.append(uid)
            elif rec.made & groups != groups:
                old.append(rec)
        if not old and not new:
            break
        await _make(view.mailbox, cache, old, _basics(view, new), groups)
    found = _found(uids, set(gone), cache, groups)
    # the expunged dropped now and then (not at each: another view may show them a while yet)
    if found and len(cache) > 2 * len(found) + _CHUNK:
        live = {rec.uid for rec in found.recs}
        for uid in [u for u in cache if u not in live and u < found.recs[-1].uid]:
            del cache[uid]
    keys.made = groups | (keys.made if same else 0)
    keys.membership, keys.found = membership, found
    return found


class _Basic(NamedTuple):
    """What ``new_record`` reads of a message's info (``uid``, ``date`` for ``_when``, ``size``)."""

    uid: int
    date: int
    size: int


def _basics(view: Any, uids: list[int]) -> list[_Basic]:
    """The basics of the view's messages ``uids``, from the store's columns (``each_basic``):
    100,000 index entries made and held at once for this were 37 MB that stayed in the
    agent's heap (their ints taken by the records, the rest freed in between)."""
    if not uids:
        return []
    basics = list(map(_new_tuple, repeat(_Basic), view.each_basic(_when)))
    if len(basics) == len(uids):  # (uids are some of the view's: all of them, then)
        return basics
    wanted = set(uids)
    return [b for b in basics if b.uid in wanted]


def _found(uids: list[int], skip: set[int], cache: dict[int, SortRecord], groups: int
           ) -> Numbered:
    """The records of ``uids`` (numbered from 1) with the groups ``groups`` made, but those
    numbered in ``skip``."""
    recs: list[SortRecord] = []
    seqs = array("l")
    add, number, get = recs.append, seqs.append, cache.get
    for seq, uid in enumerate(uids, 1):
        if seq not in skip and (rec := get(uid)) is not None and rec.made & groups == groups:
            add(rec)
            number(seq)
    return Numbered(recs, None if len(recs) == len(uids) else seqs)


async def _make(mailbox: Any, cache: dict[int, SortRecord], old: list[SortRecord],
                fresh: list[Any], groups: int) -> None:
    """The groups ``groups`` made into the records ``old``, from their ``raw`` where it has
    their fields, and records made for the entries ``fresh`` (messages with none yet), from
    the header cache; the rest from the headers, read in chunks."""
    able = [rec for rec in old if rec.can & groups == groups]
    if able:
        await off_reactor(len(able), _complete_all, able, groups)
    short = [rec for rec in old if rec.can & groups != groups]
    cached = getattr(mailbox, "cached_header_fields", None)
    if (fresh or short) and cached is not None:
        fields, data, known = await cached(
            [rec.uid for rec in short] + [info.uid for info in fresh], fields_of(groups))
        can = groups_in(fields)
        if data and can & groups == groups:
            again = [rec for rec in short if rec.uid in data]
            if again:
                await off_reactor(len(again), _refill, again, data, can, groups)
                short = [rec for rec in short if rec.uid not in data]
            had = [info for info in fresh if info.uid in data]
            made = await off_reactor(len(had), _cached_records, had, data, can, groups, known)
            cache.update((rec.uid, rec) for rec in made)
            fresh = [info for info in fresh if info.uid not in data]
    rest: list[tuple[Any, SortRecord | None]] = [(None, rec) for rec in short]
    if fresh:
        rest += [(info, None) for info in fresh]
        rest.sort(key=lambda pair: pair[0].uid if pair[1] is None else pair[1].uid)
    for start in range(0, len(rest), _CHUNK):
        chunk = rest[start:start + _CHUNK]
        headers = await mailbox.read_headers(
            [info.uid if rec is None else rec.uid for info, rec in chunk])
        made = await off_reactor(len(chunk), _make_records, chunk, headers, groups)
        cache.update((rec.uid, rec) for rec in made)
