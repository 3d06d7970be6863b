"""The platform's own alerting: a run-failure sensor over every code location that posts
to Slack, Microsoft Teams, Discord and Telegram, each when configured.

Webhook URLs and the Telegram token are secrets: they come from the location's
environment file (dagster_locations[].env, from vault variables), appear in the UI only
as the names of their variables, and never in a log line or an error message.
"""

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import dagster as dg

# Environment variables this location reads; the secret ones are passed as EnvVar.
SECRET_VARIABLES = {
    "slack_webhook_url": "SLACK_WEBHOOK_URL",
    "teams_webhook_url": "TEAMS_WEBHOOK_URL",
    "discord_webhook_url": "DISCORD_WEBHOOK_URL",
    "telegram_bot_token": "TELEGRAM_BOT_TOKEN",
}
DISCORD_LIMIT, TELEGRAM_LIMIT = 2000, 4096


@dataclass(frozen=True)
class Alert:
    job: str
    location: str
    run_id: str
    failed_steps: list[tuple[str, str]]  # (step key, error)
    link: str

    @property
    def title(self) -> str:
        return f"Dagster run failed: {self.job} in {self.location}"

    def text(self) -> str:
        lines = [self.title, f"Run: {self.run_id}"]
        lines += [f"Step {step} failed: {error}" for step, error in self.failed_steps]
        lines.append(f"Open the run: {self.link}")
        return "\n".join(lines)


class AlertChannels(dg.ConfigurableResource):
    """Where alerts go; a channel whose setting is empty is skipped."""

    slack_webhook_url: str = ""
    teams_webhook_url: str = ""
    discord_webhook_url: str = ""
    telegram_bot_token: str = ""
    telegram_chat_id: str = ""
    telegram_api_url: str = "https://api.telegram.org"
    ui_base_url: str = "http://localhost:3000"
    timeout_seconds: float = 10.0
    attempts: int = 3

    def link(self, run_id: str) -> str:
        return f"{self.ui_base_url.rstrip('/')}/runs/{run_id}"

    def payloads(self, alert: Alert) -> dict[str, tuple[str, dict]]:
        """(URL, JSON body) per configured channel."""
        text = alert.text()
        out = {}
        if self.slack_webhook_url:
            out["slack"] = (self.slack_webhook_url, {"text": text})
        if self.teams_webhook_url:
            out["teams"] = (self.teams_webhook_url, teams_card(alert))
        if self.discord_webhook_url:
            out["discord"] = (self.discord_webhook_url, {"content": text[:DISCORD_LIMIT],
                                                         "allowed_mentions": {"parse": []}})
        if self.telegram_bot_token and self.telegram_chat_id:
            url = f"{self.telegram_api_url.rstrip('/')}/bot{self.telegram_bot_token}/sendMessage"
            out["telegram"] = (url, {"chat_id": self.telegram_chat_id, "text": text[:TELEGRAM_LIMIT],
                                     "disable_web_page_preview": True})
        return out

    def post(self, url: str, body: dict) -> None:
        """POST JSON with a few attempts; errors name the status, never the (secret) URL."""
        data = json.dumps(body).encode()
        problem = ""
        for attempt in range(1, self.attempts + 1):
            request = urllib.request.Request(url, data=data, method="POST",
                                             headers={"Content-Type": "application/json",
                                                      "User-Agent": "dagster-platform-alerts"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                    response.read()
                return
            except urllib.error.HTTPError as error:
                problem = f"HTTP {error.code} {error.reason}"
                if error.code < 500 and error.code != 429:
                    break
            except OSError as error:  # URLError, timeouts, refused connections
                problem = type(getattr(error, "reason", error)).__name__
            if attempt < self.attempts:
                time.sleep(2 ** (attempt - 1))
        raise RuntimeError(problem)

    def send(self, alert: Alert, log) -> dict[str, str]:
        """Post to every configured channel; one channel failing does not stop the others."""
        outcome = {}
        for channel, (url, body) in self.payloads(alert).items():
            try:
                self.post(url, body)
                outcome[channel] = "sent"
            except RuntimeError as error:
                outcome[channel] = f"failed: {error}"
                log.error("alert for run %s to %s failed: %s", alert.run_id, channel, error)
        return outcome


def teams_card(alert: Alert) -> dict:
    """A Teams workflow webhook message: an Adaptive Card with a button to the run."""
    facts = [{"title": "Job", "value": alert.job}, {"title": "Location", "value": alert.location},
             {"title": "Run", "value": alert.run_id}]
    body = [{"type": "TextBlock", "text": alert.title, "weight": "Bolder", "size": "Medium", "wrap": True},
            {"type": "FactSet", "facts": facts}]
    body += [{"type": "TextBlock", "text": f"Step {step} failed: {error}", "wrap": True}
             for step, error in alert.failed_steps]
    return {"type": "message", "attachments": [{
        "contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None,
        "content": {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
                    "version": "1.4", "body": body,
                    "actions": [{"type": "Action.OpenUrl", "title": "Open the run", "url": alert.link}]},
    }]}


def error_text(error) -> str:
    """The error's message; a dagster Failure's description without the class name."""
    text = error.message.strip()
    if error.cls_name == "Failure":
        text = text.split(": ", 1)[-1]
    return text


def alert_for(context: dg.RunFailureSensorContext, channels: AlertChannels) -> Alert:
    run = context.dagster_run
    origin = run.remote_job_origin
    location = origin.repository_origin.code_location_origin.location_name if origin else "(launched in process)"
    steps = []
    for event in context.get_step_failure_events():
        error = event.event_specific_data.error if event.event_specific_data else None
        steps.append((event.step_key or "?", error_text(error) if error else (event.message or "").strip()))
    if not steps:  # failed before any step ran (e.g. its code location was unreachable)
        steps.append(("(run)", (context.failure_event.message or "no error message").strip()))
    return Alert(job=run.job_name, location=location, run_id=run.run_id, failed_steps=steps,
                 link=channels.link(run.run_id))


@dg.run_failure_sensor(
    name="run_failure_alerts",
    description="Posts every failed run, in any code location, to the configured channels.",
    monitor_all_code_locations=True,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def run_failure_alerts(context: dg.RunFailureSensorContext, alerts: AlertChannels):
    alert = alert_for(context, alerts)
    outcome = alerts.send(alert, context.log)
    context.log.info("run %s of %s failed; alerts: %s", alert.run_id, alert.job, outcome or "no channel configured")


class Drill(dg.Config):
    reason: str = "alert drill: this run fails on purpose"


@dg.op
def fail_on_purpose(config: Drill):
    raise dg.Failure(description=config.reason)


@dg.job(description="Fails on purpose, to check that alerts arrive.")
def alert_drill_job():
    fail_on_purpose()


class MemoryDrill(dg.Config):
    mebibytes: int = 64


@dg.op
def hold_memory(context: dg.OpExecutionContext, config: MemoryDrill) -> int:
    """Fill memory 64 MiB at a time (written, so it is resident): under the location's
    memory limit the kernel kills this step alone, and the run fails."""
    blocks = [b"\xff" * 2**26 for _ in range(max(1, config.mebibytes // 64))]
    held = sum(len(block) for block in blocks) // 2**20
    context.log.info("held %d MiB", held)
    return held


@dg.job(description="Takes the memory it is told to, to check the location's memory limit.")
def memory_drill_job():
    hold_memory()


class GateDrill(dg.Config):
    gate_file: str
    timeout_seconds: float = 600.0


@dg.op
def wait_for_gate(context: dg.OpExecutionContext, config: GateDrill) -> float:
    """Stay in flight until the gate file exists: what deploys, crashes and reboots do to
    a running run is checked with this."""
    started = time.monotonic()
    context.log.info("waiting for %s", config.gate_file)
    while not os.path.exists(config.gate_file):
        if time.monotonic() - started > config.timeout_seconds:
            raise dg.Failure(description=f"{config.gate_file} did not appear in {config.timeout_seconds:.0f} s")
        time.sleep(0.2)
    return round(time.monotonic() - started, 1)


@dg.job(description="Runs until a file appears, to check what happens to a run in flight.")
def gate_drill_job():
    wait_for_gate()


def channels_from_environment() -> AlertChannels:
    secrets = {field: dg.EnvVar(name) for field, name in SECRET_VARIABLES.items() if os.environ.get(name)}
    return AlertChannels(
        **secrets,
        telegram_chat_id=os.environ.get("TELEGRAM_CHAT_ID", ""),
        telegram_api_url=os.environ.get("TELEGRAM_API_URL") or "https://api.telegram.org",
        ui_base_url=os.environ.get("DAGSTER_UI_BASE_URL") or "http://localhost:3000",
    )


defs = dg.Definitions(jobs=[alert_drill_job, memory_drill_job, gate_drill_job], sensors=[run_failure_alerts],
                      resources={"alerts": channels_from_environment()})
