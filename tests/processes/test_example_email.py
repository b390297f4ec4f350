"""examples/email end to end against a real SMTP server (aiosmtpd, in this process) that answers real codes:
550 for some addresses, 451 "try again in 1 second" once for others, and always for one. Real server, real worker
processes; the Maildir is the truth."""

from __future__ import annotations

import email
import mailbox
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict

import pytest
from aiosmtpd.controller import Controller

from iii_console.testing import IIIApp

from ..helpers import ROOT, wait_for
from ..ports import free_port

DOMAINS = ["alpha.test", "beta.test", "gamma.test", "delta.test"]
RECIPIENTS = [f"user{i:03d}@{DOMAINS[i % 4]}" for i in range(200)]
BOUNCING = set(RECIPIENTS[3:200:40])  # 5 addresses: 550
SLOW = set(RECIPIENTS[7:200:40])  # 5 addresses: 451 once, then accepted
STUCK = "stuck@epsilon.test"  # 451 until the test lets it through


class Server:
    """An aiosmtpd handler: real SMTP codes per address, accepted mail into a Maildir with its receive time."""

    def __init__(self, maildir):
        self.box = mailbox.Maildir(maildir)
        self.lock = threading.Lock()
        self.deferred: set[str] = set()
        self.stuck = {STUCK}
        self.received: list[tuple[float, int, str, str]] = []  # (time, session, recipient, Message-ID)
        self.sessions: dict[int, float] = {}  # session -> when it said EHLO

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        with self.lock:
            # A number of its own per session: id(session) is reused once a finished session is collected, which
            # gave a later session an earlier one's EHLO time (and merged their recipients).
            if not hasattr(session, "iii_n"):
                session.iii_n = len(self.sessions)
                self.sessions[session.iii_n] = time.monotonic()
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in BOUNCING:
            return f"550 5.1.1 <{address}>: mailbox unavailable"
        if address in self.stuck or (address in SLOW and address not in self.deferred):
            self.deferred.add(address)
            return "451 4.7.1 Greylisted, please try again in 1 second"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content)
        with self.lock:
            self.box.add(envelope.content)
            for rcpt in envelope.rcpt_tos:
                self.received.append((time.monotonic(), session.iii_n, rcpt, msg["Message-ID"]))
        return "250 2.0.0 Message accepted"

    def delivered(self, address: str) -> int:
        with self.lock:
            return sum(1 for r in self.received if r[2] == address)


@pytest.fixture
def smtp(tmp_path):
    handler = Server(tmp_path / "Maildir")
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield handler, f"smtp://127.0.0.1:{controller.port}"
    controller.stop()


@pytest.fixture
def app(tmp_path, redis_server, smtp, monkeypatch):
    project = tmp_path / "email"
    shutil.copytree(ROOT / "examples" / "email", project, ignore=shutil.ignore_patterns(".iii", "Maildir", "__pycache__"))
    monkeypatch.setenv("SMTP_URL", smtp[1])
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    running = IIIApp(project, redis_server.url).start()
    yield running
    running.stop()


@pytest.fixture
def kit(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "email" / "steps"))
    import mailer_kit

    return mailer_kit


@pytest.mark.parametrize(
    "reply, ms",
    [
        ("4.7.1 Greylisted, please try again in 1 second", 1000),
        ("Try again in 300 seconds", 300_000),
        ("4.2.1 rate limited, retry in 5 min", 300_000),
        ("Service busy; wait 2.5s", 2500),
        ("4.3.2 try again later", 60_000),
    ],
)
def test_a_deferral_waits_for_the_delay_the_server_names(kit, reply, ms):
    assert kit.retry_delay_ms(reply) == ms


def test_message_ids_are_stable_per_campaign_and_address_and_templates_are_checked(kit, monkeypatch):
    monkeypatch.setenv("EMAIL_FROM", "news@shop.test")
    one = kit.message_id("c1", "Ann@Example.org")
    assert one == kit.message_id("c1", "ann@example.org") and one.endswith("@shop.test>")
    assert one != kit.message_id("c2", "ann@example.org") and one != kit.message_id("c1", "bob@example.org")
    msg = kit.build("c1", "News for $name", "Hello $name <$email>", {"email": "ann@example.org", "name": "Ann"})
    assert (msg["Subject"], msg["Message-ID"], msg.get_content().strip()) == ("News for Ann", one, "Hello Ann <ann@example.org>")
    assert kit.template_problems("Hi $name, $$5 off") == []
    assert kit.template_problems("Hi $nmae") == ["unknown placeholder $nmae (use $name, $email)"]
    assert kit.template_problems("Hi $") != []
    with pytest.raises(ValueError, match="SMTP_URL"):
        kit.connect("http://mail.test")


@pytest.mark.slow
def test_a_campaign_of_200_with_bounces_deferrals_a_throttle_and_a_replay(app, smtp):
    server, _url = smtp
    # Bad input: a 400 naming the field, nothing stored or sent.
    for body, field in (
        ({"subject": "Hi", "template": "Hello $name", "recipients": [{"email": "not-an-address"}]}, "recipients.0.email"),
        ({"subject": "Hi", "template": "Hello $nmae", "recipients": [{"email": "a@b.test"}]}, "template"),
        ({"subject": "Hi", "template": "Hello", "recipients": []}, "recipients"),
        # What the mail library would refuse at sending time, blocking the rest of the batch: refused here.
        ({"subject": "Hi", "template": "Hello", "recipients": [{"email": "jöhn@utf.test"}]}, "recipients.0.email"),
        (
            {"subject": "Hi", "template": "Hi", "recipients": [{"email": "a@b.test", "name": "Eve\nBcc: x@evil.test"}]},
            "recipients.0.name",
        ),
        ({"subject": "Line1\nLine2", "template": "Hello", "recipients": [{"email": "a@b.test"}]}, "subject"),
    ):
        resp = app.post("/campaigns", json=body)
        assert resp.status_code == 400 and field in resp.text, resp.text
    assert app.state.list("campaigns") == {}

    body = {
        "subject": "News for $name",
        "template": "Hello $name,\nthis is for $email.\n",
        "batch_size": 10,
        "recipients": [{"email": a, "name": a.split("@")[0].title()} for a in RECIPIENTS],
    }
    first = app.post("/campaigns", json=body, headers={"idempotency-key": "december-news"})
    assert first.status_code == 202 and first.json()["batches"] == 20, first.text
    again = app.post("/campaigns", json=body, headers={"idempotency-key": "december-news"})
    assert again.json()["campaign"] == first.json()["campaign"]  # the same campaign: its batches are not sent twice
    stuck = app.post(
        "/campaigns",
        json={
            "subject": "Hi",
            "template": "Hi $name",
            "recipients": [{"email": STUCK}, *({"email": f"ok{i}@epsilon.test"} for i in range(3))],
        },
    ).json()

    done = app.wait_for("campaign.completed", trace=first.json()["trace_id"], timeout=40)
    assert (done.data["sent"], done.data["failed"], done.data["unsent"]) == (195, 5, 0), done.data
    assert done.data["bounced"] == {a: 550 for a in BOUNCING}

    # The Maildir holds each delivered address's message once, with its stable Message-ID.
    in_maildir = {m["To"]: m["Message-ID"] for m in server.box if m["To"] in RECIPIENTS}
    assert len(set(in_maildir.values())) == 195 and set(in_maildir) == set(RECIPIENTS) - BOUNCING
    first_campaign = [r for r in server.received if r[2] in RECIPIENTS]
    assert len(first_campaign) == 195  # no address received twice
    assert all(in_maildir[r[2]] == r[3] for r in first_campaign)
    ledger = app.state.list(f"email.ledger.{first.json()['campaign']}")
    assert {a: o["message_id"] for a, o in ledger.items() if o["status"] == "sent"} == in_maildir
    assert {a: o["code"] for a, o in ledger.items() if o["status"] == "failed"} == {a: 550 for a in BOUNCING}
    # The deferred ones were delivered on a retry after the server's delay.
    assert server.deferred >= SLOW and all(server.delivered(a) == 1 for a in SLOW)
    waits = [e for e in app.events("message.retrying", trace=first.json()["trace_id"]) if e.data.get("retry_after")]
    assert waits and all(e.data["delay_ms"] == 1000 for e in waits)

    # The throttle (2 sessions per domain per second) held, measured by the server's clock: any three
    # sessions of one domain span a second, less the jitter between a batch's admission and its EHLO (up to a few
    # hundred ms on a loaded machine; a broken throttle puts three sessions within milliseconds).
    sessions: dict[str, set[int]] = defaultdict(set)
    for _t, session, rcpt, _mid in first_campaign:
        sessions[rcpt.rpartition("@")[2]].add(session)
    for domain, ids in sessions.items():
        times = sorted(server.sessions[s] for s in ids)
        assert len(times) >= 5, (domain, times)
        assert all(times[i + 2] - times[i] > 0.5 for i in range(len(times) - 2)), (domain, times)
    per_session: dict[int, int] = defaultdict(int)
    for _t, session, _r, _m in first_campaign:
        per_session[session] += 1
    assert max(per_session.values()) <= 10  # one session per batch

    # The stuck address's batch: dead-lettered after its retries, the others in it delivered once.
    [letter] = wait_for(lambda: app.dead_letters("email.dlq"), timeout=30, what="the stuck batch dead-lettered")
    assert (letter.trace_id, letter.attempts, letter.step) == (stuck["trace_id"], 5, "SendBatch")
    assert f"1 deferred by the server, retry in 1000 ms: {STUCK}: 451 4.7.1 Greylisted" in letter.error, letter.error
    # Its campaign completes all the same. The step is named: a wait on the trace alone fails at once on a dead
    # letter of that trace, and this one (SendBatch's, just above) is expected; CampaignDone's would not be.
    app.wait_for("campaign.completed", step="CampaignDone", trace=stuck["trace_id"])
    server.stuck.clear()
    replay = subprocess.run(
        [
            sys.executable,
            "-m",
            "iii_console",
            "dlq",
            "replay",
            "--all",
            "--yes",
            "--queue",
            "email.dlq",
            "--redis",
            app.config.redis.url,
            "--config",
            str(app.project / "iii-config.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replay.returncode == 0, replay.stderr
    wait_for(lambda: server.delivered(STUCK) == 1, timeout=20, what="the stuck address delivered after the replay")
    app.wait_for("message.processed", step="SendBatch", trace=stuck["trace_id"])
    assert [server.delivered(f"ok{i}@epsilon.test") for i in range(3)] == [1, 1, 1]  # never re-sent
    ids = [m["Message-ID"] for m in server.box]
    assert len(ids) == len(set(ids)) == 199  # the Maildir: every delivered address once, nothing else

    # One completion per campaign.
    time.sleep(0.3)
    assert len(app.events("message.processed", step="CampaignDone")) == 2
    assert len(app.events("campaign.completed")) == 2
    # The same request with its key again, after the campaign is done: the campaign as it stands (not reset to
    # "sending", nothing sent); the key with another campaign: a 409, nothing stored.
    cid = first.json()["campaign"]
    before = app.request("GET", f"/campaigns/{cid}").json()
    late = app.post("/campaigns", json=body, headers={"idempotency-key": "december-news"})
    assert late.status_code == 202 and late.json()["campaign"] == cid
    assert app.request("GET", f"/campaigns/{cid}").json() == before and before["status"] == "done"
    other = app.post("/campaigns", json={**body, "subject": "Another"}, headers={"idempotency-key": "december-news"})
    assert other.status_code == 409 and "Idempotency-Key" in other.text
    assert app.request("GET", f"/campaigns/{cid}").json() == before
    assert app.request("GET", f"/campaigns/{first.json()['campaign']}").json()["so_far"] == {
        "sent": 195,
        "failed": 5,
        "pending": 0,
    }
