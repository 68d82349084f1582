"""The mail transfer agent behind the doors: recipients, aliases and .forward, local delivery,
the queue and its relay, bounces, the sendmail maildrop and the control socket."""
