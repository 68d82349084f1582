#!/bin/sh
# Set-up on a fresh Debian 12 machine, as root, from a checkout of mailsuite.
#
#   sh scripts/setup-debian.sh install    install into /opt/mailsuite and set the machine up
#   sh scripts/setup-debian.sh run        the same, then start in the foreground
#                                         (twistd -n mailsuite --config /etc/mailsuite/mail.ini)
#   sh scripts/setup-debian.sh uninstall  undo the machine set-up (mail.ini, mail and the venv stay)
#   sh scripts/setup-debian.sh test       install what the tests need and run the whole suite
#
# The machine set-up (also on its own: `configure`), each step kept when done already:
# - /etc/mailsuite/mail.ini copied from etc/mail.ini when there is none (never overwritten),
#   /etc/aliases when there is none, /var/mail, and queue_directory/maildrop/ (so sendmail
#   works for every user before the first start);
# - /usr/sbin/sendmail, /usr/lib/sendmail, /usr/bin/mailq, /usr/bin/newaliases become links to
#   the venv's commands, so mail(1), cron and every other program send through mailsuite. Debian
#   has no alternative for them: a file an installed MTA package (postfix, exim4) owns is first
#   moved aside with `dpkg-divert --package mailsuite --rename` to NAME.mailsuite-orig (the
#   package's upgrades then go there too); where no package owns it, it is just a link.
#   Any other file there stops the set-up, untouched;
# - /usr/local/bin/twistd and /usr/local/bin/mailsuite-queue: links to the venv's;
# - the service: /etc/systemd/system/mailsuite.service (etc/systemd/, ExecStart in the venv;
#   rewritten at each install: local changes go in `systemctl edit mailsuite`), enabled
#   where systemd runs (PID 1), and /etc/logrotate.d/mailsuite (etc/logrotate.d/, for the
#   installed mail.ini's maillog_file and queue_directory; kept once there, as mail.ini).
# `uninstall` removes those links and diversions (the MTA's files come back); by hand:
#   rm /usr/sbin/sendmail && dpkg-divert --package mailsuite --rename --remove /usr/sbin/sendmail
#
# Debian's Python refuses `pip install` outside a virtual environment (PEP 668), so everything
# goes into a venv made with Debian's own /usr/bin/python3. MAILSUITE_VENV: another venv;
# MAILSUITE_ROOT: a directory to set up instead of / (for tests).
set -eu

cd "$(dirname "$0")/.."
VENV=${MAILSUITE_VENV:-/opt/mailsuite}
R=${MAILSUITE_ROOT:-}
CONFIG=/etc/mailsuite/mail.ini
# system path=command in the venv's bin/
LINKS="/usr/sbin/sendmail=sendmail /usr/lib/sendmail=sendmail /usr/bin/mailq=mailq
/usr/bin/newaliases=newaliases /usr/local/bin/twistd=twistd
/usr/local/bin/mailsuite-queue=mailsuite-queue /usr/local/bin/mailsuite=mailsuite"
export DEBIAN_FRONTEND=noninteractive

apt_install() {
    missing=""
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        apt-get update -qq
        # shellcheck disable=SC2086
        apt-get install -y -qq -o DPkg::Lock::Timeout=600 $missing >/dev/null
    fi
}

# Debian's Dovecot for the tests that compare with it (tests/integration/dovecot.py starts its
# own `dovecot -F -c CONFIG` on free loopback ports). Its postinst would start the system
# Dovecot on 110/143: a policy-rc.d (unless one exists) stops that, and it is not started at
# boot either.
install_dovecot() {
    made=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made=yes
    fi
    status=0
    apt_install dovecot-imapd dovecot-pop3d || status=$?
    [ -z "$made" ] || rm -f /usr/sbin/policy-rc.d
    if command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now dovecot.service dovecot.socket >/dev/null 2>&1 || true
    fi
    return $status
}

install_suite() {
    apt_install python3 python3-venv
    # iproute2: `mailsuite doctor` lists the host's addresses with ip -j addr
    apt_install iproute2
    [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip >/dev/null
    # EXTRAS: e.g. "[test]", setup.cfg's extras_require to install as well
    "$VENV/bin/pip" install -q --disable-pip-version-check ".${EXTRAS:-}"
    # Regenerate Twisted's plugin cache now, so a daemon that cannot write it does not warn.
    "$VENV/bin/python" -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
}

dpkg_() {  # dpkg-query / dpkg-divert on $R
    cmd=$1
    shift
    if [ -n "$R" ]; then "$cmd" --root="$R" "$@"; else "$cmd" "$@"; fi
}

diverted() {  # is $1 diverted by us?
    [ "$(dpkg_ dpkg-divert --listpackage "$1" 2>/dev/null)" = mailsuite ]
}

link_command() {  # make system path $1 a link to the venv's command $2
    path=$R$1
    if [ "$(readlink "$path" || true)" != "$VENV/bin/$2" ] && { [ -e "$path" ] || [ -L "$path" ]; }; then
        if ! diverted "$1" && dpkg_ dpkg-query -S "$1" >/dev/null 2>&1; then
            dpkg_ dpkg-divert --package mailsuite --divert "$1.mailsuite-orig" --rename --add "$1"
        else
            echo "setup-debian.sh: $path exists and is not mailsuite's; move it away first" >&2
            exit 1
        fi
    fi
    mkdir -p "$(dirname "$path")"
    ln -sfn "$VENV/bin/$2" "$path"
}

unlink_command() {
    path=$R$1
    if [ "$(readlink "$path" || true)" = "$VENV/bin/$2" ]; then
        rm "$path"
    fi
    if diverted "$1"; then
        dpkg_ dpkg-divert --package mailsuite --rename --remove "$1"
    fi
}

make_maildrop() {  # queue_directory/maildrop/ of the installed mail.ini
    "$VENV/bin/python" - "$R" "$R$CONFIG" <<'EOF'
import sys
from mailsuite.config import ConfigError, load_config
from mailsuite.mta.maildrop import ensure_maildrop
try:
    cfg = load_config(sys.argv[2])
except ConfigError as e:
    sys.exit(f"setup-debian.sh: configuration refused:\n{e}")
ensure_maildrop(sys.argv[1] + cfg.mail.queue_directory)
EOF
}

make_mail_owner() {  # [mail] mail_owner: the network process's user (Postfix's "postfix")
    if ! getent passwd mailsuite >/dev/null; then
        useradd --system --user-group --no-create-home --home-dir /var/spool/mailsuite \
            --shell /usr/sbin/nologin --comment "mailsuite network process" mailsuite
    fi
}

mail_key() {  # [mail] $1 of the installed mail.ini
    "$VENV/bin/python" -c 'import sys; from mailsuite.config import load_config
print(getattr(load_config(sys.argv[1]).mail, sys.argv[2]))' "$R$CONFIG" "$1"
}

systemd_runs() {  # systemd is PID 1 (sd_booted(3)'s test), on $R
    [ -d "$R/run/systemd/system" ]
}

systemctl_() {  # systemctl on $R: on a temporary root only its files (--root, offline)
    if [ -n "$R" ]; then systemctl --root="$R" "$@"; else systemctl "$@"; fi
}

install_service() {  # the systemd unit and the logrotate snippet
    unit=$R/etc/systemd/system/mailsuite.service
    mkdir -p "$(dirname "$unit")"
    sed -e "s#^ExecStart=/opt/mailsuite/#ExecStart=$VENV/#" etc/systemd/mailsuite.service >"$unit.new"
    chmod 0644 "$unit.new"
    mv "$unit.new" "$unit"
    # the unit's ReadWritePaths=: the self-signed certificate is made there at the first start
    install -d -m 0755 "$R/etc/mailsuite/tls"
    log=$(mail_key maillog_file)  # (empty: syslog, rotated by the syslog daemon's set-up)
    if [ -n "$log" ] && [ ! -e "$R/etc/logrotate.d/mailsuite" ]; then
        mkdir -p "$R/etc/logrotate.d"
        sed -e "s#^/var/log/maillog {#$log {#" \
            -e "s#/var/spool/mailsuite/pid/#$(mail_key queue_directory)/pid/#" \
            etc/logrotate.d/mailsuite >"$R/etc/logrotate.d/mailsuite"
    fi
    if systemd_runs; then
        [ -n "$R" ] || systemctl daemon-reload
        systemctl_ enable mailsuite.service
        echo "setup-debian.sh: mailsuite.service enabled; start it: systemctl start mailsuite"
    else
        echo "setup-debian.sh: systemd is not running: mailsuite.service installed, not" \
             "enabled (run in the foreground: sh scripts/setup-debian.sh run)"
    fi
}

uninstall_service() {
    if systemd_runs && [ -e "$R/etc/systemd/system/mailsuite.service" ]; then
        if [ -n "$R" ]; then systemctl_ disable mailsuite.service
        else systemctl disable --now mailsuite.service; fi
    fi
    rm -f "$R/etc/systemd/system/mailsuite.service" "$R/etc/logrotate.d/mailsuite"
    if systemd_runs && [ -z "$R" ]; then systemctl daemon-reload; fi
}

configure() {
    [ -e "$R$CONFIG" ] || install -D -m 0644 etc/mail.ini "$R$CONFIG"
    [ -n "$R" ] || make_mail_owner
    # What Debian's postfix package would have made: the aliases file and the mail spool.
    [ -e "$R/etc/aliases" ] || printf 'postmaster: root\n' >"$R/etc/aliases"
    install -d -m 2775 -g mail "$R/var/mail"
    make_maildrop
    for link in $LINKS; do
        link_command "${link%%=*}" "${link#*=}"
    done
    install_service
}

case "${1:-}" in
install)
    install_suite
    configure
    ;;
configure)
    configure
    ;;
run)
    install_suite
    configure
    exec "$VENV/bin/twistd" -n --pidfile= mailsuite --config "$R$CONFIG"
    ;;
uninstall)
    uninstall_service
    for link in $LINKS; do
        unlink_command "${link%%=*}" "${link#*=}"
    done
    ;;
test)
    EXTRAS="[test]"  # what the tests import besides the package (hypothesis), and the linters
    # s-nail and bsd-mailx: mbox compatibility; swaks, curl, fetchmail, isync (mbsync, a
    # two-way IMAP-to-Maildir sync, tests/integration/test_mbsync_real.py): real clients;
    # whois: mkpasswd for yescrypt/bcrypt test hashes; openssl: SHA-crypt test hashes;
    # fail2ban: its stock filters (fail2ban-regex) must match our failed-login lines;
    # iproute2: ip netns, so brute-force tests attack from a non-loopback address.
    apt_install s-nail swaks curl fetchmail isync whois openssl fail2ban iproute2
    # pflogsumm: Postfix's log summary must count our maillog (tests/integration/
    # test_log_tools.py); logrotate: the shipped snippet is parsed and run; systemd:
    # systemd-analyze verify checks the unit (it runs without systemd as PID 1); libcap2-bin:
    # capsh decodes the bounding set the hardened server ran with (test_service.py)
    apt_install pflogsumm logrotate systemd libcap2-bin
    # dovecot-imapd, dovecot-pop3d: its mbox state headers and POP3 UIDLs must be read and
    # given as Dovecot writes them (tests/integration/test_dovecot_mbox.py).
    install_dovecot
    # rspamd, clamav-daemon, clamav-milter: the real filters the milter client is tested
    # against (started by the tests on loopback, not as services); python3-milter: libmilter's
    # filter side, a scriptable test milter run by the system Python (tests/integration/
    # test_milter_real.py, test_rspamd.py, test_clamav.py)
    apt_install rspamd clamav-daemon clamav-milter python3-milter
    # postgrey: the real greylisting policy service behind check_policy_service; the tests
    # start /usr/sbin/postgrey themselves on a loopback port (tests/integration/test_restrictions.py)
    apt_install postgrey
    # pebble: Let's Encrypt's test ACME server; the certificate tests start it on loopback
    # (tests/integration/test_acme.py)
    apt_install pebble
    install_suite
    # the integration tests run the privilege-separated server as this user
    make_mail_owner
    shift
    # the lint gate first (pyproject.toml's [tool.ruff] and [tool.mypy], with mypy-zope):
    # any error fails the script (set -e) before the tests run
    "$VENV/bin/ruff" check mailsuite tests
    "$VENV/bin/mypy" mailsuite
    exec "$VENV/bin/python" scripts/run_tests.py "$@"
    ;;
*)
    echo "usage: sh scripts/setup-debian.sh install|run|uninstall|configure|test" >&2
    exit 64
    ;;
esac
