"""Unix accounts: passwd/shadow parsing, libxcrypt password checks, refusal rules, UnixChecker.

All files are temporary; /etc is never read. The literal hashes below were made once with
``openssl passwd`` and ``mkpasswd`` (Debian 12), so the core tests need neither program.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, reactor
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from mailsuite import threads
from mailsuite.accounts import Account
from mailsuite.auth import checker, libcrypt
from mailsuite.auth.checker import DUMMY_HASH, LOGIN_FAILED, AccountDB, UnixChecker, hash_password
from tests.fakes import count_hashes

#: algorithm -> (password, hash made by the named tool)
KNOWN_HASHES = {
    # openssl passwd -6 -salt saltsalt sha512-secret
    "sha512": ("sha512-secret", (
        "$6$saltsalt$W8PuyB4HsjS2e/4CJL.xRgwlPl05mz2snWqIZE8aGa93xCsJ4Vcvw"
        ".12sYoWNmV248O8A5XF.0oI9P5zhxNGd0")),
    # openssl passwd -5 -salt saltsalt sha256-secret
    "sha256": ("sha256-secret", "$5$saltsalt$KaFE.yDcIi/zeoPRM3/F6T5QnQux8TSO7PEScTtO9/8"),
    # openssl passwd -1 -salt saltsalt md5-secret
    "md5": ("md5-secret", "$1$saltsalt$XuswuQOKx9U.CAJJONxO61"),
    # mkpasswd -m yescrypt yescrypt-secret
    "yescrypt": ("yescrypt-secret",
                 "$y$j9T$xUqQCv12bxrEr4JDokAJc/$0Ez5fpWrMOymtKJTuCSK6/4EnY733a/OGkKrEOi/4tC"),
    # mkpasswd -m bcrypt bcrypt-secret
    "bcrypt": ("bcrypt-secret", "$2b$05$MIyvVJToWGtqweMVg4UI4.53U.sfzZFcSkQfaLfj6lb1FAain3Ufi"),
}

BOSS_PASSWORD, BOSS_HASH = KNOWN_HASHES["sha512"]
TODAY = 20000  # days since 1970-01-01 (2024-10-04)
NOW = TODAY * 86400 + 12 * 3600.0


def passwd_line(name: str, uid: int, home: str | None = None) -> str:
    return f"{name}:x:{uid}:{uid}:{name.title()},,,:{home or '/home/' + name}:/bin/bash\n"


def shadow_line(name: str, hashed: str, lastchg="19000", min_="0", max_="99999", warn="7",
                inactive="", expire="") -> str:
    return f"{name}:{hashed}:{lastchg}:{min_}:{max_}:{warn}:{inactive}:{expire}:\n"


class AccountFilesMixin:
    """Temporary passwd/shadow files and an AccountDB on them, with the clock at NOW."""

    def setUp(self):
        directory = self.mktemp()
        os.makedirs(directory)
        self.passwd_path = os.path.join(directory, "passwd")
        self.shadow_path = os.path.join(directory, "shadow")
        self.write_files(
            passwd_line("root", 0, "/root") + passwd_line("boss", 1000),
            shadow_line("root", BOSS_HASH) + shadow_line("boss", BOSS_HASH),
        )
        self.db = AccountDB(self.passwd_path, self.shadow_path, 1000, now=lambda: NOW)

    def write_files(self, passwd: str | None = None, shadow: str | None = None) -> None:
        for path, text in ((self.passwd_path, passwd), (self.shadow_path, shadow)):
            if text is not None:
                with open(path, "w") as f:
                    f.write(text)

    def add_user(self, name: str, uid: int = 1001, **shadow_fields) -> None:
        """Append a user to both files (``hashed`` defaults to the boss hash)."""
        hashed = shadow_fields.pop("hashed", BOSS_HASH)
        with open(self.passwd_path, "a") as f:
            f.write(passwd_line(name, uid))
        with open(self.shadow_path, "a") as f:
            f.write(shadow_line(name, hashed, **shadow_fields))


class PasswordAlgorithmTests(AccountFilesMixin, unittest.SynchronousTestCase):
    """verify() accepts the right password and refuses a wrong one, for every method."""

    def check_algorithm(self, algorithm: str) -> None:
        password, hashed = KNOWN_HASHES[algorithm]
        self.add_user("user", hashed=hashed)
        self.assertEqual(
            self.db.verify("user", password.encode()),
            Account("user", 1001, 1001, "/home/user"),
        )
        self.assertIsNone(self.db.verify("user", password.encode() + b"x"))
        self.assertIsNone(self.db.verify("user", b""))

    def test_sha512(self):
        """$6$ (openssl passwd -6) hashes check."""
        self.check_algorithm("sha512")

    def test_sha256(self):
        """$5$ (openssl passwd -5) hashes check."""
        self.check_algorithm("sha256")

    def test_md5(self):
        """$1$ (openssl passwd -1) hashes check."""
        self.check_algorithm("md5")

    def test_yescrypt(self):
        """$y$ (mkpasswd -m yescrypt, the Debian 12 default) hashes check."""
        self.check_algorithm("yescrypt")

    def test_bcrypt(self):
        """$2b$ (mkpasswd -m bcrypt) hashes check."""
        self.check_algorithm("bcrypt")

    def test_hash_password_round_trip(self):
        """hash_password makes a fresh hash for each method that verify() accepts."""
        for prefix in ("$y$", "$6$", "$5$", "$2b$", "$1$"):
            hashed = hash_password("pässword", prefix)
            self.assertTrue(hashed.startswith(prefix), hashed)
            self.assertNotEqual(hashed, hash_password("pässword", prefix))  # random salt
            self.add_user("u" + prefix.strip("$"), hashed=hashed)
            self.assertIsNotNone(self.db.verify("u" + prefix.strip("$"), "pässword".encode()))
            self.assertIsNone(self.db.verify("u" + prefix.strip("$"), b"password"))

    def test_hash_password_default_is_yescrypt(self):
        """Without a prefix, hash_password makes yescrypt, Debian's default."""
        self.assertTrue(hash_password(b"secret").startswith("$y$"))

    def test_hash_password_unknown_method(self):
        """An unknown method prefix is a ValueError, not a crash or a weak hash."""
        self.assertRaises(ValueError, hash_password, "secret", "$zz$")

    def test_hash_password_nul(self):
        """A password with a NUL byte cannot be hashed (C would cut it short)."""
        self.assertRaises(ValueError, hash_password, b"sec\0ret")

    def test_concurrent_threads(self):
        """crypt_rn is reentrant: many threads hashing different methods at once all agree."""
        for algorithm, (_password, hashed) in KNOWN_HASHES.items():
            self.add_user(algorithm, hashed=hashed)
        errors = []

        def worker(algorithm: str) -> None:
            password = KNOWN_HASHES[algorithm][0].encode()
            for _ in range(5):
                if self.db.verify(algorithm, password) is None:
                    errors.append((algorithm, "refused"))
                if self.db.verify(algorithm, password + b"!") is not None:
                    errors.append((algorithm, "accepted"))

        workers = [threading.Thread(target=worker, args=(a,)) for a in KNOWN_HASHES for _ in "ab"]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        self.assertEqual(errors, [])

    def test_compare_digest(self):
        """The computed hash is compared with hmac.compare_digest (constant time)."""
        calls = []
        real = checker.hmac.compare_digest

        def spy(a, b):
            calls.append((a, b))
            return real(a, b)

        self.patch(checker.hmac, "compare_digest", spy)
        self.assertIsNotNone(self.db.verify("boss", BOSS_PASSWORD.encode()))
        self.assertEqual(calls, [(BOSS_HASH.encode(), BOSS_HASH.encode())])


class ExternalToolTests(AccountFilesMixin, unittest.SynchronousTestCase):
    """Hashes made right now by openssl and mkpasswd, with random salts, check."""

    def run_tool(self, *argv: str) -> str:
        if shutil.which(argv[0]) is None:
            raise unittest.SkipTest(f"{argv[0]} is not installed (mkpasswd is in package whois)")
        return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()

    def check_tool_hash(self, *argv: str) -> None:
        hashed = self.run_tool(*argv, "tool-secret")
        self.add_user("tool", hashed=hashed)
        self.assertIsNotNone(self.db.verify("tool", b"tool-secret"))
        self.assertIsNone(self.db.verify("tool", b"tool-secreT"))

    def test_openssl_sha512(self):
        """openssl passwd -6 output checks."""
        self.check_tool_hash("openssl", "passwd", "-6")

    def test_openssl_sha256(self):
        """openssl passwd -5 output checks."""
        self.check_tool_hash("openssl", "passwd", "-5")

    def test_openssl_md5(self):
        """openssl passwd -1 output checks."""
        self.check_tool_hash("openssl", "passwd", "-1")

    def test_mkpasswd_yescrypt(self):
        """mkpasswd -m yescrypt output checks."""
        self.check_tool_hash("mkpasswd", "-m", "yescrypt")

    def test_mkpasswd_bcrypt(self):
        """mkpasswd -m bcrypt output checks."""
        self.check_tool_hash("mkpasswd", "-m", "bcrypt")


class RefusalTests(AccountFilesMixin, unittest.SynchronousTestCase):
    """Every reason a right password still must not open the account."""

    def assertRefused(self, name: str, password: str = BOSS_PASSWORD) -> None:
        self.assertIsNone(self.db.verify(name, password.encode()))

    def assertAccepted(self, name: str, password: str = BOSS_PASSWORD) -> None:
        self.assertIsNotNone(self.db.verify(name, password.encode()))

    def test_boss_accepted(self):
        """The baseline: the normal account with the right password gets in."""
        self.assertAccepted("boss")

    def test_unknown_user(self):
        """A name not in passwd is refused."""
        self.assertRefused("nobody-here")
        self.assertRefused("")

    def test_name_case_sensitive_and_not_stripped(self):
        """Names match exactly as Unix does: no case folding, no @domain stripping."""
        self.assertRefused("Boss")
        self.assertRefused("boss@example.com")
        self.assertRefused(" boss")

    def test_uid_below_first_valid_uid(self):
        """root (uid 0 < 1000) is refused with its right password; uid 1000 itself is fine."""
        self.assertRefused("root")
        self.assertIsNone(self.db.lookup("root"))
        self.add_user("edge", uid=999)
        self.assertRefused("edge")
        self.assertAccepted("boss")

    def test_locked(self):
        """Hashes starting with ! or * are locked, even when the rest is a valid hash."""
        for name, hashed in (("bang", "!"), ("star", "*"), ("bangsha", "!" + BOSS_HASH),
                             ("bangbang", "!!"), ("lk", "*LK*"), ("starsha", "*" + BOSS_HASH)):
            self.add_user(name, hashed=hashed)
            self.assertRefused(name)
            self.assertRefused(name, "")

    def test_empty_hash(self):
        """An empty hash field (no password) is refused, also with an empty password."""
        self.add_user("open", hashed="")
        self.assertRefused("open", "")
        self.assertRefused("open")

    def test_passwd_without_shadow(self):
        """A passwd entry without a shadow entry is refused (lookup still finds it)."""
        with open(self.passwd_path, "a") as f:
            f.write(passwd_line("ghost", 1002))
        self.assertIsNotNone(self.db.lookup("ghost"))
        self.assertRefused("ghost")

    def test_shadow_without_passwd(self):
        """A shadow entry without a passwd entry is refused."""
        with open(self.shadow_path, "a") as f:
            f.write(shadow_line("shade", BOSS_HASH))
        self.assertRefused("shade")

    def test_hash_libcrypt_cannot_handle(self):
        """Malformed or unknown-method hashes are refused, never an exception."""
        for i, hashed in enumerate(["$9$nonsense$abc", "$6$", "$y$", "$2b$99$x", "x", "??",
                                    "$6$saltsalt$" + "A" * 86, "$y$j9T$bad$bad"]):
            self.add_user(f"odd{i}", hashed=hashed)
            self.assertRefused(f"odd{i}")

    def test_nul_and_overlong_password(self):
        """A NUL in the password cannot match the part before it; over-long ones are refused."""
        self.assertRefused("boss", BOSS_PASSWORD + "\0junk")
        self.assertRefused("boss", "a" * 1000)
        self.assertRefused("nobody", "a\0b")

    def test_account_expired(self):
        """shadow expire: refused from that day on (pam_unix), accepted the day before."""
        self.add_user("past", expire=str(TODAY - 1))
        self.add_user("today", expire=str(TODAY))
        self.add_user("future", expire=str(TODAY + 1))
        self.add_user("zero", expire="0")
        self.assertRefused("past")
        self.assertRefused("today")
        self.assertAccepted("future")
        self.assertRefused("zero")

    def test_lastchg_zero_must_change(self):
        """lastchg 0 means "change your password at next login": refused, as PAM does."""
        self.add_user("newbie", lastchg="0")
        self.assertRefused("newbie")

    def test_password_expired(self):
        """More than max days since lastchg: the password has expired (pam_unix: new one needed)."""
        self.add_user("stale", lastchg=str(TODAY - 91), max_="90")
        self.add_user("fresh", lastchg=str(TODAY - 90), max_="90")
        self.assertRefused("stale")
        self.assertAccepted("fresh")

    def test_inactive_period_passed(self):
        """Past lastchg + max + inactive the account is inactive: refused."""
        self.add_user("gone", lastchg=str(TODAY - 200), max_="90", inactive="30")
        self.assertRefused("gone")

    def test_no_aging(self):
        """Empty lastchg/max fields disable aging; a lastchg in the future is no reason to
        refuse."""
        self.add_user("plain", lastchg="", max_="")
        self.add_user("nomax", lastchg=str(TODAY - 5000), max_="")
        self.add_user("skewed", lastchg=str(TODAY + 3), max_="10")
        self.assertAccepted("plain")
        self.assertAccepted("nomax")
        self.assertAccepted("skewed")

    def test_clock_is_injected(self):
        """"Today" comes from the now callable: the same account expires when the clock moves."""
        self.add_user("soon", expire=str(TODAY + 1))
        self.assertAccepted("soon")
        self.db = AccountDB(self.passwd_path, self.shadow_path, 1000, now=lambda: NOW + 86400)
        self.assertRefused("soon")

    def test_malformed_shadow_line(self):
        """A shadow line with bad numbers or the wrong field count counts as no entry: refused."""
        with open(self.passwd_path, "a") as f:
            f.write(passwd_line("bad1", 1003) + passwd_line("bad2", 1004))
        with open(self.shadow_path, "a") as f:
            f.write(f"bad1:{BOSS_HASH}:-1:0:99999:7:::\n")
            f.write(f"bad2:{BOSS_HASH}:19000:0:99999:7\n")
        self.assertRefused("bad1")
        self.assertRefused("bad2")


class TimingTests(AccountFilesMixin, unittest.SynchronousTestCase):
    """Refusals cost one hash computation, like a wrong password (counted, never timed)."""

    def setUp(self):
        super().setUp()
        self.settings = count_hashes(self)

    def test_dummy_hash_is_usable(self):
        """The dummy is a yescrypt hash libcrypt really computes (so it really costs time)."""
        self.assertTrue(DUMMY_HASH.startswith(b"$y$"))
        self.assertIsNotNone(libcrypt.crypt(b"anything", DUMMY_HASH))

    def test_unknown_user_runs_dummy_hash(self):
        """An unknown user costs exactly one hash, of the dummy."""
        self.db.verify("nobody", b"guess")
        self.assertEqual(self.settings, [DUMMY_HASH])

    def test_locked_and_system_and_empty_run_dummy_hash(self):
        """Locked, empty, shadowless and system accounts each cost exactly one dummy hash."""
        self.add_user("locked", hashed="!" + BOSS_HASH)
        self.add_user("empty", hashed="")
        with open(self.passwd_path, "a") as f:
            f.write(passwd_line("ghost", 1005))
        for name in ("locked", "empty", "ghost", "root"):
            del self.settings[:]
            self.assertIsNone(self.db.verify(name, BOSS_PASSWORD.encode()))
            self.assertEqual(self.settings, [DUMMY_HASH], name)

    def test_wrong_password_runs_real_hash_once(self):
        """A wrong password costs one hash, with the account's own setting."""
        self.db.verify("boss", b"wrong")
        self.assertEqual(self.settings, [BOSS_HASH.encode()])

    def test_uncomputable_hash_also_runs_dummy(self):
        """A hash libcrypt rejects quickly is followed by the dummy hash."""
        self.add_user("odd", hashed="$9$nonsense")
        self.db.verify("odd", b"guess")
        self.assertEqual(self.settings, [b"$9$nonsense", DUMMY_HASH])


class LookupAndReloadTests(AccountFilesMixin, unittest.SynchronousTestCase):
    """lookup() answers from passwd, and files are re-read exactly when they change."""

    def test_lookup(self):
        """lookup gives name, uid, gid and home from passwd; None for unknown names."""
        self.assertEqual(self.db.lookup("boss"), Account("boss", 1000, 1000, "/home/boss"))
        self.assertIsNone(self.db.lookup("nobody"))
        self.assertIsNone(self.db.lookup("BOSS"))

    def test_recipient_includes_system_accounts(self):
        """recipient() finds every passwd entry, root too (mail to root is delivered, as Postfix
        does), while lookup() - the login side - refuses uid < first_valid_uid."""
        self.assertEqual(self.db.recipient("root"), Account("root", 0, 0, "/root"))
        self.assertEqual(self.db.recipient("boss"), Account("boss", 1000, 1000, "/home/boss"))
        self.assertIsNone(self.db.recipient("nobody"))
        self.assertIsNone(self.db.lookup("root"))

    def test_passwd_parsing_tolerates_junk(self):
        """Malformed lines, NIS +/- lines and comments are skipped; the first duplicate wins."""
        self.write_files(passwd=(
            "+::::::\n"
            "-evil:x:2000:2000::/:/bin/sh\n"
            "# comment\n"
            "broken:x:1001\n"
            "nonnum:x:abc:1000::/home/nonnum:/bin/sh\n"
            "neg:x:-5:1000::/home/neg:/bin/sh\n"
            "dup:x:1007:1007::/home/first:/bin/sh\n"
            "dup:x:1008:1008::/home/second:/bin/sh\n"
            "ok:x:1009:100:Ok:/home/ok:/bin/sh"  # no final newline: still parsed
        ))
        for name in ("+", "-evil", "evil", "broken", "nonnum", "neg", "# comment"):
            self.assertIsNone(self.db.lookup(name), name)
        self.assertEqual(self.db.lookup("dup"), Account("dup", 1007, 1007, "/home/first"))
        self.assertEqual(self.db.lookup("ok"), Account("ok", 1009, 100, "/home/ok"))

    def test_non_utf8_bytes(self):
        """A non-UTF-8 gecos or home does not break parsing; the home round-trips as bytes."""
        with open(self.passwd_path, "ab") as f:
            f.write(b"latin:x:1010:1010:Jos\xe9:/home/jos\xe9:/bin/sh\n")
        account = self.db.lookup("latin")
        self.assertEqual(os.fsencode(account.home), b"/home/jos\xe9")

    def test_password_change_is_seen(self):
        """A shadow file rewritten in place (new password) is re-read on the next check."""
        self.assertIsNotNone(self.db.verify("boss", BOSS_PASSWORD.encode()))
        password, hashed = KNOWN_HASHES["md5"]
        self.write_files(shadow=shadow_line("boss", hashed))
        self.assertIsNone(self.db.verify("boss", BOSS_PASSWORD.encode()))
        self.assertIsNotNone(self.db.verify("boss", password.encode()))

    def test_replaced_file_is_seen(self):
        """A passwd file replaced by rename (as useradd/vipw do) is re-read."""
        self.assertIsNone(self.db.lookup("newcomer"))
        replacement = self.passwd_path + "+"
        with open(replacement, "w") as f:
            f.write(passwd_line("boss", 1000) + passwd_line("newcomer", 1011))
        os.rename(replacement, self.passwd_path)
        self.assertEqual(self.db.lookup("newcomer").uid, 1011)

    def test_unchanged_file_not_reparsed(self):
        """Unchanged files are parsed once, however many look-ups and checks run."""
        parses = []
        real = checker.parse_passwd

        def counting(text):
            parses.append(text)
            return real(text)

        self.patch(checker, "parse_passwd", counting)
        db = AccountDB(self.passwd_path, self.shadow_path, 1000, now=lambda: NOW)
        for _ in range(3):
            db.lookup("boss")
            db.verify("boss", b"wrong")
        self.assertEqual(len(parses), 1)
        with open(self.passwd_path, "a") as f:
            f.write(passwd_line("later", 1012))
        self.assertIsNotNone(db.lookup("later"))
        self.assertEqual(len(parses), 2)

    def test_missing_file_raises(self):
        """An unreadable passwd file is an OSError for the caller, not "no such user"."""
        os.remove(self.passwd_path)
        self.assertRaises(OSError, self.db.lookup, "boss")


class UnixCheckerTests(AccountFilesMixin, unittest.TestCase):
    """The twisted.cred checker: bytes avatarIds, one refusal message, work off the reactor."""

    def setUp(self):
        super().setUp()
        self.add_user("locked", hashed="!" + BOSS_HASH)
        self.checker = UnixChecker(self.db, threads.inline)

    def login(self, username: bytes, password: bytes):
        return self.checker.requestAvatarId(UsernamePassword(username, password))

    def test_interface(self):
        """UnixChecker provides ICredentialsChecker for IUsernamePassword."""
        verifyObject(ICredentialsChecker, self.checker)
        self.assertEqual(tuple(self.checker.credentialInterfaces), (IUsernamePassword,))

    def test_success_gives_bytes_name(self):
        """The right password gives the login name as bytes."""
        self.assertEqual(self.successResultOf(self.login(b"boss", BOSS_PASSWORD.encode())),
                         b"boss")

    def test_utf8_name(self):
        """A UTF-8 login name is decoded for the look-up and returned as the same bytes."""
        self.add_user("jürgen")
        self.assertEqual(
            self.successResultOf(self.login("jürgen".encode(), BOSS_PASSWORD.encode())),
            "jürgen".encode(),
        )

    def test_str_credentials(self):
        """str username/password (some callers build them) work the same."""
        d = self.checker.requestAvatarId(UsernamePassword("boss", BOSS_PASSWORD))
        self.assertEqual(self.successResultOf(d), b"boss")

    def test_every_refusal_looks_the_same(self):
        """Wrong password, unknown, locked, system user, bad UTF-8: one UnauthorizedLogin text."""
        attempts = [(b"boss", b"wrong"), (b"nobody", b"x"), (b"locked", BOSS_PASSWORD.encode()),
                    (b"root", BOSS_PASSWORD.encode()), (b"\xff\xfe", b"x")]
        messages = set()
        for username, password in attempts:
            failure = self.failureResultOf(self.login(username, password), UnauthorizedLogin)
            self.assertIs(type(failure.value), UnauthorizedLogin)
            messages.add(str(failure.value))
        self.assertEqual(messages, {LOGIN_FAILED})

    def test_error_is_logged_and_refused(self):
        """An unreadable shadow file is logged and answered like any other refusal."""
        os.remove(self.shadow_path)
        failure = self.failureResultOf(self.login(b"boss", BOSS_PASSWORD.encode()),
                                       UnauthorizedLogin)
        self.assertEqual(str(failure.value), LOGIN_FAILED)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_goes_through_blocking(self):
        """requestAvatarId hands verify (with its auth cache) to its blocking and does not
        call it itself when the cache cannot answer."""
        calls = []
        pending = defer.Deferred()

        def fake_blocking(f, *args):
            calls.append((f, args))
            return pending

        self.patch(self.checker, "blocking", fake_blocking)
        d = self.login(b"boss", b"pw")
        self.assertNoResult(d)
        self.assertEqual(calls, [(self.db.verify, ("boss", b"pw", self.checker.cache))])
        pending.callback(Account("boss", 1000, 1000, "/home/boss"))
        self.assertEqual(self.successResultOf(d), b"boss")

    def test_without_cache_goes_through_blocking(self):
        """With cache=None every login is a plain verify in the thread pool."""
        checker = UnixChecker(self.db, threads.inline, cache=None)
        self.assertIsNone(checker.cache)
        calls = []
        self.patch(checker, "blocking", lambda f, *a: calls.append((f, a)) or defer.Deferred())
        for _ in range(2):
            checker.requestAvatarId(UsernamePassword(b"boss", BOSS_PASSWORD.encode()))
        self.assertEqual(calls, [(self.db.verify, ("boss", BOSS_PASSWORD.encode()))] * 2)

    def test_cancel_propagates(self):
        """Cancelling the login cancels; it is not turned into UnauthorizedLogin."""
        self.patch(self.checker, "blocking", lambda f, *a: defer.Deferred())
        d = self.login(b"boss", b"pw")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)

    def test_hash_runs_off_reactor_thread(self):
        """With the real thread pool, verify (and so the hash) runs in a thread, not this one."""
        reactor_thread = threading.get_ident()
        seen = []
        real_verify = self.db.verify

        def recording_verify(name, password, *cache):
            seen.append(threading.get_ident())
            return real_verify(name, password, *cache)

        self.patch(self.db, "verify", recording_verify)
        self.checker = UnixChecker(self.db, threads.InPool(reactor))
        d = self.login(b"boss", BOSS_PASSWORD.encode())

        def check(avatar_id):
            self.assertEqual(avatar_id, b"boss")
            self.assertEqual(len(seen), 1)
            self.assertNotEqual(seen[0], reactor_thread)

        return d.addCallback(check)
