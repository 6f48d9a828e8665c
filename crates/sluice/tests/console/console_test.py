"""The web console in a real Chromium against a real `sluice server` (started by
crates/sluice/tests/console.rs, which passes what it made in the environment).

Each check waits for what it expects with Playwright's bounded auto-waiting; a failure
exits non-zero with the check's name and saves a screenshot beside the others.
"""

import base64
import hashlib
import hmac
import http.client
import http.server
import json
import os
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.request
from urllib.parse import urlparse

from playwright.sync_api import expect, sync_playwright

BASE = os.environ["SLUICE_URL"]
ADMIN = os.environ["SLUICE_ADMIN_TOKEN"]
READ = os.environ["SLUICE_READ_TOKEN"]
PG_URL = os.environ["SLUICE_PG_URL"]
PSQL = os.environ["SLUICE_PSQL"]
SHOTS = os.environ["SLUICE_SCREENSHOTS"]
CHROMIUM = os.environ.get("SLUICE_CHROMIUM", "/usr/bin/chromium")
PG_PORT = os.environ["SLUICE_PG_PORT"]
REDIS_URL = os.environ["SLUICE_REDIS_URL"]
REDIS_PORT = os.environ["SLUICE_REDIS_PORT"]
TIMEOUT_MS = 30_000


# Failed requests a check expects (method, path, status or None for any 4xx), cleared
# before each check: anything else that fails, and any error the page logs, fails it.
EXPECTED_FAILURES = []


def expect_failure(method, path, status=None):
    EXPECTED_FAILURES.append((method, path, status))


def expected(method, url, status):
    path = urlparse(url).path
    return any(m == method and p == path and (s == status if s else 400 <= status < 500) for m, p, s in EXPECTED_FAILURES)


def api(method, path, token=ADMIN, body=None):
    """The management API as the test sees it, beside the browser."""
    req = urllib.request.Request(BASE + path, method=method, headers={"Authorization": f"Bearer {token}"},
                                 data=None if body is None else json.dumps(body).encode())
    if body is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


def psql(sql):
    subprocess.run([PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", PG_URL, "-c", sql], check=True)


class SseClient:
    """A client of an SSE sink, reading in a thread until closed."""

    def __init__(self, pipeline, sink, token=ADMIN):
        u = urlparse(BASE)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        self.conn.request("GET", f"/v1/pipelines/{pipeline}/sinks/{sink}/events",
                          headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"})
        answer = self.conn.getresponse()
        assert answer.status == 200, (answer.status, answer.read())
        self.events = queue.Queue()

        def read():
            try:
                for line in answer:
                    if line.startswith(b"data: "):
                        self.events.put(json.loads(line[6:]))
            except (OSError, ValueError, http.client.HTTPException):
                pass  # closed by the check

        threading.Thread(target=read, daemon=True).start()

    def close(self):
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.conn.close()


class WebhookReceiver:
    """A webhook endpoint that accepts every POST and keeps its headers and body."""

    def __init__(self):
        got = self.got = queue.Queue()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                got.put((dict((k.lower(), v) for k, v in self.headers.items()), body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, text, timeout=30):
        """The headers and body of the first request whose body holds `text`."""
        try:
            while True:
                headers, body = self.got.get(timeout=timeout)
                if text.encode() in body:
                    return headers, body
        except queue.Empty:
            raise AssertionError(f"the webhook received nothing holding {text!r}")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def signed_with(secret, headers, body):
    """Whether a webhook request is signed with `secret` (Standard Webhooks)."""
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    want = "v1," + base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()
    return want in headers.get("webhook-signature", "").split(" ")


def sign_in(page, token):
    page.goto(BASE + "/")
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def wrong_token_is_explained_next_to_the_field(page):
    expect_failure("GET", "/v1/whoami", 401)
    sign_in(page, "not-a-token")
    # The page names its icon, which the server serves (no request for a missing one).
    icon = page.locator("link[rel=icon]").get_attribute("href")
    answer = page.request.get(BASE + icon)
    assert answer.status == 200 and answer.headers["content-type"] == "image/svg+xml", (icon, answer.status, answer.headers)
    expect(page.locator("#token-error")).to_contain_text("not valid")
    expect(page.get_by_label("Token")).to_have_attribute("aria-invalid", "true")
    page.screenshot(path=os.path.join(SHOTS, "console-signin.png"), full_page=True)


def the_list_updates_live_as_rows_arrive(page):
    sign_in(page, ADMIN)
    row = page.locator("tr[data-pipeline=shop]")
    expect(row).to_contain_text("running")
    # Rows flow while the page stays open: its throughput moves without a reload.
    for n in range(5):
        psql(f"INSERT INTO orders SELECT g, 'o' FROM generate_series({n * 200 + 1}, {n * 200 + 200}) g")
        page.wait_for_timeout(300)
    expect(row.locator(".throughput")).not_to_have_text("0/s")
    page.screenshot(path=os.path.join(SHOTS, "console-pipelines.png"), full_page=True)


def an_admin_pauses_and_resumes_from_the_pipeline_page(page):
    sign_in(page, ADMIN)
    page.get_by_role("link", name="shop").click()
    expect(page.get_by_role("heading", name="shop")).to_be_visible()
    # The slot's row (the publication has the same name).
    expect(page.locator("dl.facts dt:text-is('Slot') + dd")).to_contain_text("sluice_shop")
    expect(page.locator("figure.chart canvas").first).to_be_visible()
    expect(page.locator("figure.chart figcaption").first).to_contain_text("records behind")
    # A table added from the page is backfilled, its progress shown.
    page.get_by_role("button", name="Add tables…").click()
    page.get_by_label("public.extras").check()
    page.get_by_role("button", name="Add and backfill").click()
    expect(page.get_by_label("public.extras (backfill): 3 rows, done")).to_be_visible()
    # The time axis is in clock times: the legend (the axis's own words) when pointing
    # at the chart, and the caption's latest sample.
    expect(page.locator("figure.chart figcaption").first).to_have_text(re.compile(r"\d\d:\d\d:\d\d"))
    page.locator("figure.chart .u-over").first.hover()
    expect(page.locator("figure.chart .u-legend .u-series").first.locator(".u-value")).to_have_text(re.compile(r"^\d\d:\d\d(:\d\d)?$"))
    # A sink served to clients shows its clients and the events sent to them.
    feed = page.locator("tr[data-sink=feed]")
    expect(feed).to_contain_text("0 clients connected")
    client = SseClient("shop", "feed")
    try:
        expect(feed).to_contain_text("1 client connected")
        psql("INSERT INTO orders VALUES (30100, 'to a client')")
        got = client.events.get(timeout=30)
        assert got["table"] == "orders", got
        expect(feed).to_contain_text(re.compile(r"1 client connected, [1-9][\d,]* events? sent"))
    finally:
        client.close()
    # A client gone is counted out (seen at the latest when the next event is sent).
    psql("INSERT INTO orders VALUES (30101, 'to no one')")
    expect(feed).to_contain_text("0 clients connected")
    page.get_by_role("button", name="Pause").click()
    expect(page.locator(".heading .badge")).to_have_text("paused")
    page.get_by_role("button", name="Resume").click()
    # The notice is for this page: it is gone once another page shows (well before it
    # would hide by itself).
    expect(page.locator("#toast")).to_have_text("Resumed.")
    page.get_by_role("navigation").get_by_role("link", name="Pipelines").click()
    expect(page.get_by_role("heading", name="Pipelines")).to_be_visible()
    expect(page.locator("#toast")).to_have_text("", timeout=1500)
    page.get_by_role("link", name="shop").click()
    # While the source connects again the page says it starts, never that the slot is
    # inactive or missing.
    for _ in range(300):
        badge = page.locator(".heading .badge").inner_text()
        facts = page.locator("dl.facts").inner_text()
        assert "inactive" not in facts and "missing" not in facts, facts
        if badge == "running" and "starting" not in facts:
            break
        page.wait_for_timeout(100)
    expect(page.locator(".heading .badge")).to_have_text("running")
    expect(page.locator("dl.facts")).not_to_contain_text("starting")
    # Live figures once the source streams again.
    expect(page.locator("dd").nth(4)).not_to_have_text("–")
    # Rows for a few seconds, so that the chart has something to show.
    for n in range(12):
        psql(f"INSERT INTO orders SELECT g, 'o' FROM generate_series({40000 + n * 100}, {40000 + n * 100 + 99}) g")
        page.wait_for_timeout(500)
    expect(page.locator("tr[data-sink=out] td").nth(3)).not_to_have_text("0")
    page.screenshot(path=os.path.join(SHOTS, "console-pipeline.png"), full_page=True)
    # The delete dialog names what it drops; cancelled here.
    page.get_by_role("button", name="Delete…").click()
    expect(page.get_by_role("dialog")).to_contain_text("drops replication slot sluice_shop and publication sluice_shop")
    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("dialog")).to_have_count(0)


def a_sink_is_added_to_and_removed_from_a_running_pipeline(page):
    sign_in(page, ADMIN)
    page.get_by_role("link", name="shop").click()
    expect(page.locator(".heading .badge")).to_have_text("running")
    page.get_by_role("button", name="Add sink…").click()
    # The form offers the server's sink types.
    offered = page.locator("#new-sink-type option").evaluate_all("os => os.map((o) => o.value)")
    assert offered == [t["type"] for t in api("GET", "/v1/sink-types")], offered
    out = os.path.join(tempfile.mkdtemp(prefix="sluice-console-"), "copy.jsonl")
    page.get_by_label("Sink name").fill("copy")
    page.get_by_label("Type", exact=True).select_option("file")
    page.get_by_label("path", exact=True).fill(out)
    page.get_by_role("button", name="Add sink", exact=True).click()
    expect(page.get_by_text("Added sink copy.")).to_be_visible()
    expect(page.locator("tr[data-sink=copy]")).to_contain_text("file")
    assert [k["name"] for k in api("GET", "/v1/pipelines/shop")["config"]["sinks"]] == ["out", "feed", "copy"]
    expect(page.locator(".heading .badge")).to_have_text("running")
    # It delivers: a row inserted now reaches its file.
    psql("INSERT INTO orders VALUES (30001, 'to the new sink')")
    for _ in range(120):
        if os.path.exists(out) and "to the new sink" in open(out).read():
            break
        page.wait_for_timeout(250)
    assert os.path.exists(out) and "to the new sink" in open(out).read(), "the added sink delivered nothing"
    # A webhook sink with a signing secret, after it. Its form shows first where records
    # go (none of its settings is required, so they are all shown, url first).
    hook = WebhookReceiver()
    try:
        page.get_by_role("button", name="Add sink…").click()
        page.get_by_label("Sink name").fill("notify")
        page.get_by_label("Type", exact=True).select_option("webhook")
        first = page.locator(".sink-settings input, .sink-settings select, .sink-settings textarea").first
        expect(first).to_have_id("new-sink-url")
        expect(first).to_be_visible()
        page.get_by_label("url", exact=True).fill(hook.url)
        page.get_by_label("secret", exact=True).fill("notify-secret")
        page.get_by_role("button", name="Add sink", exact=True).click()
        expect(page.get_by_text("Added sink notify.")).to_be_visible()
        expect(page.locator("tr[data-sink=notify]")).to_contain_text("webhook")
        assert [k["name"] for k in api("GET", "/v1/pipelines/shop")["config"]["sinks"]] == ["out", "feed", "copy", "notify"]
        expect(page.locator(".heading .badge")).to_have_text("running")
        psql("INSERT INTO orders VALUES (30002, 'to the webhook')")
        headers, body = hook.wait_for("to the webhook")
        assert signed_with("notify-secret", headers, body) and not signed_with("<redacted>", headers, body), headers
        page.screenshot(path=os.path.join(SHOTS, "console-sink-added.png"), full_page=True)
        # Removed after a confirmation; cancelling first keeps it. The sink removed is
        # before the webhook: the webhook keeps its secret, nothing is asked again.
        page.get_by_role("button", name="Remove sink copy").click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_contain_text("Remove sink copy?")
        expect(dialog.locator("input, textarea")).to_have_count(0)
        dialog.get_by_role("button", name="Cancel").click()
        expect(page.get_by_role("dialog")).to_have_count(0)
        expect(page.locator("tr[data-sink=copy]")).to_have_count(1)
        page.get_by_role("button", name="Remove sink copy").click()
        with page.expect_response(lambda r: r.request.method == "PUT" and urlparse(r.url).path == "/v1/pipelines/shop") as put:
            page.get_by_role("dialog").get_by_role("button", name="Remove", exact=True).click()
        assert put.value.status == 200, put.value.status
        expect(page.locator("tr[data-sink=copy]")).to_have_count(0)
        expect(page.get_by_text("Removed sink copy.")).to_be_visible()
        # Its chart goes with it.
        expect(page.locator("figure.chart h3").filter(has_text=re.compile("^copy$"))).to_have_count(0)
        expect(page.locator("figure.chart h3").filter(has_text=re.compile("^notify$"))).to_have_count(1)
        sinks = api("GET", "/v1/pipelines/shop")["config"]["sinks"]
        assert [k["name"] for k in sinks] == ["out", "feed", "notify"], sinks
        assert sinks[2]["secret"] == "<redacted>", sinks[2]
        expect(page.locator(".heading .badge")).to_have_text("running")
        # It still delivers, signed with the secret it was given.
        psql("INSERT INTO orders VALUES (30003, 'after the removal')")
        headers, body = hook.wait_for("after the removal")
        assert signed_with("notify-secret", headers, body) and not signed_with("<redacted>", headers, body), headers
        # The webhook goes too, so that the pipeline is as it was.
        page.get_by_role("button", name="Remove sink notify").click()
        page.get_by_role("dialog").get_by_role("button", name="Remove", exact=True).click()
        expect(page.get_by_text("Removed sink notify.")).to_be_visible()
    finally:
        hook.close()
    assert [k["name"] for k in api("GET", "/v1/pipelines/shop")["config"]["sinks"]] == ["out", "feed"]
    expect(page.locator(".heading .badge")).to_have_text("running")


def a_read_only_token_sees_no_write_controls(page):
    sign_in(page, READ)
    expect(page.locator("tr[data-pipeline=shop]")).to_be_visible()
    expect(page.get_by_role("link", name="New pipeline")).to_have_count(0)
    page.get_by_role("link", name="shop").click()
    expect(page.get_by_role("heading", name="shop")).to_be_visible()
    for name in ["Pause", "Resume", "Delete…", "Add sink…", "Add tables…"]:
        expect(page.get_by_role("button", name=name)).to_have_count(0)
    expect(page.get_by_role("button", name="Remove sink feed")).to_have_count(0)


def an_admin_makes_a_read_only_token_in_settings(page):
    sign_in(page, ADMIN)
    page.get_by_role("link", name="Settings").click()
    page.get_by_label("What it is for").fill("wallboard")
    page.get_by_label("Scope").select_option("read")
    page.get_by_role("button", name="Create token").click()
    expect(page.get_by_text("Token for wallboard (shown once; keep it now):")).to_be_visible()
    secret = page.locator("code.secret").inner_text().strip()
    assert secret.startswith("sluice_"), secret
    expect(page.get_by_role("cell", name="wallboard", exact=True)).to_be_visible()
    expect(page.get_by_role("cell", name="POST /v1/tokens").first).to_be_visible()
    expect(page.get_by_text("Plain HTTP: start the server with --tls-cert")).to_be_visible()
    # An allow-list that would shut this browser out is refused, said beside the list.
    expect_failure("PUT", "/v1/access")
    page.get_by_label("Management (API, console, metrics)").fill("10.0.0.0/8")
    page.get_by_role("button", name="Save allow-lists").click()
    expect(page.locator("#allow-management-error")).to_contain_text("would shut out your address")
    page.get_by_label("Management (API, console, metrics)").fill("127.0.0.0/8\n::1")
    page.get_by_role("button", name="Save allow-lists").click()
    expect(page.get_by_text("Allow-lists saved")).to_be_visible()
    expect(page.locator("#allow-management-error")).to_have_text("")
    # The notice goes by itself; the picture is taken without it over the audit log.
    expect(page.locator("#toast")).to_have_text("", timeout=10_000)
    page.screenshot(path=os.path.join(SHOTS, "console-settings.png"), full_page=True)
    # The new token signs in, and as read-only it is offered no revoke buttons.
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, secret)
    page.get_by_role("link", name="Settings").click()
    expect(page.get_by_role("heading", name="Tokens")).to_be_visible()
    expect(page.get_by_role("button", name="Create token")).to_have_count(0)
    expect(page.get_by_role("heading", name="Audit log")).to_have_count(0)


def redis_get(key):
    out = subprocess.run(["redis-cli", "-p", REDIS_PORT, "--raw", "GET", key], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def the_wizard_creates_a_pipeline_into_redis(page):
    sign_in(page, ADMIN)
    page.get_by_role("navigation").get_by_role("link", name="New pipeline").click()
    page.get_by_label("Host").fill("127.0.0.1")
    page.get_by_label("Port").fill(PG_PORT)
    page.get_by_label("Database").fill("postgres")
    page.get_by_label("User").fill("shopper")
    # A wrong password: the fix is shown next to the field.
    page.get_by_label("Password").fill("not-it")
    page.get_by_role("button", name="Test connection").click()
    expect(page.locator("#src-password-error")).to_contain_text("refused this user and password")
    expect(page.get_by_label("Password")).to_have_attribute("aria-invalid", "true")
    page.screenshot(path=os.path.join(SHOTS, "console-wizard-source.png"), full_page=True)
    page.get_by_label("Password").fill("shop-secret")
    page.get_by_role("button", name="Test connection").click()
    expect(page.locator("#src-password-error")).to_have_text("")
    page.get_by_label("public.orders").check()
    # The sink types offered are the server's, as GET /v1/sink-types answers.
    types = api("GET", "/v1/sink-types")
    offered = page.locator("#sink-type option").evaluate_all("os => os.map((o) => o.value)")
    assert offered == [t["type"] for t in types], (offered, types)
    # A Redis sink, verified against the real server; tables without a key are then
    # shown but not selectable, with the reason.
    page.get_by_label("Sink name").fill("cache")
    page.get_by_label("Type", exact=True).select_option("redis")
    redis = next(t for t in types if t["type"] == "redis")
    # Its required settings are shown, the optional ones folded under "More settings".
    for f in redis["fields"]:
        if f["name"] in ("name", "tables"):
            continue
        box = page.locator(f"#sink-{f['name']}")
        if f["required"]:
            expect(box).to_be_visible()
        else:
            expect(box).to_be_hidden()
    page.get_by_label("url", exact=True).fill(REDIS_URL)
    page.get_by_role("button", name="Add sink").click()
    expect(page.get_by_text("cache (redis)")).to_be_visible()
    expect(page.get_by_label("public.notes")).to_be_disabled()
    expect(page.get_by_text("Not selectable: no primary key: a Redis sink keys rows by it.")).to_be_visible()
    expect(page.get_by_label("public.orders")).to_be_checked()
    page.get_by_label("Pipeline name").fill("cached")
    page.get_by_role("button", name="Review").click()
    review = page.locator("pre.review")
    expect(review).to_contain_text('"public.orders"')
    assert "shop-secret" not in review.inner_text()
    page.screenshot(path=os.path.join(SHOTS, "console-wizard-review.png"), full_page=True)
    page.get_by_role("button", name="Create pipeline").click()
    expect(page.get_by_role("heading", name="cached")).to_be_visible()
    expect(page.locator(".heading .badge")).to_have_text("running")
    # A row inserted in PostgreSQL arrives in Redis, and in the page's figures.
    psql("INSERT INTO orders VALUES (9001, 'from the wizard')")
    deadline = 60
    while deadline > 0 and not redis_get("postgres.public.orders.9001"):
        page.wait_for_timeout(250)
        deadline -= 0.25
    assert "from the wizard" in redis_get("postgres.public.orders.9001")
    expect(page.locator("tbody tr").filter(has_text="cache").locator("td").nth(3)).not_to_have_text("0")


def events_reach_the_snippet_of_a_new_sse_consumer(page):
    sign_in(page, ADMIN)
    page.get_by_role("navigation").get_by_role("link", name="Consumers").click()
    page.get_by_label("Sink").select_option(label="shop / feed (sse)")
    page.get_by_label("public.orders").check()
    page.get_by_label("Consumer name").fill("storefront")
    page.get_by_role("button", name="Create consumer").click()
    snippet = page.locator("pre.snippet[data-lang=curl]").inner_text()
    page.screenshot(path=os.path.join(SHOTS, "console-consumers.png"), full_page=True)
    # The snippet as shown, run as it is, receives the rows inserted after it connects.
    proc = subprocess.Popen(["bash", "-c", snippet + " --max-time 30"], stdout=subprocess.PIPE, text=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout], daemon=True).start()
    got = None
    for n in range(60):
        psql(f"INSERT INTO orders VALUES ({20000 + n}, 'to the consumer')")
        try:
            line = lines.get(timeout=0.5)
            while not line.startswith("data: "):
                line = lines.get(timeout=0.5)
            got = json.loads(line[6:])
            break
        except queue.Empty:
            continue
    proc.kill()
    assert got is not None, "the snippet received no event"
    assert got["table"] == "orders" and got["after"]["v"] == "to the consumer", got


def a_parked_key_is_redriven_from_the_waiting_room_in_order(page):
    psql("INSERT INTO tickets VALUES (42, 1), (7, 1); UPDATE tickets SET v = 2 WHERE id = 42; UPDATE tickets SET v = 3 WHERE id = 42")
    sign_in(page, ADMIN)
    page.get_by_role("link", name="hooks").click()
    page.get_by_role("link", name="hook", exact=True).click()
    key = 'public.tickets:{"id":42}'
    row = page.get_by_role("row").filter(has_text=key)
    # Parked after its attempts; the page shows it once a reload finds it.
    for _ in range(60):
        if row.count():
            break
        page.wait_for_timeout(500)
        page.reload()
    expect(row).to_contain_text("parked")
    expect(row).to_contain_text("HTTP 500")
    page.get_by_role("button", name=f"Records of {key}").click()
    expect(page.locator("ol li")).to_have_count(3)
    page.screenshot(path=os.path.join(SHOTS, "console-waiting-room.png"), full_page=True)
    heal = os.environ["SLUICE_HEAL_FILE"]
    open(heal, "w").close()
    for _ in range(120):  # the test removes the file once the receiver accepts again
        if not os.path.exists(heal):
            break
        page.wait_for_timeout(250)
    assert not os.path.exists(heal), "the receiver was not healed"
    page.get_by_role("button", name=f"Redrive {key}").click()
    expect(page.get_by_text("Nothing is waiting.")).to_be_visible()


def the_console_fits_a_phone_in_the_dark_and_works_from_the_keyboard(page):
    page.set_viewport_size({"width": 390, "height": 844})
    page.emulate_media(color_scheme="dark")
    page.goto(BASE + "/")
    # Keyboard only: the token field has the focus; Enter signs in.
    page.keyboard.type(ADMIN)
    page.keyboard.press("Enter")
    expect(page.locator("tr[data-pipeline=shop]")).to_be_visible()
    bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert bg == "rgb(17, 19, 24)", bg
    # Nothing but the table's own scroller is wider than the screen.
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, overflow
    # Tab reaches the pipeline's link and Enter opens it.
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "shop":
            break
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="shop")).to_be_visible()
    page.screenshot(path=os.path.join(SHOTS, "console-phone-dark.png"), full_page=True)


CHECKS = [
    wrong_token_is_explained_next_to_the_field,
    the_list_updates_live_as_rows_arrive,
    an_admin_pauses_and_resumes_from_the_pipeline_page,
    a_sink_is_added_to_and_removed_from_a_running_pipeline,
    a_read_only_token_sees_no_write_controls,
    an_admin_makes_a_read_only_token_in_settings,
    the_wizard_creates_a_pipeline_into_redis,
    events_reach_the_snippet_of_a_new_sse_consumer,
    a_parked_key_is_redriven_from_the_waiting_room_in_order,
    the_console_fits_a_phone_in_the_dark_and_works_from_the_keyboard,
]


def watch(page, errors):
    """Collects what a person would not want to see go wrong: script errors, errors the
    page logs, requests that fail (but those the check expects; and requests the browser
    cancels itself as a page changes)."""
    page.on("pageerror", lambda e: errors.append(f"script error: {e}"))

    def console(m):
        if m.type != "error":
            return
        # A failed response is logged by the browser too: the response listener below
        # judges it, with its method and path.
        if m.text.startswith("Failed to load resource: the server responded with a status of"):
            return
        errors.append(f"console error: {m.text} ({m.location.get('url', '')})")

    def response(r):
        if r.status >= 400 and not expected(r.request.method, r.url, r.status):
            errors.append(f"{r.request.method} {r.url} answered {r.status}")

    def failed(r):
        if r.failure != "net::ERR_ABORTED":
            errors.append(f"{r.method} {r.url} failed: {r.failure}")

    page.on("console", console)
    page.on("response", response)
    page.on("requestfailed", failed)


def main():
    failed = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for check in CHECKS:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            page = context.new_page()
            errors = []
            EXPECTED_FAILURES.clear()
            watch(page, errors)
            try:
                check(page)
                if errors:
                    raise AssertionError(f"errors in the page: {errors}")
                print(f"ok: {check.__name__}")
            except Exception as e:  # one failed check does not hide the others
                failed.append(check.__name__)
                print(f"FAILED: {check.__name__}: {e}", file=sys.stderr)
                # What the page said, for a failure seen only in CI's log.
                try:
                    print(f"the page read:\n{page.inner_text('body')[:3000]}", file=sys.stderr)
                    page.screenshot(path=os.path.join(SHOTS, f"failed-{check.__name__}.png"))
                except Exception as again:  # a page that is gone says so, and the run goes on
                    print(f"(the page could not be read: {again})", file=sys.stderr)
            context.close()
        browser.close()
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
