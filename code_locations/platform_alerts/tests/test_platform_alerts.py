import logging
import threading
import time
import uuid

import dagster as dg
import pytest

from platform_alerts.definitions import (Alert, AlertChannels, alert_drill_job, channels_from_environment,
                                         gate_drill_job, memory_drill_job, run_failure_alerts)


def channels(standins, **override):
    settings = {
        "slack_webhook_url": standins.url + "/alerts/slack/T000/B000/secret-slack",
        "teams_webhook_url": standins.url + "/alerts/teams/workflows/secret-teams",
        "discord_webhook_url": standins.url + "/alerts/discord/api/webhooks/1/secret-discord",
        "telegram_bot_token": "123:secret-telegram", "telegram_chat_id": "-10042",
        "telegram_api_url": standins.url + "/alerts/telegram", "ui_base_url": "https://dagster.example.com/",
        "attempts": 1, **override,
    }
    return AlertChannels(**settings)


def failed_run_context(resources):
    instance = dg.DagsterInstance.ephemeral()
    result = alert_drill_job.execute_in_process(instance=instance, raise_on_error=False,
                                                run_config={"ops": {"fail_on_purpose": {"config": {
                                                    "reason": "warehouse unreachable"}}}})
    assert not result.success
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_alerts", dagster_instance=instance, dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(), resources=resources).for_run_failure()
    return result.run_id, context


def test_a_failed_run_posts_one_message_to_each_channel(standins):
    standins.clear_alerts()
    run_id, context = failed_run_context({"alerts": channels(standins)})
    run_failure_alerts(context)
    received = standins.get("/alerts/received")
    assert {channel: len(messages) for channel, messages in received.items()} == {
        "slack": 1, "teams": 1, "discord": 1, "telegram": 1}
    link = f"https://dagster.example.com/runs/{run_id}"
    for text in (received["slack"][0]["payload"]["text"], received["discord"][0]["payload"]["content"],
                 received["telegram"][0]["payload"]["text"]):
        assert "Dagster run failed: alert_drill_job" in text
        assert run_id in text and link in text
        assert "Step fail_on_purpose failed: warehouse unreachable" in text
    telegram = received["telegram"][0]
    assert telegram["path"] == "/alerts/telegram/bot123:secret-telegram/sendMessage"
    assert telegram["payload"]["chat_id"] == "-10042"
    card = received["teams"][0]["payload"]["attachments"][0]["content"]
    assert card["type"] == "AdaptiveCard" and card["actions"][0]["url"] == link
    assert {"title": "Job", "value": "alert_drill_job"} in card["body"][1]["facts"]


def test_unconfigured_channels_are_skipped(standins):
    standins.clear_alerts()
    _, context = failed_run_context({"alerts": channels(standins, teams_webhook_url="", discord_webhook_url="",
                                                        telegram_bot_token="")})
    run_failure_alerts(context)
    assert {c: len(m) for c, m in standins.get("/alerts/received").items()} == {
        "slack": 1, "teams": 0, "discord": 0, "telegram": 0}


def test_a_failing_channel_does_not_stop_the_others_nor_leak_its_url(standins, caplog):
    standins.clear_alerts()
    broken = standins.url + "/nowhere/secret-path"
    alerts = channels(standins, slack_webhook_url=broken)
    alert = Alert(job="j", location="l", run_id="r", failed_steps=[("s", "e")], link="x")
    outcome = alerts.send(alert, logging.getLogger("alerts"))
    assert outcome["slack"] == "failed: HTTP 404 Not Found"
    assert {c: outcome[c] for c in ("teams", "discord", "telegram")} == dict.fromkeys(("teams", "discord", "telegram"),
                                                                                    "sent")
    assert "secret" not in caplog.text and "secret" not in str(outcome)


def test_secrets_reach_the_ui_only_as_variable_names(monkeypatch):
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/secret")
    monkeypatch.delenv("DISCORD_WEBHOOK_URL", raising=False)
    resource = channels_from_environment()
    assert isinstance(resource.slack_webhook_url, dg.EnvVar) and resource.slack_webhook_url == "SLACK_WEBHOOK_URL"
    assert resource.discord_webhook_url == ""


@pytest.mark.parametrize("length", [10, 5000])
def test_messages_fit_the_chat_limits(standins, length):
    alert = Alert(job="j", location="l", run_id="r", failed_steps=[("s", "x" * length)], link="u")
    payloads = channels(standins).payloads(alert)
    assert len(payloads["discord"][1]["content"]) <= 2000 and len(payloads["telegram"][1]["text"]) <= 4096


def test_the_memory_drill_holds_what_it_is_told():
    result = memory_drill_job.execute_in_process(run_config={"ops": {"hold_memory": {"config": {"mebibytes": 128}}}})
    assert result.success and result.output_for_node("hold_memory") == 128


def test_the_gate_drill_runs_until_its_file_appears(tmp_path):
    gate, run_id, instance = tmp_path / "gate", str(uuid.uuid4()), dg.DagsterInstance.ephemeral()

    def open_gate_once_waiting():
        # The gate opens half a second after the op says it waits, however slow the start.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any("waiting for" in (entry.user_message or "") for entry in instance.all_logs(run_id)):
                time.sleep(0.5)
                break
            time.sleep(0.05)
        gate.touch()

    threading.Thread(target=open_gate_once_waiting, daemon=True).start()
    result = gate_drill_job.execute_in_process(
        run_config={"ops": {"wait_for_gate": {"config": {"gate_file": str(gate)}}}}, instance=instance, run_id=run_id)
    assert result.success and result.output_for_node("wait_for_gate") >= 0.4


def test_the_gate_drill_fails_when_its_file_never_appears(tmp_path):
    config = {"gate_file": str(tmp_path / "never"), "timeout_seconds": 1.0}
    result = gate_drill_job.execute_in_process(run_config={"ops": {"wait_for_gate": {"config": config}}},
                                               raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node("wait_for_gate")
    assert failure.user_failure_data.description.endswith("did not appear in 1 s")
