"""pgAdmin on the lab host (dagster_pgadmin, turned on in inventory/lab/group_vars/all/
pgadmin.yml): behind nginx at /pgadmin/ with its own login, the warehouse registered for
that login as the read-only role, a taxi table read through the query tool's API.
After test_40_pipelines, which loaded the taxi sample into the warehouse."""

import http.cookiejar
import json
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from dagster_platform import LAB_SECRETS, record

PATH = "/pgadmin"
EMAIL = "admin@example.com"
PORT = 5050
TOKEN = re.compile(r'"csrfToken": *"([^"]+)"')
CSRF = re.compile(r"pgAdmin\['csrf_token'\] = '([^']+)'")
TAXI_QUERY = "SELECT source_month, count(*) AS trips FROM yellow_trips GROUP BY source_month ORDER BY source_month"


class PgAdmin:
    """pgAdmin as a browser reaches it: https through nginx (no basic auth), its session
    cookie, the CSRF token of its forms and of its API calls, a Referer on each request."""

    def __init__(self, web):
        self.url = web.url + PATH
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
                                                  urllib.request.HTTPSHandler(context=web.context))
        self.csrf = ""

    def open(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 30):
        request = urllib.request.Request(self.url + path, data=body, method=method,
                                         headers={"Referer": f"{self.url}/login", **(headers or {})})
        return self.opener.open(request, timeout=timeout)

    def login_form(self) -> str:
        with self.open("GET", "/login") as page:
            assert page.status == 200
            return TOKEN.search(page.read().decode()).group(1)

    def login(self, email: str, password: str) -> str:
        """Posts the login form; the path pgAdmin lands on (/browser/ once logged in)."""
        form = {"csrf_token": self.login_form(), "email": email, "password": password, "language": "en",
                "internal_button": "Login"}
        with self.open("POST", "/authenticate/login", urllib.parse.urlencode(form).encode(),
                       {"Content-Type": "application/x-www-form-urlencoded"}) as landed:
            path = urllib.parse.urlparse(landed.url).path
        if path == f"{PATH}/browser/":
            with self.open("GET", "/browser/js/utils.js") as script:
                self.csrf = CSRF.search(script.read().decode()).group(1)
        return path

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        headers = {"X-pgA-CSRFToken": self.csrf, "Referer": f"{self.url}/browser/"}
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        try:
            with self.open(method, path, data, headers) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            if error.headers.get_content_type() == "application/json":
                return json.load(error)  # pgAdmin's errors: {"success": 0, "errormsg": ...}
            raise

    def nodes(self, path: str) -> dict[str, dict]:
        """The tree's children at a node path, by label."""
        answer = self.call("GET", path)
        return {node["label"]: node for node in answer.get("data") or answer["result"]}

    def run(self, trans_id: int, sql: str, timeout: float = 60) -> dict:
        """Runs one statement in an open query tool; its final poll's data."""
        started = self.call("POST", f"/sqleditor/query_tool/start/{trans_id}", {"sql": sql, "explain_plan": None})
        assert started["success"] == 1, started
        deadline = time.monotonic() + timeout
        while True:
            polled = self.call("GET", f"/sqleditor/poll/{trans_id}")
            if polled["success"] != 1 or polled["data"]["status"] != "Busy":
                return polled
            assert time.monotonic() < deadline, f"{sql} still busy after {timeout} s"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def password() -> str:
    return (LAB_SECRETS / "pgadmin_password").read_text().strip()


def test_pgadmin_runs_as_its_own_user_on_loopback_with_private_files(host):
    service = host.service("dagster-pgadmin.service")
    assert service.is_running and service.is_enabled
    pids = host.check_output("systemctl show -P MainPID dagster-pgadmin.service")
    assert host.check_output(f"ps -o user= -p {pids}") == "dagster-pgadmin"
    listening = host.check_output("ss -Hltn")
    assert re.search(rf"\s127\.0\.0\.1:{PORT}\s", listening), "pgAdmin on loopback"
    assert not re.search(rf"\s(0\.0\.0\.0|\*|\[::\]):{PORT}\s", listening), "pgAdmin not on all addresses"
    storage = f"/var/lib/dagster-pgadmin/storage/{EMAIL.replace('@', '_')}"
    for path, owner, group, mode in [
        ("/etc/pgadmin/config_system.py", "root", "dagster-pgadmin", 0o640),
        ("/etc/pgadmin/servers.json", "root", "dagster-pgadmin", 0o640),
        ("/var/lib/dagster-pgadmin", "dagster-pgadmin", "dagster-pgadmin", 0o700),
        ("/var/lib/dagster-pgadmin/pgadmin4.db", "dagster-pgadmin", "dagster-pgadmin", 0o600),
        (f"{storage}/pgpass", "dagster-pgadmin", "dagster-pgadmin", 0o600),
        ("/opt/dagster/pgadmin/login.sha256", "root", "root", 0o600),
    ]:
        f = host.file(path)
        assert (f.user, f.group, f.mode) == (owner, group, mode), path
    # The passfile holds the read-only role's login, never the owner's.
    assert ":warehouse_reader:" in host.file(f"{storage}/pgpass").content_string
    exposure = float(re.search(r"exposure level for \S+: (\d+\.\d+)", host.check_output(
        "systemd-analyze security --no-pager dagster-pgadmin.service | tail -1")).group(1))
    kib = host.check_output("ps -e -o unit=,rss= | awk '$1 == \"dagster-pgadmin.service\" {s += $2} END {print s}'")
    record("pgadmin", {"systemd_analyze_security_exposure": exposure, "rss_mib": round(int(kib) / 1024),
                       "venv_mib": int(host.check_output("du -sm /opt/dagster/pgadmin/venv | cut -f1"))})
    assert exposure <= 2.0, exposure


def test_the_login_page_answers_through_nginx_without_basic_auth(web):
    started = time.monotonic()
    bare = urllib.request.Request(f"{web.url}{PATH}/login")  # no Authorization header
    with urllib.request.urlopen(bare, timeout=10, context=web.context) as page:
        assert page.status == 200 and TOKEN.search(page.read().decode())
        # pgAdmin's own frame policy (it frames itself), the site's HSTS.
        assert page.headers["X-Frame-Options"] == "SAMEORIGIN"
        assert page.headers["Strict-Transport-Security"].startswith("max-age=")
        assert "Path=/pgadmin" in page.headers["Set-Cookie"] and "Secure" in page.headers["Set-Cookie"]
    record("pgadmin_login_page_seconds", round(time.monotonic() - started, 2))
    # The Dagster UI keeps its basic auth.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(f"{web.url}/server_info"), timeout=10, context=web.context)
    assert refused.value.code == 401


def test_a_query_returns_rows_of_a_warehouse_taxi_table(web, host, password):
    """Login, the registered warehouse connected without a database password (its
    passfile), a SELECT of the taxi table through the query tool; a DELETE refused."""
    started = time.monotonic()
    pgadmin = PgAdmin(web)
    assert pgadmin.login(EMAIL, password) == f"{PATH}/browser/"
    group = pgadmin.nodes("/browser/server_group/nodes/")["Dagster"]
    server = pgadmin.nodes(f"/browser/server/nodes/{group['_id']}/")["Warehouse"]
    gid, sid = group["_id"], server["_id"]
    connected = pgadmin.call("POST", f"/browser/server/connect/{gid}/{sid}", {})
    assert connected["success"] == 1 and connected["data"]["connected"], connected
    assert connected["data"]["user"]["name"] == "warehouse_reader"
    databases = pgadmin.nodes(f"/browser/database/nodes/{gid}/{sid}/")
    assert list(databases) == ["warehouse"]  # the server's database restriction
    trans_id = secrets.randbelow(9_000_000) + 1
    opened = pgadmin.call("POST", f"/sqleditor/initialize/sqleditor/{trans_id}/{gid}/{sid}/{databases['warehouse']['_id']}",
                          {"dbname": "warehouse"})
    assert opened["success"] == 1, opened
    try:
        result = pgadmin.run(trans_id, TAXI_QUERY)
        assert result["success"] == 1 and result["data"]["status"] == "Success", result
        assert [c["name"] for c in result["data"]["colinfo"]] == ["source_month", "trips"]
        rows = {str(month): int(trips) for month, trips in result["data"]["result"]}
        expected = dict(line.split("|") for line in host.check_output(
            f"runuser -u postgres -- psql -d warehouse -XAtc \"{TAXI_QUERY}\"").splitlines())
        assert rows == {month: int(trips) for month, trips in expected.items()} and rows, rows
        refused = pgadmin.run(trans_id, "DELETE FROM yellow_trips")
        assert refused["success"] == 0 and "permission denied for table yellow_trips" in refused["errormsg"], refused
    finally:
        pgadmin.call("DELETE", f"/sqleditor/close/{trans_id}")
    record("pgadmin_login_to_query_rows_seconds", round(time.monotonic() - started, 2))


def test_guessing_the_login_is_rate_limited_then_banned(web, host, password):
    """Wrong passwords: pgAdmin refuses them without locking the account, nginx answers
    429 past the login rate, fail2ban bans the address; once unbanned the login works."""
    guesser = PgAdmin(web)
    answers = []
    try:
        for attempt in range(20):
            try:
                answers.append(guesser.login(EMAIL, f"wrong-password-{attempt}"))
            except urllib.error.HTTPError as refused:
                answers.append(refused.code)
            except urllib.error.URLError:
                answers.append("banned")
                break
        assert f"{PATH}/login" in answers and 429 in answers, answers
        deadline = time.monotonic() + 30
        while not (banned := banned_addresses(host)) and time.monotonic() < deadline:
            time.sleep(0.5)  # fail2ban reads the log as nginx writes it
        assert len(banned) == 1, banned
    finally:
        for address in banned_addresses(host):
            # The documented way: it also keeps an unclean reboot from banning the address anew.
            assert f"dagster-pgadmin: {address} unbanned" in host.check_output(f"dagster-unban {address}")
    record("pgadmin_guesses_answered", answers)
    # The rate allows a login again after a few seconds; the account is not locked.
    deadline = time.monotonic() + 60
    while True:
        try:
            assert PgAdmin(web).login(EMAIL, password) == f"{PATH}/browser/"
            break
        except urllib.error.HTTPError as refused:
            assert refused.code == 429 and time.monotonic() < deadline
            time.sleep(3)


def banned_addresses(host) -> list[str]:
    status = host.check_output("fail2ban-client status dagster-pgadmin")
    return re.search(r"Banned IP list:\s*(.*)", status).group(1).split()


def test_a_restart_answers_again_through_nginx(host, web):
    """Its start time: from `systemctl restart` until the login page answers through nginx
    (gunicorn imports pgAdmin before it listens)."""
    started = time.monotonic()
    host.check_output("systemctl restart dagster-pgadmin.service")
    deadline = started + 120
    while True:
        try:
            with urllib.request.urlopen(f"{web.url}{PATH}/login", timeout=5, context=web.context) as page:
                if page.status == 200:
                    break
        except OSError:  # nginx's 502 while pgAdmin does not listen yet, or a timeout
            pass
        assert time.monotonic() < deadline, "pgAdmin did not answer within 120 s of a restart"
        time.sleep(0.2)
    record("pgadmin_start_seconds", round(time.monotonic() - started, 1))
    assert host.service("dagster-pgadmin.service").is_running
