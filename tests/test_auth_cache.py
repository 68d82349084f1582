"""The authentication cache (Dovecot's auth_cache): AuthCache on its own, AccountDB.verify with
a cache (hash computations counted, never timed), UnixChecker's thread-free cache hits, and the
``[auth] auth_cache_*`` keys.

Reuses the temporary passwd/shadow files of tests.test_checker; /etc is never read.
"""

from __future__ import annotations

import os

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.trial import unittest

from mailsuite import threads
from mailsuite.accounts import Account
from mailsuite.auth.cache import ENTRY_OVERHEAD, MAX_ENTRIES_PER_USER, AuthCache
from mailsuite.auth.checker import DUMMY_HASH, MISS, AccountDB, UnixChecker
from mailsuite.config import AuthConfig, ConfigError, parse_config
from tests.fakes import count_hashes
from tests.test_checker import (
    BOSS_HASH,
    BOSS_PASSWORD,
    KNOWN_HASHES,
    NOW,
    TODAY,
    AccountFilesMixin,
    passwd_line,
    shadow_line,
)

BOSS = Account("boss", 1000, 1000, "/home/boss")
RIGHT = BOSS_PASSWORD.encode()


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class AuthCacheTests(unittest.SynchronousTestCase):
    """The table itself: digests, state binding, TTLs, per-user and total bounds."""

    def setUp(self):
        self.clock = FakeClock()
        self.cache = AuthCache(size=1024 * 1024, ttl=3600, negative_ttl=600, clock=self.clock)

    def test_digest_is_hmac_with_key_per_instance(self):
        """Digests are 32-byte HMAC-SHA256 values: stable within one cache, different in another
        cache (random key per instance), different per user, and never contain the password."""
        other = AuthCache()
        d1 = self.cache.digest("boss", b"secret-password")
        self.assertEqual(len(d1), 32)
        self.assertEqual(d1, self.cache.digest("boss", b"secret-password"))
        self.assertNotEqual(d1, other.digest("boss", b"secret-password"))
        self.assertNotEqual(d1, self.cache.digest("boss2", b"secret-password"))
        self.assertNotIn(b"secret", d1)
        self.assertNotEqual(self.cache._key, other._key)
        # The name/password boundary is unambiguous.
        self.assertNotEqual(self.cache.digest("ab", b"c"), self.cache.digest("a", b"bc"))

    def test_hit_and_miss(self):
        """A stored outcome is found for the same digest and state only."""
        digest = self.cache.digest("boss", b"pw")
        self.assertIsNone(self.cache.get("boss", digest, "state1"))
        self.cache.put("boss", digest, "state1", True)
        self.assertIs(self.cache.get("boss", digest, "state1"), True)
        self.assertIsNone(self.cache.get("boss", self.cache.digest("boss", b"other"), "state1"))
        self.assertIsNone(self.cache.get("other", digest, "state1"))

    def test_state_change_drops_the_user(self):
        """A different state (password changed, account locked) drops all the user's entries."""
        right, wrong = self.cache.digest("boss", b"pw"), self.cache.digest("boss", b"no")
        self.cache.put("boss", right, "h1", True)
        self.cache.put("boss", wrong, "h1", False)
        self.assertIsNone(self.cache.get("boss", right, "h2"))
        self.assertEqual(self.cache.users(), [])
        self.assertEqual(self.cache.bytes_used, 0)
        self.assertIsNone(self.cache.get("boss", wrong, "h1"))

    def test_negative_entries_per_password(self):
        """Refusals are per digest: the right password after a wrong one is not refused."""
        wrong, right = self.cache.digest("boss", b"no"), self.cache.digest("boss", b"pw")
        self.cache.put("boss", wrong, "h", False)
        self.assertIs(self.cache.get("boss", wrong, "h"), False)
        self.assertIsNone(self.cache.get("boss", right, "h"))
        self.cache.put("boss", right, "h", True)
        self.assertIs(self.cache.get("boss", right, "h"), True)
        self.assertIs(self.cache.get("boss", wrong, "h"), False)

    def test_one_success_per_user(self):
        """A new success replaces the old one (the password was changed and changed back...)."""
        first, second = self.cache.digest("boss", b"one"), self.cache.digest("boss", b"two")
        self.cache.put("boss", first, "h", True)
        self.cache.put("boss", second, "h", True)
        self.assertIsNone(self.cache.get("boss", first, "h"))
        self.assertIs(self.cache.get("boss", second, "h"), True)
        self.assertEqual(len(self.cache), 1)

    def test_ttl_expiry(self):
        """Successes live ttl seconds, refusals negative_ttl seconds, from when they were made."""
        right, wrong = self.cache.digest("boss", b"pw"), self.cache.digest("boss", b"no")
        self.cache.put("boss", right, "h", True)
        self.cache.put("boss", wrong, "h", False)
        self.clock.now += 599
        self.assertIs(self.cache.get("boss", wrong, "h"), False)
        self.clock.now += 1
        self.assertIsNone(self.cache.get("boss", wrong, "h"))
        self.assertIs(self.cache.get("boss", right, "h"), True)
        self.clock.now += 3000
        self.assertIsNone(self.cache.get("boss", right, "h"))
        self.assertEqual(self.cache.users(), [])
        self.assertEqual(self.cache.bytes_used, 0)

    def test_zero_ttls_store_nothing(self):
        """negative_ttl 0: refusals are not cached; ttl 0: successes are not; size 0: nothing."""
        cache = AuthCache(ttl=3600, negative_ttl=0, clock=self.clock)
        cache.put("boss", b"d" * 32, "h", False)
        self.assertIsNone(cache.get("boss", b"d" * 32, "h"))
        cache = AuthCache(ttl=0, negative_ttl=3600, clock=self.clock)
        cache.put("boss", b"d" * 32, "h", True)
        self.assertIsNone(cache.get("boss", b"d" * 32, "h"))
        cache = AuthCache(size=0, clock=self.clock)
        cache.put("boss", b"d" * 32, "h", True)
        self.assertEqual(len(cache), 0)

    def test_entries_per_user_bounded(self):
        """One user keeps at most MAX_ENTRIES_PER_USER digests; the oldest refusals go first,
        the success stays."""
        right = self.cache.digest("boss", b"pw")
        self.cache.put("boss", right, "h", True)
        wrongs = [self.cache.digest("boss", b"wrong%d" % i) for i in range(20)]
        for digest in wrongs:
            self.cache.put("boss", digest, "h", False)
        self.assertEqual(len(self.cache), MAX_ENTRIES_PER_USER)
        self.assertIs(self.cache.get("boss", right, "h"), True)
        self.assertIs(self.cache.get("boss", wrongs[-1], "h"), False)
        self.assertIsNone(self.cache.get("boss", wrongs[0], "h"))

    def test_lru_bound(self):
        """The byte budget holds: least recently used users are dropped first, and a hit counts
        as a use."""
        probe = AuthCache(clock=self.clock)
        probe.put("user00", probe.digest("user00", b"pw"), "h" * 60, True)
        per_user = probe.bytes_used
        self.assertGreater(per_user, ENTRY_OVERHEAD)
        cache = AuthCache(size=per_user * 5, clock=self.clock)
        names = [f"user{i:02d}" for i in range(5)]
        for name in names:
            cache.put(name, cache.digest(name, b"pw"), "h" * 60, True)
        self.assertEqual(cache.users(), names)
        self.assertIs(cache.get("user00", cache.digest("user00", b"pw"), "h" * 60), True)
        cache.put("user05", cache.digest("user05", b"pw"), "h" * 60, True)
        self.assertEqual(cache.users(), ["user02", "user03", "user04", "user00", "user05"])
        for i in range(6, 100):
            name = f"user{i:02d}"
            cache.put(name, cache.digest(name, b"pw"), "h" * 60, True)
            self.assertLessEqual(cache.bytes_used, cache.size)
        self.assertEqual(cache.users(), [f"user{i}" for i in range(95, 100)])

    def test_clear(self):
        """clear() forgets everything."""
        self.cache.put("boss", self.cache.digest("boss", b"pw"), "h", True)
        self.cache.clear()
        self.assertEqual((len(self.cache), self.cache.bytes_used), (0, 0))

    def test_from_config(self):
        """from_config takes the [auth] values; auth_cache_size = 0 gives no cache."""
        base = {"passdb": "shadow", "passwd_file": "/p", "shadow_file": "/s",
                "first_valid_uid": 1000, "disable_plaintext_auth": True,
                "login_trusted_networks": []}
        cache = AuthCache.from_config(AuthConfig(**base, auth_cache_size=4096,
                                                 auth_cache_ttl=60, auth_cache_negative_ttl=5))
        self.assertEqual((cache.size, cache.ttl, cache.negative_ttl), (4096, 60, 5))
        self.assertIsNone(AuthCache.from_config(AuthConfig(**base, auth_cache_size=0)))


class CountingMixin(AccountFilesMixin):
    """AccountFilesMixin with every libcrypt hash recorded (its setting), and a cache with an
    injected clock."""

    def setUp(self):
        super().setUp()
        self.settings = count_hashes(self)
        self.clock = FakeClock()
        self.cache = AuthCache(ttl=3600, negative_ttl=600, clock=self.clock)
        self.mtime = 1_700_000_000

    def hashes(self) -> int:
        count = len(self.settings)
        del self.settings[:]
        return count

    def rewrite(self, passwd: str | None = None, shadow: str | None = None) -> None:
        """Rewrite the files with a new mtime each time (in-place rewrites of equal size within
        one timer tick would otherwise look unchanged)."""
        self.write_files(passwd, shadow)
        self.mtime += 10
        for path, text in ((self.passwd_path, passwd), (self.shadow_path, shadow)):
            if text is not None:
                os.utime(path, (self.mtime, self.mtime))

    def verify(self, name: str, password: bytes):
        return self.db.verify(name, password, self.cache)


class CachedVerifyTests(CountingMixin, unittest.SynchronousTestCase):
    """AccountDB.verify with a cache: hashes saved, every refusal rule still applied."""

    def test_hit_avoids_hash(self):
        """The second login with the right password computes no hash."""
        self.assertEqual(self.verify("boss", RIGHT), BOSS)
        self.assertEqual(self.hashes(), 1)
        for _ in range(3):
            self.assertEqual(self.verify("boss", RIGHT), BOSS)
        self.assertEqual(self.hashes(), 0)

    def test_without_cache_every_check_hashes(self):
        """verify without a cache hashes every time, as before."""
        for _ in range(3):
            self.assertEqual(self.db.verify("boss", RIGHT), BOSS)
        self.assertEqual(self.hashes(), 3)

    def test_wrong_password_after_cached_right_one(self):
        """A wrong password after a cached right one is hashed and refused."""
        self.verify("boss", RIGHT)
        self.hashes()
        self.assertIsNone(self.verify("boss", b"wrong"))
        self.assertEqual(self.settings, [BOSS_HASH.encode()])
        self.assertIsNone(self.verify("boss", RIGHT + b"x"))
        self.assertIsNone(self.verify("boss", b""))
        self.assertEqual(self.verify("boss", RIGHT), BOSS)

    def test_right_password_after_wrong_one(self):
        """The right password right after a (cached) wrong one is accepted at once; the same
        wrong password again is refused without a hash."""
        self.assertIsNone(self.verify("boss", b"typo"))
        self.assertEqual(self.hashes(), 1)
        self.assertEqual(self.verify("boss", RIGHT), BOSS)
        self.assertEqual(self.hashes(), 1)
        self.assertIsNone(self.verify("boss", b"typo"))
        self.assertEqual(self.hashes(), 0)

    def test_password_change_invalidates(self):
        """After the shadow hash changes, the old cached password is hashed and refused and
        the new one accepted."""
        self.verify("boss", RIGHT)
        password, hashed = KNOWN_HASHES["sha256"]
        self.rewrite(shadow=shadow_line("root", BOSS_HASH) + shadow_line("boss", hashed))
        self.hashes()
        self.assertIsNone(self.verify("boss", RIGHT))
        self.assertEqual(self.settings, [hashed.encode()])
        self.assertEqual(self.verify("boss", password.encode()), BOSS)

    def test_lock_invalidates(self):
        """Locking the account (``!`` before the hash, usermod -L) refuses the cached password."""
        self.verify("boss", RIGHT)
        self.rewrite(shadow=shadow_line("root", BOSS_HASH) + shadow_line("boss", "!" + BOSS_HASH))
        self.hashes()
        self.assertIsNone(self.verify("boss", RIGHT))
        self.assertEqual(self.settings, [DUMMY_HASH])
        # Unlocked again: the right password works (hashed once more).
        self.rewrite(shadow=shadow_line("root", BOSS_HASH) + shadow_line("boss", BOSS_HASH))
        self.assertEqual(self.verify("boss", RIGHT), BOSS)

    def test_expiry_applied_to_current_entry(self):
        """Expiring the account (same hash) refuses a cached password, without a hash: aging is
        checked on the current shadow entry at every login."""
        self.verify("boss", RIGHT)
        self.rewrite(shadow=shadow_line("root", BOSS_HASH)
                     + shadow_line("boss", BOSS_HASH, expire=str(TODAY)))
        self.hashes()
        self.assertIsNone(self.verify("boss", RIGHT))
        self.assertEqual(self.hashes(), 0)

    def test_clock_passing_expiry_refuses(self):
        """A cached success is refused once today reaches the shadow expire day."""
        self.rewrite(shadow=shadow_line("root", BOSS_HASH)
                     + shadow_line("boss", BOSS_HASH, expire=str(TODAY + 1)))
        self.assertEqual(self.verify("boss", RIGHT), BOSS)
        db = AccountDB(self.passwd_path, self.shadow_path, 1000, now=lambda: NOW + 86400)
        self.assertIsNone(db.verify("boss", RIGHT, self.cache))

    def test_removed_or_renumbered_user(self):
        """Removing the user from passwd refuses the cached password; a system account
        renumbered above first_valid_uid is accepted although its refusal was cached."""
        self.verify("boss", RIGHT)
        self.rewrite(passwd=passwd_line("root", 0, "/root"))
        self.assertIsNone(self.verify("boss", RIGHT))
        self.rewrite(passwd=passwd_line("root", 0, "/root") + passwd_line("boss", 999))
        self.assertIsNone(self.verify("boss", RIGHT))
        self.rewrite(passwd=passwd_line("root", 0, "/root") + passwd_line("boss", 1000))
        self.assertEqual(self.verify("boss", RIGHT), BOSS)

    def test_unknown_user_cached_like_wrong_password(self):
        """Unknown users cost one (dummy) hash, then the same attempt none: exactly as a wrong
        password for a real user, so repeating an attempt tells nothing about the name."""
        for name in ("nobody", "boss"):
            self.assertIsNone(self.verify(name, b"guess"))
            self.assertEqual(self.hashes(), 1, name)
            self.assertIsNone(self.verify(name, b"guess"))
            self.assertEqual(self.hashes(), 0, name)
            self.assertIsNone(self.verify(name, b"guess2"))
            self.assertEqual(self.hashes(), 1, name)

    def test_new_user_after_cached_unknown(self):
        """A user created after a refusal for that name was cached can log in at once."""
        self.assertIsNone(self.verify("newbie", RIGHT))
        self.add_user("newbie")
        self.assertEqual(self.verify("newbie", RIGHT), Account("newbie", 1001, 1001,
                                                               "/home/newbie"))

    def test_ttl_expiry_hashes_again(self):
        """After auth_cache_ttl the password is hashed again; refusals after negative_ttl."""
        self.verify("boss", RIGHT)
        self.verify("boss", b"wrong")
        self.hashes()
        self.clock.now += 601
        self.assertIsNone(self.verify("boss", b"wrong"))
        self.assertEqual(self.hashes(), 1)
        self.assertEqual(self.verify("boss", RIGHT), BOSS)
        self.assertEqual(self.hashes(), 0)
        self.clock.now += 3000
        self.assertEqual(self.verify("boss", RIGHT), BOSS)
        self.assertEqual(self.hashes(), 1)

    def test_other_users_keep_their_entries(self):
        """A password change of one user does not cost the others a hash."""
        self.add_user("clerk")
        self.verify("boss", RIGHT)
        self.verify("clerk", RIGHT)
        hashed = KNOWN_HASHES["md5"][1]
        self.rewrite(shadow=shadow_line("root", BOSS_HASH) + shadow_line("boss", BOSS_HASH)
                     + shadow_line("clerk", hashed))
        self.hashes()
        self.assertEqual(self.verify("boss", RIGHT), BOSS)
        self.assertEqual(self.hashes(), 0)

    def test_password_never_stored(self):
        """Nothing in the cache holds the password bytes."""
        self.verify("boss", RIGHT)
        self.verify("boss", b"wrong-password-123")
        for record in self.cache._users.values():
            for entry in record.entries:
                self.assertNotIn(RIGHT, entry.digest)
                self.assertNotIn(b"wrong-password-123", entry.digest)
            self.assertNotIn(BOSS_PASSWORD, repr(record))
            self.assertNotIn("wrong-password-123", repr(record))


class VerifyCachedTests(CountingMixin, unittest.SynchronousTestCase):
    """verify_cached: the non-blocking answer from the cache, or MISS."""

    def test_miss_until_files_read(self):
        """Before the files were ever read, and for unknown passwords, the answer is MISS."""
        self.assertIs(self.db.verify_cached("boss", RIGHT, self.cache), MISS)
        self.verify("boss", RIGHT)
        self.assertEqual(self.db.verify_cached("boss", RIGHT, self.cache), BOSS)
        self.assertIs(self.db.verify_cached("boss", b"other", self.cache), MISS)

    def test_cached_refusal(self):
        """A cached refusal is answered None without a hash."""
        self.verify("boss", b"wrong")
        self.hashes()
        self.assertIsNone(self.db.verify_cached("boss", b"wrong", self.cache))
        self.assertEqual(self.hashes(), 0)

    def test_changed_file_is_a_miss(self):
        """When either file changed since it was read, verify_cached does not read it: MISS."""
        self.verify("boss", RIGHT)
        self.rewrite(passwd=passwd_line("root", 0, "/root") + passwd_line("boss", 1000))
        self.assertIs(self.db.verify_cached("boss", RIGHT, self.cache), MISS)
        self.verify("boss", RIGHT)
        self.rewrite(shadow=shadow_line("root", BOSS_HASH) + shadow_line("boss", BOSS_HASH))
        self.assertIs(self.db.verify_cached("boss", RIGHT, self.cache), MISS)

    def test_missing_file_is_a_miss(self):
        """A shadow file gone is a MISS here (the thread path then reports the error)."""
        self.verify("boss", RIGHT)
        os.remove(self.shadow_path)
        self.assertIs(self.db.verify_cached("boss", RIGHT, self.cache), MISS)

    def test_aging_applied(self):
        """verify_cached applies aging to the current entry and the injected clock."""
        self.verify("boss", RIGHT)
        self.rewrite(shadow=shadow_line("root", BOSS_HASH)
                     + shadow_line("boss", BOSS_HASH, lastchg="0"))
        self.verify("boss", RIGHT)  # reads the new file: refused, password change required
        self.assertIsNone(self.db.verify_cached("boss", RIGHT, self.cache))
        self.assertEqual(self.hashes(), 1)


class CheckerCacheTests(CountingMixin, unittest.TestCase):
    """UnixChecker with a cache: hits answered on the calling thread, misses in the pool."""

    def setUp(self):
        super().setUp()
        self.hops = []

        def counting(f, *args):
            self.hops.append(f)
            return threads.inline(f, *args)

        self.checker = UnixChecker(self.db, counting, cache=self.cache)

    def login(self, username: bytes, password: bytes):
        return self.checker.requestAvatarId(UsernamePassword(username, password))

    def test_default_cache(self):
        """A UnixChecker has a default AuthCache (10 MB, 1 h, 1 h); each its own HMAC key."""
        first = UnixChecker(self.db, threads.inline)
        second = UnixChecker(self.db, threads.inline)
        self.assertIsInstance(first.cache, AuthCache)
        self.assertEqual((first.cache.size, first.cache.ttl, first.cache.negative_ttl),
                         (10 * 1024 * 1024, 3600.0, 3600.0))
        self.assertNotEqual(first.cache.digest("boss", RIGHT), second.cache.digest("boss", RIGHT))

    def test_hit_without_thread_hop(self):
        """The first login goes through the thread helper; the next ones neither hop nor hash."""
        self.assertEqual(self.successResultOf(self.login(b"boss", RIGHT)), b"boss")
        self.assertEqual((len(self.hops), self.hashes()), (1, 1))
        for _ in range(3):
            self.assertEqual(self.successResultOf(self.login(b"boss", RIGHT)), b"boss")
        self.assertEqual((len(self.hops), self.hashes()), (1, 0))

    def test_cached_refusal_is_the_same_refusal(self):
        """A cached refusal is the same UnauthorizedLogin, answered without hop or hash."""
        first = self.failureResultOf(self.login(b"boss", b"wrong"), UnauthorizedLogin)
        self.hops.clear()
        self.hashes()
        again = self.failureResultOf(self.login(b"boss", b"wrong"), UnauthorizedLogin)
        self.assertEqual(str(again.value), str(first.value))
        self.assertEqual((len(self.hops), self.hashes()), (0, 0))

    def test_changed_file_goes_to_thread(self):
        """After a file change the login goes through the pool again (the file is re-read
        there, never on the reactor)."""
        self.successResultOf(self.login(b"boss", RIGHT))
        self.rewrite(shadow=shadow_line("root", BOSS_HASH) + shadow_line("boss", "!" + BOSS_HASH))
        self.hops.clear()
        self.failureResultOf(self.login(b"boss", RIGHT), UnauthorizedLogin)
        self.assertEqual(len(self.hops), 1)

    def test_hit_result_is_synchronous(self):
        """A cache hit gives an already-fired Deferred (no thread pool involved at all)."""
        self.successResultOf(self.login(b"boss", RIGHT))
        self.patch(self.checker, "blocking", lambda f, *a: defer.Deferred())
        self.assertEqual(self.successResultOf(self.login(b"boss", RIGHT)), b"boss")


class ConfigKeyTests(unittest.SynchronousTestCase):
    """``[auth] auth_cache_size``, ``auth_cache_ttl``, ``auth_cache_negative_ttl``."""

    def parse(self, text: str):
        return parse_config("[mail]\nmyhostname = mail.example.com\n" + text, "mail.ini",
                            hostname=lambda: "mail.example.com")

    def test_defaults(self):
        """Defaults: 10M bytes, 1 hour, 1 hour."""
        auth = self.parse("").auth
        self.assertEqual((auth.auth_cache_size, auth.auth_cache_ttl, auth.auth_cache_negative_ttl),
                         (10 * 1024 * 1024, 3600.0, 3600.0))

    def test_values(self):
        """Sizes take k/M/G, times s/m/h/d; 0 is accepted for all three."""
        auth = self.parse("[auth]\nauth_cache_size = 1G\nauth_cache_ttl = 30m\n"
                          "auth_cache_negative_ttl = 0\n").auth
        self.assertEqual((auth.auth_cache_size, auth.auth_cache_ttl, auth.auth_cache_negative_ttl),
                         (1024**3, 1800.0, 0.0))
        self.assertEqual(self.parse("[auth]\nauth_cache_size = 0\n").auth.auth_cache_size, 0)
        self.assertEqual(self.parse("[auth]\nauth_cache_size = 64k\n").auth.auth_cache_size,
                         65536)

    def test_errors(self):
        """Malformed or too small values are errors naming the key, all reported at once."""
        error = self.assertRaises(ConfigError, self.parse,
                                  "[auth]\nauth_cache_size = lots\nauth_cache_ttl = soon\n"
                                  "auth_cache_negative_ttl = -1\n")
        text = "\n".join(error.errors)
        for key in ("auth_cache_size", "auth_cache_ttl", "auth_cache_negative_ttl"):
            self.assertIn(key, text)
        error = self.assertRaises(ConfigError, self.parse, "[auth]\nauth_cache_size = 100\n")
        self.assertIn("too small", "\n".join(error.errors))

    def test_shipped_file_documents_keys(self):
        """etc/mail.ini sets the three keys to their defaults."""
        path = os.path.join(os.path.dirname(__file__), "..", "etc", "mail.ini")
        with open(path) as f:
            text = f.read()
        for line in ("auth_cache_size = 10M", "auth_cache_ttl = 1h",
                     "auth_cache_negative_ttl = 1h"):
            self.assertIn("\n" + line + "\n", text)
