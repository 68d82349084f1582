"""mailsuite: Postfix + Dovecot in one Twisted program."""
