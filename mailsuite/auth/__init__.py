"""Who may log in: the Unix password check (shadow, libcrypt, PAM), its cache, the brute-force
policy and the SASL exchanges every protocol shares."""
