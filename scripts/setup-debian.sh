#!/bin/sh
# Set-up on a fresh Debian 12 machine, as root, from a checkout of mailsuite.
#
#   sh scripts/setup-debian.sh run    install into /opt/mailsuite and start on etc/mail.ini
#   sh scripts/setup-debian.sh test   install what the tests need and run the whole suite
#
# Debian's Python refuses `pip install` outside a virtual environment (PEP 668), so everything
# goes into a venv made with Debian's own /usr/bin/python3.
set -eu

cd "$(dirname "$0")/.."
VENV=${MAILSUITE_VENV:-/opt/mailsuite}
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
    [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip >/dev/null
    "$VENV/bin/pip" install -q --disable-pip-version-check .
    # Regenerate Twisted's plugin cache now, so a daemon that cannot write it does not warn.
    "$VENV/bin/python" -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
}

case "${1:-}" in
run)
    install_suite
    # What Debian's postfix package would have made: the aliases file and the mail spool.
    [ -e /etc/aliases ] || printf 'postmaster: root\n' >/etc/aliases
    install -d -m 2775 -g mail /var/mail
    exec "$VENV/bin/twistd" -n --pidfile= mailsuite --config etc/mail.ini
    ;;
test)
    # s-nail and bsd-mailx: mbox compatibility; swaks, curl, fetchmail: real clients;
    # whois: mkpasswd for yescrypt/bcrypt test hashes; openssl: SHA-crypt test hashes;
    # fail2ban: its stock filters (fail2ban-regex) must match our failed-login lines.
    apt_install s-nail swaks curl fetchmail whois openssl fail2ban
    # dovecot-imapd, dovecot-pop3d: its mbox state headers and POP3 UIDLs must be read and
    # given as Dovecot writes them (tests/integration/test_dovecot_mbox.py).
    install_dovecot
    install_suite
    shift
    exec "$VENV/bin/python" scripts/run_tests.py "$@"
    ;;
*)
    echo "usage: sh scripts/setup-debian.sh run|test" >&2
    exit 64
    ;;
esac
