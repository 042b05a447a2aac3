"""nats-py (the Python NATS client, unchanged) against a running `kaelix serve`.

Usage: nats_py_check.py URL PHASE
  basics:  pub/sub, wildcards, headers, queue groups, request-reply,
           no-responders.
  restart: publishes orders 0..999 to the durable topic `orders` and
           flushes (the PONG is the durability barrier), prints
           READY-FOR-RESTART, waits for the caller to restart the server,
           then checks the client reconnected and pub/sub works again.
Exits non-zero with a message on the first failed expectation.
"""

import asyncio
import sys

import nats
from nats.errors import NoRespondersError


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


async def next_msg(sub, timeout=5):
    return await sub.next_msg(timeout=timeout)


async def basics(url):
    nc = await nats.connect(url, allow_reconnect=False)
    # Wildcards.
    star = await nc.subscribe("prices.*.eur")
    tail = await nc.subscribe("prices.>")
    await nc.flush()
    await nc.publish("prices.btc.eur", b"101")
    await nc.publish("prices.btc.usd", b"99")
    await nc.flush()
    m = await next_msg(star)
    check(m.subject == "prices.btc.eur" and m.data == b"101", "'*' matches one token")
    got = [(await next_msg(tail)).subject for _ in range(2)]
    check(got == ["prices.btc.eur", "prices.btc.usd"], "'>' matches the rest, in order")

    # Headers.
    hs = await nc.subscribe("with.headers")
    await nc.flush()
    await nc.publish("with.headers", b"h", headers={"Trace-Id": "t-1", "X": "y"})
    m = await next_msg(hs)
    check(m.headers is not None and m.headers.get("Trace-Id") == "t-1", "headers travel as HMSG")

    # Queue groups: 200 messages, each to exactly one member.
    q1 = await nc.subscribe("jobs", queue="workers")
    q2 = await nc.subscribe("jobs", queue="workers")
    await nc.flush()
    for i in range(200):
        await nc.publish("jobs", str(i).encode())
    await nc.flush()
    seen = []
    for sub in (q1, q2):
        while True:
            try:
                seen.append(int((await next_msg(sub, timeout=0.5)).data))
            except nats.errors.TimeoutError:
                break
    check(sorted(seen) == list(range(200)), f"queue group: each job once ({len(seen)} deliveries)")

    # Request-reply.
    async def responder(msg):
        await msg.respond(b"pong:" + msg.data)

    await nc.subscribe("svc.echo", cb=responder)
    await nc.flush()
    r = await nc.request("svc.echo", b"x", timeout=5)
    check(r.data == b"pong:x", "request-reply")

    # No responders: an immediate 503, not a timeout.
    try:
        await nc.request("nobody.listens", b"?", timeout=5)
        check(False, "no-responders error")
    except NoRespondersError:
        check(True, "no-responders error (503)")
    await nc.close()


async def reconnect_across_restart(url):
    """Publishes to the durable topic, flushes, waits while the caller
    restarts the server, then checks the client reconnected and works."""
    reconnected = asyncio.Event()

    async def on_reconnect():
        reconnected.set()

    nc = await nats.connect(
        url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, reconnected_cb=on_reconnect
    )
    for i in range(1000):
        await nc.publish("orders", f"order-{i}".encode())
    await nc.flush(timeout=10)
    check(True, "1000 durable publishes flushed")
    print("READY-FOR-RESTART", flush=True)
    await asyncio.wait_for(reconnected.wait(), timeout=60)
    check(True, "reconnected after the restart")
    sub = await nc.subscribe("orders")
    await nc.flush()
    await nc.publish("orders", b"after-restart")
    m = await next_msg(sub)
    check(m.data == b"after-restart", "pub/sub on the restarted server")
    await nc.close()


async def main():
    url, phase = sys.argv[1], sys.argv[2]
    if phase == "basics":
        await basics(url)
    elif phase == "restart":
        await reconnect_across_restart(url)
    else:
        sys.exit(f"unknown phase {phase}")


asyncio.run(main())
