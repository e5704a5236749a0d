"""The dashboard in Chromium against a real `ozwell serve`: keys made, used and revoked in the browser,
usage, models, files and stored responses, vector stores, escaping, CSRF, the 404 page, accessibility and
screenshots."""

from __future__ import annotations

import re
import time

import httpx
import openai
import pytest
from playwright.sync_api import expect

from tests.dashboard.conftest import DESKTOP, MODEL, PHONE, screenshot, sign_in, start_server

# Text under 4.5:1 against its background fails WCAG AA; this walks every element with its own text.
CONTRAST_JS = """() => {
  const parse = (c) => { const m = c.match(/[\\d.]+/g).map(Number); return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1]; };
  const lum = ([r, g, b]) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
                               return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const background = (el) => { for (; el; el = el.parentElement) { const c = parse(getComputedStyle(el).backgroundColor);
                                 if (c[3] > 0.5) return c; } return [255, 255, 255, 1]; };
  const bad = [];
  for (const el of document.querySelectorAll('body *')) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    const box = el.getBoundingClientRect();
    if (!own || !box.width || getComputedStyle(el).visibility === 'hidden' || el.closest('svg, .sr-only, .skip')) continue;
    const [a, b] = [lum(parse(getComputedStyle(el).color)), lum(background(el))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) bad.push(`${el.tagName}.${el.className} "${el.textContent.trim().slice(0, 30)}" ${ratio.toFixed(2)}`);
  }
  return bad;
}"""
UNLABELLED_JS = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
  .filter((el) => el.tagName === 'BUTTON' ? !el.textContent.trim() : !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
  .map((el) => el.outerHTML)"""


@pytest.fixture(scope="module")
def server(dash_config_dir, tmp_path_factory):
    process = start_server(dash_config_dir, tmp_path_factory.mktemp("dash-data"))
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def admin(server):
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as client:
        yield client


@pytest.fixture()
def page(browser, server):
    context = browser.new_context(viewport=DESKTOP, permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    sign_in(page, server)
    yield page
    context.close()


def create_in_browser(page, name: str, plan: str = "free", rpm: str = "", scopes: list[str] | None = None) -> str:
    page.goto(page.url.split("/dashboard")[0] + "/dashboard/keys")
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Plan", exact=True).select_option(plan)
    page.get_by_label("Requests per minute").fill(rpm)
    if scopes is not None:
        for box in page.locator("input[name=scopes]").all():
            box.set_checked(box.get_attribute("value") in scopes)
    page.get_by_role("button", name="Create API Key").click()
    page.wait_for_selector("#new-key")
    return page.input_value("#new-key")


def row(page, table: str, text: str):
    return page.locator(f"table.{table} tbody tr", has_text=text)


def test_signed_out_visits_redirect_to_sign_in_and_unknown_pages_are_404(browser, server):
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    for path in ("/dashboard", "/dashboard/", "/dashboard/usage", "/dashboard/models", "/dashboard/keys/key_x/revoke"):
        page.goto(server.url + path)
        assert page.url == server.url + "/dashboard/signin", path
    response = page.goto(server.url + "/dashboard/signin")
    headers = response.headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["referrer-policy"] == "same-origin"
    sign_in(page, server)
    response = page.goto(server.url + "/dashboard/no-such-page")
    assert response.status == 404
    assert page.get_by_role("heading", name="Page not found").is_visible()
    # The API keeps its JSON 404 outside the dashboard.
    assert httpx.get(server.url + "/v1/no-such-thing", headers=server.headers).json()["error"]["code"] == "unknown_url"
    context.close()


def test_a_key_is_created_used_seen_in_usage_and_revoked_in_the_browser(page, server):
    plaintext = create_in_browser(page, "sdk key", plan="pro", rpm="77")
    assert re.fullmatch(r"ozw_[A-Za-z0-9_-]{43}", plaintext)
    assert "won't be shown again" in page.locator(".alert.warning").inner_text()
    page.get_by_role("button", name="Copy").click()
    # the status is written when the clipboard's promise resolves: wait for it (read at once, it raced)
    expect(page.locator("#copied")).to_have_text("Copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == plaintext

    sdk = openai.OpenAI(base_url=server.url + "/v1", api_key=plaintext, max_retries=0)
    reply = sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=4)
    used = reply.usage.total_tokens
    assert used > 0

    page.goto(server.url + "/dashboard/usage?window=24h")
    by_key = row(page, "ranking", "sdk key").first
    cells = by_key.locator("td .num").all_inner_texts()
    assert cells == ["1", str(used)], cells
    assert row(page, "ranking", MODEL).count() >= 1
    live = row(page, "live", "sdk key")
    assert live.locator(".req-used").inner_text() == "1 / 77"
    assert live.locator(".tok-used").inner_text().startswith(f"{used} / ")
    for window in ("7d", "30d"):
        page.goto(server.url + f"/dashboard/usage?window={window}")
        assert row(page, "ranking", "sdk key").first.locator("td .num").first.inner_text() == "1"

    page.goto(server.url + "/dashboard/keys")
    key_row = row(page, "keys", "sdk key")
    assert key_row.locator(".badge").inner_text() == "active"
    assert "pro" in key_row.inner_text() and "77 RPM" in key_row.inner_text()
    key_row.get_by_role("link", name=re.compile("Revoke")).click()
    assert page.get_by_role("heading", name=re.compile("Revoke")).is_visible()
    page.get_by_role("button", name="Revoke key").click()
    page.wait_for_url(server.url + "/dashboard/keys")
    assert row(page, "keys", "sdk key").locator(".badge").inner_text() == "revoked"
    with pytest.raises(openai.AuthenticationError):
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=4)


def test_a_key_cannot_be_granted_more_than_the_admin_holds(page, server, admin):
    # An admin key of a "free" plan, signed in, is refused a "pro" key with a message, not a 500.
    made = admin.post("/v1/admin/keys", json={"name": "small admin", "plan": "free", "admin": True,
                                               "scopes": ["models", "chat"]}).json()
    sign_in(page, server, made["key"])
    page.get_by_label("Name", exact=True).fill("too big")
    page.get_by_label("Plan", exact=True).select_option("pro")
    response_status = []
    page.on("response", lambda r: response_status.append(r.status) if r.request.method == "POST" else None)
    page.get_by_role("button", name="Create API Key").click()
    page.wait_for_selector(".alert.error")
    assert response_status == [403]
    assert "plan" in page.locator(".alert.error").inner_text()
    assert page.get_by_label("Name", exact=True).input_value() == "too big"
    # Only the scopes it holds are offered.
    assert sorted(page.locator("input[name=scopes]").evaluate_all("els => els.map(e => e.value)")) == \
        ["admin", "chat", "models"]


def test_a_key_name_holding_script_renders_inert(page, server):
    name = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    create_in_browser(page, name)
    page.goto(server.url + "/dashboard/keys")
    page.goto(server.url + "/dashboard/usage")
    page.goto(server.url + "/dashboard/keys")
    assert page.locator("table.keys td.name", has_text="<script>").first.inner_text() == name
    assert page.locator("table.keys img").count() == 0
    page.wait_for_timeout(300)
    assert dialogs == []


def test_a_cross_site_form_post_without_the_csrf_token_is_refused(page, server, admin):
    victim = admin.post("/v1/admin/keys", json={"name": "csrf victim"}).json()
    # A page on another origin (127.0.0.1 on another port: same site, so the SameSite cookie still goes along,
    # and the CSRF token and Origin check are what stop it) posts a revoke form to the dashboard.
    evil = "http://127.0.0.1:9/evil.html"
    form = (f'<form id="f" method="post" action="{server.url}/dashboard/keys/{victim["id"]}/revoke">'
            '<input name="csrf_token" value="guessed"></form><script>document.getElementById("f").submit()</script>')
    page.route(evil, lambda route: route.fulfill(status=200, content_type="text/html", body=form))
    with page.expect_response(lambda r: r.url.endswith("/revoke")) as posted:
        page.goto(evil)
    assert posted.value.status == 403
    assert "CSRF" in page.locator("main").inner_text()
    keys = {k["id"]: k for k in admin.get("/v1/admin/keys").json()["data"]}
    assert keys[victim["id"]]["revoked_at"] is None
    # Without any token, from a script on the same origin as an attacker would need: refused too.
    cookie = next(c for c in page.context.cookies() if c["name"] == "ozwell_dashboard")
    refused = httpx.post(f"{server.url}/dashboard/keys/{victim['id']}/revoke", cookies={cookie["name"]: cookie["value"]})
    assert refused.status_code == 403
    assert admin.get("/v1/models", headers={"Authorization": f"Bearer {victim['key']}"}).status_code == 200


def test_the_models_page_shows_the_loaded_models_their_devices_and_memory(page, server):
    page.goto(server.url + "/dashboard/models")
    model = page.locator(f"table.models tr[data-model='{MODEL}']")
    cells = model.locator("td").all_inner_texts()
    card = httpx.get(f"{server.url}/v1/models/{MODEL}", headers=server.headers).json()["ozwell"]
    assert cells[:5] == ["chat", card["engine"], card["device"], "float32", str(card["max_model_len"])]
    assert cells[1:3] == ["transformers", "cpu"]
    assert re.fullmatch(r"\d+% \(\d+ / \d+ blocks\)", cells[5])
    assert cells[8:] == ["0", "0", "ready"]
    assert f"also {MODEL}-alias" in model.locator("th").inner_text()
    # Memory: the weights' and the KV cache's bytes as /metrics reports them, and the process's resident set.
    metrics = httpx.get(f"{server.url}/metrics", headers=server.headers).text

    def gauge(name: str) -> float:
        return float(re.search(rf'^ozwell:{name}(?:{{model_name="{MODEL}"}})? (\S+)$', metrics, re.MULTILINE).group(1))

    assert cells[6:8] == [_in_binary_units(gauge("weights_bytes")), _in_binary_units(gauge("kv_cache_bytes"))]
    resident = re.fullmatch(r"This server process holds ([\d.]+) (MiB|GiB) of memory \(resident set\)\.",
                            page.locator("p.memory").inner_text())
    assert resident, page.locator("p.memory").inner_text()
    shown = float(resident.group(1)) * 2 ** (20 if resident.group(2) == "MiB" else 30)
    assert shown == pytest.approx(gauge("process_resident_memory_bytes"), rel=0.2)
    assert shown > gauge("weights_bytes") + 50 * 2**20  # a Python process with torch holds far more than its weights


def _in_binary_units(n: float) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def test_files_and_stored_responses_are_listed_and_deleted(page, server, admin):
    uploaded = admin.post("/v1/files", files={"file": ("notes.txt", b"hello dashboard\n", "text/plain")},
                          data={"purpose": "user_data"}).json()
    stored = admin.post("/v1/responses", json={"model": MODEL, "input": "Hi", "max_output_tokens": 16}).json()
    page.goto(server.url + "/dashboard/files")
    file_row = page.locator(f"tr[data-file-id='{uploaded['id']}']")
    assert file_row.locator("th").inner_text() == "notes.txt"
    assert "user_data" in file_row.inner_text() and "16 B" in file_row.inner_text()
    response_row = page.locator(f"tr[data-response-id='{stored['id']}']")
    cells = response_row.locator("td").all_inner_texts()
    assert cells[:3] == [MODEL, stored["status"], str(stored["usage"]["total_tokens"])]

    file_row.get_by_role("button", name=re.compile("Delete")).click()
    page.wait_for_url(server.url + "/dashboard/files")
    assert page.locator(f"tr[data-file-id='{uploaded['id']}']").count() == 0
    assert admin.get(f"/v1/files/{uploaded['id']}").status_code == 404
    page.locator(f"tr[data-response-id='{stored['id']}']").get_by_role("button", name=re.compile("Delete")).click()
    page.wait_for_url(re.compile(r".*/dashboard/files"))
    assert page.locator(f"tr[data-response-id='{stored['id']}']").count() == 0
    assert admin.get(f"/v1/responses/{stored['id']}").status_code == 404


def _indexed(admin, store_id: str) -> dict:
    deadline = time.monotonic() + 120
    while (store := admin.get(f"/v1/vector_stores/{store_id}").json())["file_counts"]["in_progress"]:
        assert time.monotonic() < deadline, store
        time.sleep(0.2)
    return store


def test_vector_stores_their_files_and_errors_are_listed_and_deleted(page, server, admin):
    def upload(name: str, content: bytes) -> str:
        return admin.post("/v1/files", files={"file": (name, content)}, data={"purpose": "assistants"}).json()["id"]

    guide, blob = upload("guide.md", b"# Ferns\nBracken unrolls its fronds in May.\n"), upload("blob.bin", b"\x00\x01")
    created = admin.post("/v1/vector_stores", json={"name": "Field guides", "file_ids": [guide, blob],
                                                    "expires_after": {"anchor": "last_active_at", "days": 3}})
    assert created.status_code == 200, created.text
    store = _indexed(admin, created.json()["id"])
    page.goto(server.url + "/dashboard/vector_stores")
    listed = page.locator(f"tr[data-store-id='{store['id']}']")
    assert listed.locator("th").inner_text() == "Field guides"
    assert listed.locator("td.status").inner_text() == "completed"
    assert listed.locator("td.counts").inner_text().split("\n") == ["2 files", "1 indexed", "1 failed"]
    size = store["usage_bytes"]  # the indexed text and its vectors
    assert size > 0 and listed.locator("td.size").inner_text() == (f"{size} B" if size < 1024 else f"{size / 1024:.1f} KB")
    assert listed.locator("td.expires").inner_text().endswith("UTC")  # three days after its last activity

    listed.get_by_role("link", name="Field guides").click()
    page.wait_for_url(server.url + f"/dashboard/vector_stores/{store['id']}")
    indexed, failed = (page.locator(f"tr[data-file-id='{i}']") for i in (guide, blob))
    assert (indexed.locator("th").inner_text(), indexed.locator("td.status").inner_text()) == ("guide.md", "completed")
    assert indexed.locator("td.last-error").inner_text() == "–"
    assert (failed.locator("th").inner_text(), failed.locator("td.status").inner_text()) == ("blob.bin", "failed")
    assert failed.locator("td.last-error").inner_text().startswith("unsupported_file: ")
    assert page.evaluate(UNLABELLED_JS) == [] and page.evaluate(CONTRAST_JS) == []
    screenshot(page, "vector-store-desktop")

    # A form post without the page's CSRF token is refused; with it, another owner's or a missing store is a 404.
    cookie = next(c for c in page.context.cookies() if c["name"] == "ozwell_dashboard")
    token = page.locator("input[name=csrf_token]").first.input_value()
    forged = httpx.post(f"{server.url}/dashboard/vector_stores/{store['id']}/delete",
                        cookies={cookie["name"]: cookie["value"]}, data={"csrf_token": "guessed"})
    assert forged.status_code == 403 and admin.get(f"/v1/vector_stores/{store['id']}").status_code == 200
    missing = httpx.post(f"{server.url}/dashboard/vector_stores/vs_missing/delete",
                         cookies={cookie["name"]: cookie["value"]}, data={"csrf_token": token})
    assert missing.status_code == 404

    indexed.get_by_role("button", name=re.compile("Remove")).click()
    page.wait_for_url(server.url + f"/dashboard/vector_stores/{store['id']}")
    assert page.locator(f"tr[data-file-id='{guide}']").count() == 0
    assert admin.get(f"/v1/vector_stores/{store['id']}/files/{guide}").status_code == 404
    assert admin.get(f"/v1/files/{guide}").status_code == 200  # taken out of the store, not deleted
    page.locator("#delete-store").click()
    page.wait_for_url(server.url + "/dashboard/vector_stores")
    assert page.locator(f"tr[data-store-id='{store['id']}']").count() == 0
    assert admin.get(f"/v1/vector_stores/{store['id']}").status_code == 404


def test_a_key_is_created_with_the_keyboard_alone(page, server):
    page.goto(server.url + "/dashboard/keys")
    for _ in range(30):  # from the top of the page, Tab until the form's first field
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "key-name":
            break
    assert page.evaluate("document.activeElement.id") == "key-name"
    page.keyboard.type("keyboard key")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "key-plan"
    page.keyboard.press("ArrowDown")  # free -> pro
    page.keyboard.press("Tab")
    page.keyboard.type("12")  # requests per minute
    page.keyboard.press("Tab")
    page.keyboard.type("3456")  # tokens per minute
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.value") == "models"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.value") == "chat"
    page.keyboard.press("Space")  # untick chat
    while page.evaluate("document.activeElement.id") != "create-key":
        page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    page.wait_for_selector("#new-key")
    assert page.input_value("#new-key").startswith("ozw_")
    page.goto(server.url + "/dashboard/keys")
    text = row(page, "keys", "keyboard key").inner_text()
    assert "pro" in text and "12 RPM, 3456 TPM" in text
    assert "models" in text and "chat" not in text


PAGES = ["keys", "usage", "models", "files", "vector_stores", "signin", "missing"]


def test_every_page_is_labelled_has_contrast_and_is_screenshotted(browser, server, admin):
    admin.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                                             "max_tokens": 4})
    note = admin.post("/v1/files", files={"file": ("note.txt", b"A note to index.")}, data={"purpose": "assistants"})
    admin.post("/v1/vector_stores", json={"name": "Shown on the page", "file_ids": [note.json()["id"]]})
    for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        context = browser.new_context(viewport=viewport)
        page = context.new_page()
        sign_in(page, server)
        for name in ["key-created", *PAGES]:
            if name == "key-created":
                create_in_browser(page, f"shown once ({size})")
            else:
                if name == "signin":
                    page.context.clear_cookies()
                page.goto(server.url + "/dashboard/" + ("no-such-page" if name == "missing" else name))
            assert page.evaluate(UNLABELLED_JS) == [], name
            assert page.evaluate(CONTRAST_JS) == [], name
            # Wide tables scroll inside their box; the page itself never scrolls sideways.
            assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"], (name, size)
            assert screenshot(page, f"{name}-{size}").stat().st_size > 5000
        context.close()


def test_axe_core_finds_no_accessibility_violations(browser, server):
    """axe-core (bundled by axe-playwright-python) on every page, WCAG 2 A and AA rules and best practices."""
    axe = pytest.importorskip("axe_playwright_python.sync_playwright", reason="needs axe-playwright-python").Axe()
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    sign_in(page, server)
    create_in_browser(page, "axe key")
    pages = {"key created": None, **{name: f"/dashboard/{name}" for name in ("keys", "usage?window=7d", "models",
                                                                              "files", "vector_stores",
                                                                              "no-such-page")}}
    for name, path in pages.items():
        if path is not None:
            page.goto(server.url + path)
        results = axe.run(page)
        assert results.violations_count == 0, (name, results.generate_report())
    page.goto(server.url + "/dashboard/keys")
    page.locator("table.keys tbody tr", has_text="axe key").get_by_role("link", name=re.compile("Revoke")).click()
    assert axe.run(page).violations_count == 0
    context.clear_cookies()
    page.goto(server.url + "/dashboard/signin")
    results = axe.run(page)
    assert results.violations_count == 0, ("signin", results.generate_report())
    context.close()
