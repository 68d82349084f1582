"""twistd plugin: ``twistd -n mailsuite --config etc/mail.ini``.

Only names the module that builds the service; nothing of mailsuite is imported at plugin-scan time.
"""

from twisted.application.service import ServiceMaker

mailsuite = ServiceMaker(
    "mailsuite",
    "mailsuite.tap",
    "SMTP, POP3 and IMAP mail server on Unix accounts and mbox files",
    "mailsuite",
)
