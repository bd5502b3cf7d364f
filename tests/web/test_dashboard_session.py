"""The dashboard's session secret: made once in the state directory, or the setting's."""

from __future__ import annotations

from vip_worker import config
from vip_worker.web.dashboard.session import SECRET_FILE, load_secret


def test_the_session_secret_is_made_once_and_kept(tmp_path):
    settings = config.load(environ={"VIP_WORKER_STATE_DIR": str(tmp_path / "state")},
                           require_queues=False)
    first = load_secret(settings)
    path = tmp_path / "state" / SECRET_FILE
    assert len(first) >= 48 and path.stat().st_mode & 0o777 == 0o600
    assert load_secret(settings) == first  # a restart, or a second web process
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
    given = settings.with_values(dashboard_session_secret="from-the-config")
    assert load_secret(given) == b"from-the-config"


def test_ids_with_a_trailing_newline_are_refused():
    from vip_worker.web.auth import USER_ID_RE
    from vip_worker.web.dashboard.dlq import MESSAGE_ID_RE
    from vip_worker.web.dashboard.jobs import JOB_ID_RE, TYPE_RE

    for pattern in (USER_ID_RE, MESSAGE_ID_RE, JOB_ID_RE, TYPE_RE):
        assert pattern.match("abc") and not pattern.match("abc\n"), pattern.pattern
