"""NOTIFY (RFC 5465) and UNAUTHENTICATE (RFC 8437) over StringTransport against a MemoryStore:
the RFC's examples as transcripts, events from another session and from a delivery into a
mailbox that is not selected, the rules on when notifications may be sent."""

from __future__ import annotations

from typing import Any

from mailsuite.imap import notify as notify_module
from mailsuite.imap.hibernate import hibernatable
from mailsuite.imap.notifyspec import parse_notify
from mailsuite.imap.parser import Cursor
from mailsuite.store.events import bus_of
from tests.test_imap_server import BOSS, ImapTestCase, Session


class NotifyTests(ImapTestCase):
    def two(self) -> tuple[Session, Session]:
        a, b = self.session(), self.session()
        a.login()
        b.login()
        return a, b

    def test_capability_after_login_only(self) -> None:
        s = self.session()
        self.assertNotIn(b"NOTIFY", s.cmd(b"a CAPABILITY"))
        s.login()
        self.assertIn(b" NOTIFY", s.cmd(b"b CAPABILITY"))

    def test_rfc_example_status_and_subtree(self) -> None:
        """RFC 5465 3.1's first example: SET STATUS with selected, INBOXES and a subtree sends
        a STATUS for each watched mailbox that is not selected, before the tagged OK."""
        a, _ = self.two()
        a.cmd(b"c1 CREATE Lists/a")
        a.cmd(b"c2 CREATE misc")
        self.deliver()
        a.cmd(b"s SELECT INBOX")
        out = a.cmd(b"a notify set status (selected MessageNew (uid body.peek[header.fields "
                    b"(from to subject)]) MessageExpunge) (subtree Lists (MessageNew "
                    b"MessageExpunge)) (mailboxes misc (MessageNew MessageExpunge))")
        self.assertIn(b"* STATUS Lists (MESSAGES 0 UIDNEXT 1 ", out)
        self.assertIn(b"* STATUS Lists/a (MESSAGES 0 UIDNEXT 1 ", out)
        self.assertIn(b"* STATUS misc (MESSAGES 0 UIDNEXT 1 ", out)
        self.assertNotIn(b"STATUS INBOX", out)  # the selected one
        self.assertTrue(out.endswith(b"a OK NOTIFY completed.\r\n"))

    def test_rfc_example_without_status(self) -> None:
        """Erratum 2318's version of the second example: no STATUS without (STATUS)."""
        a, _ = self.two()
        a.cmd(b"c CREATE misc")
        out = a.cmd(b"e notify set (selected MessageNew (uid body.peek[header.fields (from to "
                    b"subject)]) MessageExpunge) (subtree Lists MessageNew MessageExpunge) "
                    b"(mailboxes misc MessageNew MessageExpunge)")  # as the RFC writes it
        self.assertEqual(out, b"e OK NOTIFY completed.\r\n")

    def test_rfc_example_none_and_badevent(self) -> None:
        """NOTIFY NONE; an event not offered is NO [BADEVENT (...)]; the pairing rules BAD."""
        a, _ = self.two()
        self.assertEqual(a.cmd(b"a NOTIFY NONE"), b"a OK NOTIFY completed.\r\n")
        out = a.cmd(b"b NOTIFY SET (personal (MessageNew MessageExpunge AnnotationChange))")
        self.assertEqual(out, b"b NO [BADEVENT (AnnotationChange)] Unsupported events.\r\n")
        self.assertIn(b"c BAD", a.cmd(b"c NOTIFY SET (personal (MessageNew))"))
        self.assertIn(b"d BAD", a.cmd(b"d NOTIFY SET (personal (FlagChange))"))
        self.assertIn(b"e BAD", a.cmd(b"e NOTIFY SET (personal (MessageNew (UID) "
                                      b"MessageExpunge))"))
        self.assertIn(b"f BAD", a.cmd(b"f NOTIFY SET (selected (MessageNew MessageExpunge)) "
                                      b"(selected-delayed (MessageNew MessageExpunge))"))
        self.assertIn(b"g BAD", a.cmd(b"g NOTIFY SET (nowhere (MailboxName))"))
        self.assertIn(b"h BAD", a.cmd(b"h NOTIFY BOGUS"))
        self.assertIn(b"i OK", a.cmd(b"i NOTIFY SET (inboxes NONE)"))

    def test_delivery_into_unselected_mailbox_is_status(self) -> None:
        """A delivery to INBOX while another mailbox is selected: STATUS at once between
        commands; nothing for a mailbox outside the filters."""
        a, _ = self.two()
        a.cmd(b"c CREATE Work")
        a.cmd(b"s SELECT Work")
        a.cmd(b"n NOTIFY SET (selected (MessageNew MessageExpunge)) "
              b"(inboxes (MessageNew MessageExpunge))")
        self.deliver()
        self.clock.advance(0)
        self.assertEqual(a.take(), b"* STATUS INBOX (MESSAGES 1 UIDNEXT 2 UIDVALIDITY %d "
                         b"UNSEEN 1)\r\n" % self.box().uid_validity)

    def test_unselected_mailbox_watched_again(self) -> None:
        """After UNSELECT the mailbox gets STATUS like any other (from what it was then)."""
        a, _b = self.two()
        a.cmd(b"s SELECT INBOX")
        a.cmd(b"n NOTIFY SET (selected (MessageNew MessageExpunge)) "
              b"(personal (MessageNew MessageExpunge))")
        self.deliver()
        self.assertIn(b"* 1 EXISTS", a.take())
        a.cmd(b"u UNSELECT")
        self.clock.advance(0)
        self.assertEqual(a.take(), b"")
        self.deliver()
        self.clock.advance(0)
        self.assertIn(b"* STATUS INBOX (MESSAGES 2 UIDNEXT 3 ", a.take())

    def test_mailbox_name_as_literal_split_anywhere(self) -> None:
        line = (b"n NOTIFY SET STATUS (mailboxes {4+}\r\nmisc (MessageNew MessageExpunge))\r\n"
                b"x NOOP\r\n")
        for cut in range(1, len(line)):
            s = self.session()
            s.login()
            s.cmd(b"c CREATE misc")
            out = s.send(line[:cut]) + s.send(line[cut:])
            self.assertIn(b"* STATUS misc (MESSAGES 0 ", out)
            self.assertTrue(out.endswith(b"n OK NOTIFY completed.\r\nx OK NOOP completed.\r\n"))
            s.cmd(b"l LOGOUT")
            s.proto.connectionLost(None)

    def test_expunge_by_another_program_of_the_process(self) -> None:
        """A POP3-like expunge through the store (no IMAP session): STATUS with MESSAGES."""
        a, _ = self.two()
        self.deliver()
        a.cmd(b"n NOTIFY SET (inboxes (MessageNew MessageExpunge))")
        box = self.successResultOf(self.store.open(BOSS, "INBOX"))
        self.successResultOf(box.expunge([1]))
        box.close()
        self.clock.advance(0)
        self.assertIn(b"* STATUS INBOX (MESSAGES 0 UIDNEXT 2 ", a.take())

    def test_status_waits_for_the_running_command(self) -> None:
        a, _b = self.two()
        a.cmd(b"n NOTIFY SET (personal (MessageNew MessageExpunge))")
        a.proto._in_flight = True  # a command is running: the STATUS waits for its reply
        self.deliver()
        self.clock.advance(0)
        self.assertEqual(a.take(), b"")
        a.proto._in_flight = False
        out = a.cmd(b"x NOOP")
        self.assertIn(b"* STATUS INBOX (MESSAGES 1 ", out)
        self.assertTrue(out.endswith(b"x OK NOOP completed.\r\n"))

    def test_flag_change_only_with_flagchange(self) -> None:
        a, b = self.two()
        self.deliver()
        a.cmd(b"n NOTIFY SET (personal (MessageNew MessageExpunge))")
        b.cmd(b"s SELECT INBOX")
        b.cmd(b"t STORE 1 +FLAGS (\\Seen)")
        self.clock.advance(0)
        self.assertEqual(a.take(), b"")
        a.cmd(b"n NOTIFY SET (personal (MessageNew MessageExpunge FlagChange))")
        b.cmd(b"t STORE 1 -FLAGS (\\Seen)")
        self.clock.advance(0)
        self.assertIn(b"* STATUS INBOX (MESSAGES 1 UIDNEXT 2 ", a.take())

    def test_flagchange_status_has_highestmodseq(self) -> None:
        """RFC 5465 3.1: with FlagChange the STATUS has HIGHESTMODSEQ (imaptest's notify:
        without it, none); a \\Flagged change, UNSEEN the same, is told by it."""
        a, b = self.two()
        self.deliver()
        a.cmd(b"c CREATE Work")
        a.cmd(b"s SELECT Work")
        out = a.cmd(b"n NOTIFY SET STATUS (inboxes (MessageNew MessageExpunge))")
        self.assertIn(b"* STATUS INBOX (MESSAGES 1 UIDNEXT 2 UIDVALIDITY %d UNSEEN 1)\r\n"
                      % self.box().uid_validity, out)
        out = a.cmd(b"m NOTIFY SET STATUS (inboxes (MessageNew MessageExpunge FlagChange))")
        modseq = self.box().highest_modseq
        self.assertIn(b"* STATUS INBOX (MESSAGES 1 UIDNEXT 2 UIDVALIDITY %d UNSEEN 1 "
                      b"HIGHESTMODSEQ %d)\r\n" % (self.box().uid_validity, modseq), out)
        b.cmd(b"s SELECT INBOX")
        b.cmd(b"t STORE 1 +FLAGS (\\Flagged)")
        self.clock.advance(0)
        self.assertEqual(a.take(), b"* STATUS INBOX (MESSAGES 1 UIDNEXT 2 UIDVALIDITY %d "
                         b"UNSEEN 1 HIGHESTMODSEQ %d)\r\n"
                         % (self.box().uid_validity, self.box().highest_modseq))
        self.assertGreater(self.box().highest_modseq, modseq)

    def test_mailbox_name_and_subscription_from_another_session(self) -> None:
        a, b = self.two()
        a.cmd(b"n NOTIFY SET (personal (MailboxName SubscriptionChange))")
        self.assertIn(b"c OK [MAILBOXID (", b.cmd(b"c CREATE Projects"))
        self.assertEqual(a.take(), b'* LIST () "/" Projects\r\n')
        self.assertIn(b"c2 NO [USEATTR]", b.cmd(b"c2 CREATE Flags (USE (\\Flagged))"))
        self.assertEqual(a.take(), b"")  # refused: nothing was made, nothing told
        b.cmd(b"r RENAME Projects Old")
        self.assertEqual(a.take(), b'* LIST () "/" Old ("OLDNAME" (Projects))\r\n')
        b.cmd(b"u SUBSCRIBE Old")
        self.assertEqual(a.take(), b'* LIST (\\Subscribed) "/" Old\r\n')
        b.cmd(b"u UNSUBSCRIBE Old")
        self.assertEqual(a.take(), b'* LIST () "/" Old\r\n')
        b.cmd(b"d DELETE Old")
        self.assertEqual(a.take(), b'* LIST (\\NonExistent) "/" Old\r\n')
        a.cmd(b"c CREATE Mine")  # its own change has its tagged OK only
        self.assertEqual(a.take(), b"")
        self.clock.advance(notify_module.NOTIFY_POLL)  # the poll finds nothing new either
        self.assertEqual(a.take(), b"")

    def test_external_folder_change_found_by_the_poll(self) -> None:
        """A folder made behind the bus's back (another process) is told at the next poll."""
        a, _ = self.two()
        a.cmd(b"n NOTIFY SET (subtree Lists (MailboxName MessageNew MessageExpunge))")
        self.successResultOf(self.store.create(BOSS, "Lists/x"))
        self.clock.advance(notify_module.NOTIFY_POLL)
        self.clock.advance(0)
        out = a.take()
        self.assertIn(b'* LIST () "/" Lists/x\r\n', out)

    def test_selected_new_mail_pushed_with_fetch(self) -> None:
        """SELECTED with MessageNew's fetch attributes: EXISTS, then the FETCH, between
        commands."""
        a, _b = self.two()
        a.cmd(b"s SELECT INBOX")
        a.cmd(b"n NOTIFY SET (selected (MessageNew (UID FLAGS) MessageExpunge))")
        self.deliver()
        out = a.take()
        self.assertIn(b"* 1 EXISTS\r\n", out)
        self.assertIn(b"* 1 FETCH (UID 1 FLAGS (\\Recent))\r\n", out)

    def test_selected_delayed_keeps_expunges_back(self) -> None:
        a, b = self.two()
        self.deliver()
        a.cmd(b"s SELECT INBOX")
        a.cmd(b"n NOTIFY SET (selected-delayed (MessageNew MessageExpunge))")
        b.cmd(b"s SELECT INBOX")
        b.cmd(b"t STORE 1 +FLAGS (\\Deleted)")
        b.cmd(b"e EXPUNGE")
        self.assertEqual(a.take(), b"")
        out = a.cmd(b"x FETCH 1 UID")
        self.assertNotIn(b"EXPUNGE", out)
        self.assertIn(b"* 1 EXPUNGE", a.cmd(b"y NOOP"))

    def test_selected_immediate_expunge(self) -> None:
        a, b = self.two()
        self.deliver()
        a.cmd(b"s SELECT INBOX")
        a.cmd(b"n NOTIFY SET (selected (MessageNew MessageExpunge))")
        b.cmd(b"s SELECT INBOX")
        b.cmd(b"t STORE 1 +FLAGS (\\Deleted)")
        b.cmd(b"e EXPUNGE")
        self.assertEqual(a.take(), b"* 1 EXPUNGE\r\n")

    def test_events_while_idle_and_no_hibernation(self) -> None:
        a, b = self.two()
        a.cmd(b"n NOTIFY SET (personal (MessageNew MessageExpunge MailboxName))")
        a.cmd(b"i IDLE")
        self.assertFalse(hibernatable(a.proto))
        b.cmd(b"c CREATE New")
        self.assertIn(b'* LIST () "/" New\r\n', a.take())
        self.deliver()
        self.clock.advance(0)
        self.assertIn(b"* STATUS INBOX (MESSAGES 1 ", a.take())
        self.assertIn(b"i OK", a.cmd(b"DONE"))
        a.cmd(b"n NOTIFY NONE")
        a.cmd(b"i IDLE")
        self.assertTrue(hibernatable(a.proto))

    def test_overflow_turns_notify_off(self) -> None:
        a, b = self.two()
        a.cmd(b"n NOTIFY SET (personal (MailboxName))")
        self.patch(notify_module, "MAX_QUEUED", 2)
        a.proto._in_flight = True
        for i in range(4):
            b.cmd(b"c CREATE f%d" % i)
        self.assertIn(b"* OK [NOTIFICATIONOVERFLOW]", a.take())
        a.proto._in_flight = False
        self.assertIsNone(a.proto._notify)
        b.cmd(b"c CREATE g")
        self.assertEqual(a.take(), b"")

    def test_too_many_mailboxes(self) -> None:
        a, _ = self.two()
        self.patch(notify_module, "MAX_WATCHED", 1)
        a.cmd(b"c CREATE x")
        out = a.cmd(b"n NOTIFY SET (personal (MessageNew MessageExpunge))")
        self.assertIn(b"n NO [NOTIFICATIONOVERFLOW]", out)

    def test_no_subscriber_left_after_logout(self) -> None:
        a, _ = self.two()
        a.cmd(b"n NOTIFY SET (personal (MailboxName))")
        bus = bus_of(self.store)
        self.assertTrue(bus.listened("boss"))
        a.cmd(b"l LOGOUT")
        a.proto.connectionLost(None)
        self.assertFalse(bus.listened("boss"))

    def test_every_split_of_the_command(self) -> None:
        line = b"n NOTIFY SET STATUS (personal (MessageNew MessageExpunge))\r\nx NOOP\r\n"
        for cut in range(1, len(line)):
            s = self.session()
            s.login()
            out = s.send(line[:cut]) + s.send(line[cut:])
            self.assertIn(b"* STATUS INBOX", out)
            self.assertTrue(out.endswith(b"n OK NOTIFY completed.\r\nx OK NOOP completed.\r\n"))
            s.cmd(b"l LOGOUT")
            s.proto.connectionLost(None)


class NotifySpecTests(ImapTestCase):
    def parse(self, text: bytes) -> Any:
        return parse_notify(Cursor(b" " + text))

    def test_groups(self) -> None:
        spec = self.parse(b'SET (subtree (Lists "a b") (MessageNew MessageExpunge)) '
                          b"(mailboxes inbox (MailboxName))")
        self.assertFalse(spec.status)
        self.assertEqual(spec.others[0].names, ("Lists", "a b"))
        self.assertEqual(spec.others[1].names, ("INBOX",))
        self.assertEqual(spec.group_for("Lists/x", set()), spec.others[0])
        self.assertIsNone(spec.group_for("Listsx", set()))


class UnauthenticateTests(ImapTestCase):
    def test_not_offered_by_a_privsep_agent(self) -> None:
        """The per-user agent runs as the user: it could not log in as anyone else."""
        from mailsuite.privsep.agent import AgentIMAP
        from mailsuite.imap.unauthenticate import UnauthenticateCommands

        self.assertFalse(AgentIMAP.CAN_UNAUTHENTICATE)
        fake = type("Fake", (), {"CAN_UNAUTHENTICATE": False, "state": "auth"})()
        self.assertEqual(UnauthenticateCommands.own_capabilities(fake), {})  # type: ignore[arg-type]

    def test_back_to_not_authenticated(self) -> None:
        s = self.session()
        self.assertNotIn(b"UNAUTHENTICATE", s.cmd(b"a CAPABILITY"))
        s.login()
        self.assertIn(b" UNAUTHENTICATE", s.cmd(b"b CAPABILITY"))
        s.cmd(b"e ENABLE FOO")
        s.cmd(b"s SELECT INBOX")
        s.cmd(b"n NOTIFY SET (personal (MailboxName))")
        self.assertEqual(s.cmd(b"u UNAUTHENTICATE"), b"u OK UNAUTHENTICATE completed.\r\n")
        self.assertIsNone(s.proto._notify)
        self.assertIsNone(s.proto.view)
        self.assertEqual(s.proto.state, "unauth")
        self.assertIn(b"BAD", s.cmd(b"x SELECT INBOX"))
        caps = s.cmd(b"c CAPABILITY")
        self.assertIn(b"AUTH=PLAIN", caps)
        self.assertNotIn(b"UNAUTHENTICATE", caps)
        self.assertIn(b"l OK", s.login().replace(b"L1", b"l"))
        self.assertIn(b"OK [READ-WRITE]", s.cmd(b"s SELECT INBOX"))
        self.assertTrue(any("Logged out" in line for line in self.maillog.lines))

    def test_not_before_login(self) -> None:
        s = self.session()
        self.assertIn(b"u BAD", s.cmd(b"u UNAUTHENTICATE"))
        s.login()
        self.assertIn(b"v BAD", s.cmd(b"v UNAUTHENTICATE extra"))
