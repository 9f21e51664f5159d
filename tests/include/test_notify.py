"""Alert delivery to a webhook and over SMTP, against servers the tests start on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import email as email_parser
import json
import socket
import socketserver
import threading
from email import policy as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import sqlalchemy as sa
import yaml

from loopline.config import EmailConfig, NotifyConfig, WebhookConfig
from loopline.monitoring import feedback, notify, store

DAY = dt.date(2013, 2, 10)


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (the name http.server dispatches to)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
        self.send_response(self.server.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook_server():
    """An HTTP server on a free loopback port that records every POST; ``status`` sets its response code."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    server.received, server.status = [], 204
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class _Smtp(socketserver.StreamRequestHandler):
    """The part of SMTP (RFC 5321) that smtplib uses to send one message without TLS."""

    def handle(self):
        self._reply("220 127.0.0.1 test SMTP ready")
        envelope = {"from": None, "to": [], "data": None}
        while True:
            line = self.rfile.readline().decode().rstrip("\r\n")
            if not line:
                return
            verb = line.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self._reply("250 127.0.0.1")
            elif verb == "MAIL":
                envelope["from"] = line.split(":", 1)[1].strip()
                self._reply("250 OK")
            elif verb == "RCPT":
                envelope["to"].append(line.split(":", 1)[1].strip())
                self._reply("250 OK")
            elif verb == "DATA":
                self._reply("354 end with <CRLF>.<CRLF>")
                lines = []
                while (data := self.rfile.readline().decode()) not in (".\r\n", ""):
                    lines.append(data)
                envelope["data"] = "".join(lines)
                self.server.messages.append(dict(envelope))
                self._reply("250 OK queued")
            elif verb == "QUIT":
                self._reply("221 bye")
                return
            else:
                self._reply("502 not implemented")

    def _reply(self, text):
        self.wfile.write(f"{text}\r\n".encode())


@pytest.fixture
def smtp_server():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Smtp)
    server.messages = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _free_port() -> int:
    """Return a loopback port with nothing listening on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _config(webhook=None, email=None):
    from loopline.config import load_config

    loaded = load_config()
    monitoring = loaded.monitoring.model_copy(update={"notify": NotifyConfig(webhook=webhook, email=email)})
    return loaded.model_copy(update={"monitoring": monitoring})


def _alert(rule, metric, feature, value, threshold, severity, action):
    return {
        "rule": rule, "metric": metric, "feature": feature, "value": value, "threshold": threshold,
        "severity": severity, "action": action, "model_version": "4", "policy_version": "test",
    }


ALERTS = [
    _alert("feature_drift", "psi", "distance", 0.41, 0.25, "warning", "retrain"),
    _alert("quality_log_loss", "log_loss", None, 0.71, 0.6, "critical", "retrain"),
]


def _store_day(config, engine, day, alerts):
    result = feedback.process_day(config, engine, day, alerts)
    store.replace_monitoring_results(engine, day, [], result.alerts)
    return result


@pytest.fixture
def engine(tmp_path):
    return store.get_engine(f"sqlite:///{tmp_path / 'monitoring.db'}")


def test_webhook_receives_alert_json(webhook_server, engine, monkeypatch):
    """Each alert that opens an incident is POSTed as JSON with its rule, value and incident id."""
    monkeypatch.setenv("LOOPLINE_TEST_WEBHOOK_TOKEN", "s3cret")
    url = f"http://127.0.0.1:{webhook_server.server_port}/hooks/loopline"
    config = _config(webhook=WebhookConfig(url=url, token_env="LOOPLINE_TEST_WEBHOOK_TOKEN"))
    result = _store_day(config, engine, DAY, ALERTS)
    incident_of = {row["rule"]: row["incident_id"] for row in result.alerts}

    sent = notify.deliver(config, engine, DAY, "webhook")

    assert sent == {"channel": "webhook", "alerts": 2, "status": "sent", "error": None}
    assert len(webhook_server.received) == 2
    first, second = (item["body"] for item in webhook_server.received)
    assert first["rule"] == "feature_drift"
    assert first["metric"] == "psi"
    assert first["feature"] == "distance"
    assert first["value"] == 0.41
    assert first["threshold"] == 0.25
    assert first["severity"] == "warning"
    assert first["incident_id"] == incident_of["feature_drift"]
    assert first["date"] == "2013-02-10"
    assert second["rule"] == "quality_log_loss"
    assert second["feature"] is None
    assert second["severity"] == "critical"
    assert second["incident_id"] == incident_of["quality_log_loss"]
    assert webhook_server.received[0]["path"] == "/hooks/loopline"
    assert webhook_server.received[0]["headers"]["Authorization"] == "Bearer s3cret"

    # A rerun of the day does not send again; the next day's breaches of open incidents do not either.
    assert notify.deliver(config, engine, DAY, "webhook")["status"] == "already_sent"
    next_day = DAY + dt.timedelta(days=1)
    _store_day(config, engine, next_day, ALERTS)
    assert notify.deliver(config, engine, next_day, "webhook")["status"] == "nothing_new"
    assert len(webhook_server.received) == 2


@pytest.mark.parametrize("failure", ["refused", "http_500", "missing_token"])
def test_webhook_failure_logged_and_counted(failure, webhook_server, engine, monkeypatch, caplog):
    """A refused connection, an error status or a missing token is logged and counted, never raised."""
    monkeypatch.delenv("LOOPLINE_TEST_WEBHOOK_TOKEN", raising=False)
    port = _free_port() if failure == "refused" else webhook_server.server_port
    webhook_server.status = 500
    token_env = "LOOPLINE_TEST_WEBHOOK_TOKEN" if failure == "missing_token" else None
    config = _config(webhook=WebhookConfig(url=f"http://127.0.0.1:{port}/hook?key=abc", token_env=token_env, timeout_seconds=2))
    _store_day(config, engine, DAY, ALERTS)

    sent = notify.deliver(config, engine, DAY, "webhook")

    assert sent["status"] == "failed"
    expected = {"refused": "ConnectError", "http_500": "HTTP 500", "missing_token": "LOOPLINE_TEST_WEBHOOK_TOKEN is not set"}
    assert expected[failure] in sent["error"]
    assert "key=abc" not in sent["error"]
    assert notify.failed_deliveries(engine) == 1
    assert "webhook notification of 2 alert(s) on 2013-02-10 failed" in caplog.text

    # A rerun tries a failed channel again and replaces the day's record.
    assert notify.deliver(config, engine, DAY, "webhook")["status"] == "failed"
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(store.notifications)).scalar_one() == 1


def test_email_over_smtp(smtp_server, engine, monkeypatch):
    """One message per day lists the new incidents; the subject names the worst severity and the rules."""
    email = EmailConfig(
        smtp_host="127.0.0.1", smtp_port=smtp_server.server_address[1], sender="loopline@example.org",
        recipients=["ml-oncall@example.org", "lead@example.org"], starttls=False,
    )
    config = _config(email=email)
    result = _store_day(config, engine, DAY, ALERTS)

    sent = notify.deliver(config, engine, DAY, "email")

    assert sent["status"] == "sent"
    (message,) = smtp_server.messages
    assert message["from"] == "<loopline@example.org>"
    assert message["to"] == ["<ml-oncall@example.org>", "<lead@example.org>"]
    parsed = email_parser.message_from_string(message["data"], policy=email_policy.default)
    assert parsed["Subject"] == "[Loopline critical] 2 new incident(s) on 2013-02-10: feature_drift, quality_log_loss"
    body = parsed.get_content()
    drift_incident = next(row["incident_id"] for row in result.alerts if row["rule"] == "feature_drift")
    assert (
        f"- incident {drift_incident}: rule feature_drift (warning), psi[distance] = 0.4100, threshold 0.25, "
        "action retrain, model version 4"
    ) in body
    assert "rule quality_log_loss (critical), log_loss = 0.7100, threshold 0.6" in body


def test_email_failure_counted(engine):
    """An SMTP port with no server behind it is a failed, counted delivery."""
    email = EmailConfig(smtp_host="127.0.0.1", smtp_port=_free_port(), sender="a@example.org", recipients=["b@example.org"], timeout_seconds=2)
    config = _config(email=email)
    _store_day(config, engine, DAY, ALERTS)
    sent = notify.deliver(config, engine, DAY, "email")
    assert sent["status"] == "failed"
    assert "SMTP server 127.0.0.1" in sent["error"]
    assert notify.failed_deliveries(engine) == 1


def test_airflow_notifier_sends_data_day(webhook_server, user_home, repo_root):
    """The Airflow notifier reads the data day from the context and delivers through its channel."""
    from loopline_airflow.notifiers import LooplineAlertNotifier, alert_notifiers

    raw = yaml.safe_load((repo_root / "include/config/loopline.yaml").read_text())
    raw["monitoring"]["policy"] = str(repo_root / "include/config/policies/default.yaml")
    raw["monitoring"]["notify"] = {"webhook": {"url": f"http://127.0.0.1:{webhook_server.server_port}/hook"}}
    config = user_home.write_config(raw)
    engine = store.get_engine()
    _store_day(config, engine, DAY, ALERTS[:1])

    assert [notifier.channel for notifier in alert_notifiers()] == ["log", "webhook"]
    notifier = LooplineAlertNotifier("webhook")
    notifier({"data_interval_start": dt.datetime(2013, 2, 10, tzinfo=dt.timezone.utc)})
    assert notifier.result["status"] == "sent"
    assert webhook_server.received[0]["body"]["rule"] == "feature_drift"
