"""The milter client (the Sendmail milter protocol, version 6, as Postfix speaks it), written
here: the Python milter libraries implement only the filter side. ``protocol`` is the codec,
``session`` one connection, ``edit`` the modifications, ``stage`` the pipeline Stage;
``from_config`` builds the Stage from [mail]'s smtpd_milters, non_smtpd_milters and milter_*.
"""

from __future__ import annotations

from typing import Any

from mailsuite.config import Config
from mailsuite.filter.milter.session import MACRO_KEYS, Settings
from mailsuite.filter.milter.stage import MilterStage



def from_config(cfg: Config, reactor: Any, maillog: Any) -> MilterStage | None:
    """The milter Stage, or None when neither smtpd_milters nor non_smtpd_milters is set."""
    m = cfg.mail
    if not m.smtpd_milters and not m.non_smtpd_milters:
        return None
    settings = Settings(m.milter_protocol, m.milter_connect_timeout, m.milter_command_timeout,
                        m.milter_content_timeout,
                        {event: getattr(m, key) for event, key in MACRO_KEYS.items()})
    return MilterStage(m.smtpd_milters, m.non_smtpd_milters, settings, m.milter_default_action,
                       reactor, maillog, m.myhostname)
