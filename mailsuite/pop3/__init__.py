"""The POP3 door: the RFC 1939 session over one mailbox, and its login (USER/PASS, SASL)."""
