"""THREAD (RFC 5256): ORDEREDSUBJECT, REFERENCES, and REFS (REFERENCES without the grouping by
subject, each thread placed by its latest message, as Dovecot does).

Input: ``(sequence number, SortRecord)`` of the messages found, in sequence order; each
function returns the thread list of the response (``(2)(3 6 (4 23)(44 7 96))``) with the
numbers ``number(seq, record)`` gives (sequence numbers, or UIDs for UID THREAD). Nothing
recurses (a References chain may be as long as the mailbox), so no message can overflow the
stack.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from mailsuite.imap.sortkeys import SortRecord
from mailsuite.store.mboxmailbox import quiet_gc

Found = Sequence[tuple[int, SortRecord]]  # (a list, or ``sortkeys.Numbered``)
Number = Callable[[int, SortRecord], int]
T = TypeVar("T")


class Node:
    __slots__ = ("children", "msg", "parent", "seq")

    def __init__(self) -> None:
        self.msg: SortRecord | None = None  # None: a dummy (a message referred to, not here)
        self.seq = 0
        self.parent: Node | None = None
        self.children: list[Node] = []

    def first(self) -> Node:
        """The node a dummy sorts and groups by: its first child (after sorting)."""
        node = self
        while node.msg is None and node.children:
            node = node.children[0]
        return node

    def sort_key(self) -> tuple[int, int]:
        node = self.first()
        return (node.msg.date, node.seq) if node.msg is not None else (0, 0)


def _ancestor(node: Node, other: Node) -> bool:
    """Whether ``node`` is ``other`` or one of its ancestors (a link would make a loop)."""
    step: Node | None = other
    while step is not None:
        if step is node:
            return True
        step = step.parent
    return False


def _link(parent: Node, child: Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
    child.parent = parent
    parent.children.append(child)


def build_tree(found: Found, table: dict[str, Node] | None = None) -> list[Node]:
    """Steps 1 and 2 of REFERENCES: the root set of the parent/child links (``table``, when
    given, is filled with the node of each Message-ID)."""
    table = {} if table is None else table
    nodes: list[Node] = []
    for seq, rec in found:
        node = table.get(rec.message_id) if rec.message_id else None
        if node is None or node.msg is not None:  # none, or a duplicate Message-ID: unique
            node = Node()
            if rec.message_id and rec.message_id not in table:
                table[rec.message_id] = node
        node.msg, node.seq = rec, seq
        nodes.append(node)
        prev: Node | None = None
        for ref in rec.references:  # (A): the References chain, existing links kept
            ref_node = table.get(ref)
            if ref_node is None:
                ref_node = table[ref] = Node()
            if (prev is not None and ref_node.parent is None and ref_node is not prev
                    and not _ancestor(ref_node, prev)):
                _link(prev, ref_node)
            prev = ref_node
        # (B): the last reference is the parent; a link made by another message's
        # References is broken first ("before linking"), also when the new link is not
        # made because it would be a loop (the message is then a root, as in Dovecot)
        if node.parent is not None and node.parent is not prev:
            node.parent.children.remove(node)
            node.parent = None
        if prev is not None and node.parent is None and prev is not node \
                and not _ancestor(node, prev):
            _link(prev, node)
    roots = [n for n in nodes if n.parent is None]
    seen = {id(n) for n in roots}
    for n in table.values():
        if n.parent is None and id(n) not in seen:
            roots.append(n)
            seen.add(id(n))
    return roots


def _prune(roots: list[Node]) -> list[Node]:
    """Step 4 (A): dummies without children go, dummies with children give them to their
    parent; at the top only a dummy with one child is replaced by it."""
    out: list[Node] = []
    for root in roots:
        stack = [root]
        while stack:
            node = stack.pop()
            kids: list[Node] = []
            pending = node.children[::-1]  # a stack: the first child on top
            while pending:
                child = pending.pop()
                if child.msg is None:  # a dummy let go: its links cut (unlink never sees it)
                    pending.extend(reversed(child.children))
                    child.parent, child.children = None, []
                else:
                    kids.append(child)
            node.children = kids
            for kid in kids:
                kid.parent = node
            stack.extend(kids)
        if root.msg is None:
            if not root.children:
                continue
            if len(root.children) == 1:
                root = root.children[0]
                root.parent = None
        out.append(root)
    return out


def _sort_all(roots: list[Node]) -> None:
    """Step 6: every set of siblings by sent date (ties: sequence order)."""
    stack = list(roots)
    while stack:
        node = stack.pop()
        node.children.sort(key=Node.sort_key)
        stack.extend(node.children)
    roots.sort(key=Node.sort_key)


def _subject(node: Node) -> str:
    first = node.first()
    return first.msg.subject if first.msg is not None else ""


def _merge_subjects(roots: list[Node]) -> list[Node]:
    """Step 5: roots with the same base subject gathered under one."""
    table: dict[str, Node] = {}
    for root in roots:  # (A)
        subject = _subject(root)
        if not subject:
            continue
        old = table.get(subject)
        if (old is None or (root.msg is None and old.msg is not None)
                or (old.msg is not None and old.msg.reply and root.msg is not None
                and not root.msg.reply)):
            table[subject] = root
    out: list[Node] = []
    where: dict[int, int] = {}  # id(root) -> its index in out
    for root in roots:  # (B)
        if root.parent is not None:  # made a child by an earlier root of its subject
            continue
        subject = _subject(root)
        old = table.get(subject) if subject else None
        if old is None or old is root:
            where[id(root)] = len(out)
            out.append(root)
            continue
        if old.msg is None and root.msg is None:
            for child in root.children:
                child.parent = old
            old.children.extend(root.children)
            root.children = []
        elif old.msg is None:
            _link(old, root)
        elif root.msg is None:
            _replace(out, where, old, root)
            _link(root, old)
            table[subject] = root
        elif root.msg.reply and not old.msg.reply:
            _link(old, root)
        else:
            dummy = Node()
            _replace(out, where, old, dummy)
            _link(dummy, old)
            _link(dummy, root)
            table[subject] = dummy
    return out


def _replace(out: list[Node], where: dict[int, int], old: Node, new: Node) -> None:
    """``new`` takes ``old``'s place among the roots (it is there already, or comes later)."""
    at = where.pop(id(old), None)
    if at is None:
        at = len(out)
        out.append(new)
    else:
        out[at] = new
    where[id(new)] = at


def format_threads(roots: list[Node], number: Number) -> bytes:
    """The thread list: a chain of only children is ``a b c``, siblings ``(b ...)(c ...)``."""
    parts: list[bytes] = []
    for root in roots:
        parts.append(b"(")
        stack: list[Any] = [root]
        while stack:
            item = stack.pop()
            if isinstance(item, bytes):
                parts.append(item)
                continue
            node: Node = item
            numbers: list[bytes] = []
            while True:
                if node.msg is not None:
                    numbers.append(b"%d" % number(node.seq, node.msg))
                if len(node.children) != 1:
                    break
                node = node.children[0]
            parts.append(b" ".join(numbers))
            if node.children:
                if numbers:
                    parts.append(b" ")
                for child in reversed(node.children):
                    stack.extend((b")", child, b"("))
        parts.append(b")")
    return b"".join(parts)


def unlink(roots: list[Node]) -> None:
    """Every parent link under ``roots`` cut: the tree is freed as its roots go, at once and
    without the cyclic collector (a parent and its children refer to each other)."""
    stack = list(roots)
    while stack:
        node = stack.pop()
        node.parent = None
        stack.extend(node.children)


def quiet_tree(build: Callable[[], list[Node]], use: Callable[[list[Node]], T]) -> T:
    """``use`` of the roots ``build`` makes, with no collection while 100,000s of nodes are
    made (each would walk them again), the tree unlinked after."""
    with quiet_gc():
        roots = build()
        try:
            return use(roots)
        finally:
            unlink(roots)


def tree_work(f: Callable[[Found], list[Node]]) -> Callable[[Found, Number], bytes]:
    """An algorithm giving the thread list of the roots ``f`` makes (``quiet_tree``)."""
    @functools.wraps(f)
    def run(found: Found, number: Number) -> bytes:
        return quiet_tree(lambda: f(found), lambda roots: format_threads(roots, number))
    return run


@tree_work
def references(found: Found) -> list[Node]:
    roots = _prune(build_tree(found))
    _sort_all(roots)
    roots = _merge_subjects(roots)
    _sort_all(roots)
    return roots


@tree_work
def refs(found: Found) -> list[Node]:
    """REFERENCES' links without step 5; threads ordered by their latest message's date, ties
    by the root's number, a dummy's 0. As Dovecot's REFS, the roots are ordered before the
    prune: a dummy shown as its only child keeps the dummy's 0."""
    latest: dict[int, tuple[int, int]] = {}
    roots: list[Node] = []
    for root in build_tree(found):
        best = 0
        stack = [root]
        while stack:
            node = stack.pop()
            if node.msg is not None:
                best = max(best, node.msg.date)
            stack.extend(node.children)
        for tree in _prune([root]):
            latest[id(tree)] = (best, root.seq if root.msg is not None else 0)
            roots.append(tree)
    _sort_all(roots)
    roots.sort(key=lambda r: latest[id(r)])
    return roots


@tree_work
def ordered_subject(found: Found) -> list[Node]:
    """By base subject, then sent date; the first of each subject is the parent of the rest;
    threads by their first message's date."""
    ordered = sorted(found, key=lambda f: (f[1].subject, f[1].date, f[0]))
    roots: list[Node] = []
    current: Node | None = None
    for seq, rec in ordered:
        node = Node()
        node.msg, node.seq = rec, seq
        if current is not None and current.msg is not None and current.msg.subject == rec.subject:
            current.children.append(node)
            node.parent = current
        else:
            current = node
            roots.append(node)
    roots.sort(key=Node.sort_key)
    return roots


ALGORITHMS = {b"ORDEREDSUBJECT": ordered_subject, b"REFERENCES": references, b"REFS": refs}
